"""One fixture shaped like the official RealQA release, end to end.

The release is: a base Qwen2-VL checkpoint with no realqa card, a LoRA adapter saved under
transformers 4.4x (``base_model.model.model.layers.*``, ``base_model.model.visual.*``, with
LLaMA-Factory's list of target names), and LLaMA-Factory test files whose question exists nowhere
else. Here the base is the tiny model trained to answer with numbers (its card removed), the LoRA
is random and non-zero, and the test file asks a question worded for this test, on photos of
several sizes (above 512 x 512 too, so the ``llamafactory`` shrink matters) and one EXIF-rotated.

``realqa bench --conversations`` on that release must give exactly what realqa gives for a model
merged by hand from the adapter file, asked that question with the official preprocessing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from conftest import SMALL_PIXELS
from realqa.cli import main as cli
from realqa.model import CARD_FILE, ModelCard, load_model
from realqa.tasks import Task
from test_checkpoints import ADAPTER_FILE, PREFIX, merged_by_hand, to_old_name

QUESTION = "<image>Please judge the technical quality of this photo {no braces harmed}, from 1 to 5."
PREFIX_TEXT = "The quality score of this image is "
# LLaMA-Factory's `lora_target: all` on Qwen2-VL with the vision tower trainable: every linear layer's name.
LLAMAFACTORY_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "qkv", "proj",
                    "fc1", "fc2"]
SIZES = [(300, 200), (512, 512), (1024, 768), (1023, 767), (640, 960)]
# The base answers with numbers at the image size it was trained at (16 visual tokens).
PIXELS = ["--min-pixels", str(SMALL_PIXELS["min_pixels"]), "--max-pixels", str(SMALL_PIXELS["max_pixels"])]


def _photo(path: Path, size, seed: int, **options) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 220, 3)
    array = np.clip(base + rng.normal(0, 12 * (seed + 1), (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(array).save(path, quality=92, **options)


@pytest.fixture(scope="module")
def release(format_model_dir, tmp_path_factory):
    """(base folder, old-layout adapter folder, conversation file, media dir, the untouched base)."""
    root = tmp_path_factory.mktemp("release")
    base = root / "Qwen2-VL-base"
    shutil.copytree(format_model_dir, base)
    (base / CARD_FILE).unlink()  # the official base checkpoint carries no realqa card

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    network = load_model(format_model_dir, device="cpu").model
    lora = get_peft_model(network, LoraConfig(r=4, lora_alpha=8, target_modules=LLAMAFACTORY_ALL,
                                              init_lora_weights=False))
    with torch.no_grad():  # small, so the answers stay numbers; non-zero, so they move
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.mul_(0.05)
    adapter = root / "RealQA-models" / "koniq"
    lora.save_pretrained(adapter)
    weights = load_file(adapter / ADAPTER_FILE)
    save_file({PREFIX + to_old_name(k[len(PREFIX):]): v for k, v in weights.items()}, adapter / ADAPTER_FILE)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["target_modules"] = LLAMAFACTORY_ALL
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert any(k.startswith(PREFIX + "visual.blocks.") for k in load_file(adapter / ADAPTER_FILE))

    media = root / "data"
    (media / "koniq").mkdir(parents=True)
    records = []
    for i, size in enumerate(SIZES):
        _photo(media / "koniq" / f"{i}.jpg", size, i)
        records.append({"messages": [{"role": "user", "content": QUESTION},
                                     {"role": "assistant", "content": f"{PREFIX_TEXT}{1.5 + 0.6 * i:.2f}."}],
                        "images": [f"koniq/{i}.jpg"]})
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(media / "koniq" / "rotated.jpg", (900, 600), 9, exif=exif)
    records.append({"messages": [{"role": "user", "content": QUESTION},
                                 {"role": "assistant", "content": f"{PREFIX_TEXT}4.10."}],
                    "images": ["koniq/rotated.jpg"]})
    test_file = media / "koniq10k_test.json"
    test_file.write_text(json.dumps(records, indent=1))
    return base, adapter, test_file, media, format_model_dir


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _hand_merged_scores(release, tmp_path) -> list[dict]:
    """realqa score on a model merged by hand, whose card asks the test file's question with the
    official preprocessing: the result the release must reproduce."""
    base, adapter, test_file, media, _ = release
    merged_dir = tmp_path / "merged"
    shutil.copytree(base, merged_dir)
    merged = merged_by_hand(base, adapter)
    merged.save_pretrained(merged_dir)
    task = Task(name="quality", low=1, high=5, question=QUESTION.replace("{", "{{").replace("}", "}}"),
                answer_prefix=PREFIX_TEXT, decimals=2)
    ModelCard(tasks={"quality": task}, preprocessing="llamafactory").save(merged_dir)
    images = [str(media / r["images"][0]) for r in json.loads(test_file.read_text())]
    out = tmp_path / "expected.csv"
    assert cli(["score", *images, "--model", str(merged_dir), "--device", "cpu", "--dtype", "fp32",
                "--out", str(out), "--quiet", *PIXELS]) == 0
    return _rows(out)


def test_bench_on_the_release_equals_scoring_a_hand_merge_asked_that_question(release, tmp_path, capsys):
    base, adapter, test_file, media, _ = release
    out = tmp_path / "bench"
    assert cli(["bench", "--conversations", str(test_file), "--media-dir", str(media), "--model", str(base),
                "--adapter", str(adapter), "--device", "cpu", "--dtype", "fp32", "--batch-size", "4",
                "--out", str(out), "--quiet", *PIXELS]) == 0
    printed = capsys.readouterr()
    assert "koniq10k_test" in printed.out and "official" in printed.out
    predictions = _rows(out / "koniq10k_test.predictions.csv")
    expected = _hand_merged_scores(release, tmp_path)
    assert [p["image"] for p in predictions] == [e["path"] for e in expected]
    assert [p["label"] for p in predictions] == ["1.5", "2.1", "2.7", "3.3", "3.9", "4.1"]
    assert sum(p["status"] == "ok" for p in predictions) >= 4  # the trained base answers with numbers
    for got, want in zip(predictions, expected):
        assert (got["status"], got["text"], got["score"]) == (want["status"], want["text"], want["score"])
        if want["ncm"]:
            assert float(got["ncm"]) == pytest.approx(float(want["ncm"]), abs=1e-5)
        else:
            assert got["ncm"] == ""


def test_the_adapter_and_the_official_preprocessing_both_change_the_answers(release, tmp_path):
    """Guards the test above against equal-because-nothing-happened: without the adapter, or with
    realqa's own preprocessing, the digit probabilities differ."""
    from realqa.conversations import read_conversations
    from realqa.engine import load_scorer

    base, adapter, test_file, media, _ = release
    conversations = read_conversations([test_file], media)
    ncm = {}
    for name, options in {"release": {"adapter": str(adapter)}, "no adapter": {},
                          "realqa profile": {"adapter": str(adapter), "preprocessing": "realqa"}}.items():
        scorer = load_scorer(str(base), device="cpu", dtype="fp32", **SMALL_PIXELS, **options)
        assert scorer.examples.profile.name == options.get("preprocessing", "llamafactory")
        ncm[name] = [r.ncm for r in scorer.score_conversations(conversations)]
    assert ncm["release"] != ncm["no adapter"]
    assert ncm["release"] != ncm["realqa profile"]


def test_a_card_written_from_the_test_file_makes_a_plain_folder_ask_the_trained_question(release, tmp_path, capsys):
    base, adapter, test_file, media, _ = release
    card_dir = tmp_path / "card"
    assert cli(["data", "card", str(test_file), "--out", str(card_dir)]) == 0
    card = json.loads((card_dir / CARD_FILE).read_text())
    assert card["preprocessing"] == "llamafactory"
    assert card["tasks"]["quality"]["question"] == QUESTION.replace("{", "{{").replace("}", "}}")
    out = tmp_path / "folder.csv"
    assert cli(["score", str(media / "koniq"), "--model", str(base), "--adapter", str(adapter), "--card", str(card_dir),
                "--device", "cpu", "--dtype", "fp32", "--out", str(out), "--quiet", *PIXELS]) == 0
    settings = json.loads(Path(str(out) + ".run.json").read_text())["settings"]
    assert settings["preprocessing"] == "llamafactory" and settings["card"] == str(card_dir.resolve())
    by_image = {Path(r["path"]).name: r for r in _rows(out)}
    expected = {Path(r["path"]).name: r for r in _hand_merged_scores(release, tmp_path)}
    assert by_image.keys() == expected.keys()
    for name, row in by_image.items():
        assert (row["text"], row["score"]) == (expected[name]["text"], expected[name]["score"])


def test_scoring_the_uncarded_release_says_what_it_assumes(release, tmp_path, capsys):
    base, adapter, _, media, _ = release
    out = tmp_path / "plain.csv"
    assert cli(["score", str(media / "koniq" / "0.jpg"), "--model", str(base), "--adapter", str(adapter),
                "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("has no realqa card") == 1
    assert "'llamafactory' preprocessing" in err and "realqa data card" in err and "--conversations" in err
    assert json.loads(Path(str(out) + ".run.json").read_text())["settings"]["preprocessing"] == "llamafactory"
