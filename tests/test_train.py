import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SMALL_PIXELS
from realqa.cli import main
from realqa.data.manifest import read_manifest, write_manifest
from realqa.train import AnswerEncoder, DataSource, TrainItem, load_config, lora_targets, mix_sources, train

PIXELS = [f"min_pixels={SMALL_PIXELS['min_pixels']}", f"max_pixels={SMALL_PIXELS['max_pixels']}"]


@pytest.fixture
def toy(toy_dataset):
    return toy_dataset


def _overrides(model, out, train_manifest, *extra):
    return [f"model={model}", f"output_dir={out}", f"train=[{train_manifest}]", "per_device_batch_size=8",
            "gradient_accumulation_steps=1", "logging_steps=6", "save_steps=1000", "gradient_checkpointing=false",
            *PIXELS, *extra]


# ---------------------------------------------------------------- config


def test_config_defaults_follow_the_official_recipe(tmp_path):
    config = load_config(None, ["model=m", "output_dir=o", "train=[a.jsonl]"])
    assert (config.finetuning, config.lora.rank, config.lora.dropout, config.lr) == ("lora", 128, 0.15, 1e-4)
    assert config.lora.effective_alpha == 256 and config.train_vision_tower
    assert (config.per_device_batch_size, config.gradient_accumulation_steps, config.epochs) == (2, 8, 2.0)
    assert (config.lr_scheduler, config.warmup_ratio, config.decimals) == ("cosine", 0.1, 2)
    assert load_config(None, ["model=m", "output_dir=o", "train=[a.jsonl]", "finetuning=full"]).lr == 1e-5


def test_yaml_config_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: base\noutput_dir: out\ntrain:\n  - {manifest: a.jsonl, weight: 2}\n  - b.jsonl\n"
                    "lora: {rank: 64}\nlearning_rate: 2e-4\n")
    config = load_config(path, ["lora.dropout=0.05", "epochs=6"])
    assert [s.manifest for s in config.train] == ["a.jsonl", "b.jsonl"] and config.train[0].weight == 2
    assert (config.lora.rank, config.lora.dropout, config.epochs, config.lr) == (64, 0.05, 6, 2e-4)


@pytest.mark.parametrize("override, named", [("learning_rat=1", "learning_rat"), ("lora.rnk=4", "lora.rnk"),
                                             ("train=[{manifest: a, wieght: 2}]", "train[0].wieght")])
def test_unknown_config_keys_fail_at_start_naming_the_key(override, named):
    with pytest.raises(ValueError, match=f"unknown key.*{named.replace('[', '.').replace(']', '.')}"):
        load_config(None, ["model=m", "output_dir=o", "train=[a.jsonl]", override])


@pytest.mark.parametrize("override, named", [
    ("epochs=-1", "epochs must be a number > 0"), ("epochs=0", "epochs must be a number > 0"),
    ("max_steps=0", "max_steps must be an integer >= 1, or -1"), ("max_steps=-2", "max_steps must be"),
    ("max_steps=~", "max_steps must be"), ("warmup_ratio=2", r"warmup_ratio must be in \[0, 1\)"),
    ("learning_rate=-1e-4", "learning_rate must be a number > 0"), ("learning_rate=nan", "learning_rate must be"),
    ("gradient_accumulation_steps=0", "gradient_accumulation_steps must be an integer >= 1"),
    ("per_device_batch_size=0", "per_device_batch_size must be"), ("save_steps=0", "save_steps must be"),
    ("logging_steps=abc", "logging_steps must be"), ("eval_steps=0", "eval_steps must be"),
    ("save_total_limit=0", "save_total_limit must be"), ("weight_decay=-0.1", "weight_decay must be a number >= 0"),
    ("max_grad_norm=-1", "max_grad_norm must be"), ("ncm_loss_weight=-1", "ncm_loss_weight must be"),
    ("max_pixels=10", "max_pixels must be an integer >= min_pixels"), ("seed=-1", "seed must be"),
    ("lr_scheduler=cosin", "lr_scheduler must be one of"), ("cot_form=prose", "cot_form: unknown"),
    ("lora.rank=0", "lora: rank must be"), ("lora.dropout=1", r"lora: dropout must be in \[0, 1\)"),
    ("train=[{manifest: a.jsonl, weight: -1}]", r"train\[0\]: a.jsonl: weight must be a number >= 0"),
])
def test_nonsense_training_settings_fail_at_start_naming_the_key(override, named):
    with pytest.raises(ValueError, match=named):
        load_config(None, ["model=m", "output_dir=o", "train=[a.jsonl]", override])


def test_max_steps_minus_one_means_train_for_epochs(tiny_model_dir, toy, tmp_path):
    train_manifest, _ = toy
    config = load_config(None, _overrides(tiny_model_dir, tmp_path / "o", train_manifest, "max_steps=-1", "epochs=1"))
    result = train(config, log=lambda m: None)
    assert result.steps >= 1 and result.steps == math.ceil(len(read_manifest(train_manifest)) / 8)


def test_shipped_configs_load():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        config = load_config(path, ["model=m", "output_dir=o"])
        assert config.train, path


# ---------------------------------------------------------------- data


def test_answer_encoder_masks_the_question_and_finds_the_digits(tiny_model_dir):
    from realqa.model import load_model

    loaded = load_model(tiny_model_dir, device="cpu")
    encoder = AnswerEncoder(loaded.tokenizer, loaded.card.tasks, loaded.digit_ids)
    ids, labels, digits = encoder.encode(TrainItem("x", "quality", 3.4712, "m"))
    supervised = loaded.tokenizer.decode([t for t in labels if t != -100])
    assert supervised == "The quality score of this image is 3.47.<|im_end|>"
    assert [loaded.tokenizer.decode([ids[p]]) for p in digits] == ["3", "4", "7"]
    assert all(label == -100 for label in labels[: digits[0] - 9])
    with pytest.raises(ValueError, match="outside the quality range"):
        encoder.encode(TrainItem("x", "quality", 5.5, "m"))


def test_mixing_weights_repeat_and_subsample():
    a = [TrainItem(f"a{i}", "quality", 1.0, "a") for i in range(10)]
    b = [TrainItem(f"b{i}", "quality", 1.0, "b") for i in range(10)]
    mixed = mix_sources([(DataSource("a", weight=2), a), (DataSource("b", weight=0.5), b)], seed=0)
    assert sum(i.source == "a" for i in mixed) == 20 and sum(i.source == "b" for i in mixed) == 5
    assert mixed == mix_sources([(DataSource("a", weight=2), a), (DataSource("b", weight=0.5), b)], seed=0)


def test_bad_samples_are_reported_before_training(tiny_model_dir, toy, tmp_path):
    train_manifest, _ = toy
    dataset = read_manifest(train_manifest)
    broken = tmp_path / "broken"
    broken.mkdir()
    samples = list(dataset.samples)
    samples[2] = samples[2].__class__(**{**samples[2].to_dict(), "image": str(broken / "gone.png")})
    (broken / "empty.png").write_bytes(b"")
    samples[3] = samples[3].__class__(**{**samples[3].to_dict(), "image": str(broken / "empty.png")})
    dataset.samples = samples
    manifest = write_manifest(dataset, broken / "train.jsonl")
    with pytest.raises(ValueError, match=r"2 image\(s\) cannot be used") as caught:
        train(load_config(None, _overrides(tiny_model_dir, tmp_path / "o", manifest)), log=lambda m: None)
    assert "gone.png: file not found" in str(caught.value) and "empty.png: file is empty" in str(caught.value)

    samples[2] = samples[2].__class__(**{**dataset.samples[0].to_dict(), "scores": {"quality": math.nan}})
    dataset.samples = samples
    manifest = write_manifest(dataset, broken / "nan.jsonl")
    with pytest.raises(ValueError, match=r"sample 3 \(toy_000\): score nan is not a finite number"):
        train(load_config(None, _overrides(tiny_model_dir, tmp_path / "o", manifest)), log=lambda m: None)


def test_lora_targets_cover_language_model_and_vision_blocks_not_the_projector(tiny_model_dir):
    from realqa.model import load_model

    model = load_model(tiny_model_dir, device="cpu").model
    with_vision = lora_targets(model, train_vision_tower=True)
    without = lora_targets(model, train_vision_tower=False)
    assert any(n.endswith("self_attn.q_proj") for n in without) and any(n.endswith("mlp.down_proj") for n in without)
    assert not any("visual" in n for n in without) and any("visual.blocks" in n for n in with_vision)
    assert not any("merger" in n or "lm_head" in n for n in with_vision)


# ---------------------------------------------------------------- training runs


@pytest.mark.slow
def test_full_finetune_learns_the_toy_task(tiny_model_dir, toy, tmp_path):
    """Brightness -> score is learnable. Threshold: with 16 held-out images, SRCC >= 0.6 has a chance
    probability below 1% under no association (critical value ~0.59 at p = 0.01, one-sided)."""
    train_manifest, test_manifest = toy
    overrides = _overrides(tiny_model_dir, tmp_path / "full", train_manifest, f"eval=[{test_manifest}]",
                           "finetuning=full", "learning_rate=3e-3", "epochs=20")
    result = train(load_config(None, overrides), log=lambda m: None)
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert losses[-1] < losses[0] / 5
    final = result.held_out[-1]
    assert final["heldout_test_quality_rows"] == 16 and final["heldout_test_quality_failed"] == 0
    assert final["heldout_test_quality_srcc"] >= 0.6, final
    evaluation = [entry for entry in result.log_history if "eval_ncm_mae" in entry][-1]
    assert 0 <= evaluation["eval_ncm_mae"] < 1.5 and evaluation["eval_ncm_star"] >= 0
    mae, star = _ncm_by_hand(result.model, tiny_model_dir, test_manifest)
    assert evaluation["eval_ncm_mae"] == pytest.approx(mae, abs=1e-4)
    assert evaluation["eval_ncm_star"] == pytest.approx(star, abs=1e-4)
    card = json.loads((tmp_path / "full" / "realqa_card.json").read_text())
    assert card["tasks"]["quality"]["decimals"] == 2 and card["trained_on"] == [str(train_manifest)]


def _ncm_by_hand(model, base_dir, manifest) -> tuple[float, float]:
    """Mean |NCM - label| and mean NCM* over the manifest's images, from the model's digit probabilities at
    the label's digit positions (teacher-forced on the label's answer, one image at a time), summed here."""
    from realqa.batching import ExampleBuilder, collate
    from realqa.compat import accepts_token_types
    from realqa.model import load_model
    from realqa.train import ScoreConversations, read_source

    base = load_model(base_dir, device="cpu")
    tasks = {name: task.with_decimals(2) for name, task in base.card.tasks.items()}
    encoder = AnswerEncoder(base.tokenizer, tasks, base.digit_ids)
    image_token = base.model.config.image_token_id
    examples = ScoreConversations(read_source(DataSource(str(manifest)))[0], encoder,
                                  ExampleBuilder(base.image_processor, image_token, **SMALL_PIXELS))
    model.eval()
    errors, stars = [], []
    for example in examples:
        batch = collate([example], pad_id=0, image_token_id=image_token, token_types=accepts_token_types(model))
        with torch.no_grad():
            logits = model(**batch).logits[0].double()
        ncm = star = 0.0
        for place, (position, label) in enumerate(
            zip(example.extra["digit_positions"], example.extra["target_digits"])
        ):
            weights = [math.exp(float(logits[position - 1, token])) for token in base.digit_ids]
            probs = [w / sum(weights) for w in weights]
            ncm += 10.0**-place * sum(digit * p for digit, p in enumerate(probs))
            star += 10.0**-place * sum(digit * p for digit, p in enumerate(probs) if digit != label)
        errors.append(abs(ncm - example.extra["target_value"]))
        stars.append(star)
    return sum(errors) / len(errors), sum(stars) / len(stars)


def test_training_ncm_terms_by_hand():
    """The trainer's NCM terms (loss and evaluation metrics) are realqa.numeric's, read at the logits that
    predict each row's digits, over the digits each row has."""
    from types import SimpleNamespace

    from realqa.train import ScoreTrainer
    from realqa.train.trainer import batch_ncm

    digit_ids, certain = list(range(10, 20)), 60.0
    logits = torch.zeros(3, 6, 30)  # (rows, sequence, vocabulary)
    # Row 0 answers 3.47 (digits at positions 2, 3, 4: predicted at 1, 2, 3), unsure of its integer digit.
    logits[0, 1, digit_ids[3]] = logits[0, 1, digit_ids[4]] = certain
    logits[0, 2, digit_ids[4]] = logits[0, 3, digit_ids[7]] = certain
    # Row 1 is labelled 2.5 (positions 3, 4; one decimal) and reads 2.6; row 2 answers a category (no digits).
    logits[1, 2, digit_ids[2]] = logits[1, 3, digit_ids[6]] = certain
    logits[1, 4, digit_ids[9]] = certain  # after its last digit: must not count
    score = {"digit_positions": torch.tensor([[2, 3, 4], [3, 4, 0], [0, 0, 0]]),
             "digit_mask": torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]]),
             "target_digits": torch.tensor([[3, 4, 7], [2, 5, 0], [0, 0, 0]]),
             "target_value": torch.tensor([3.47, 2.5, 0.0])}
    expected, wrong, rows = batch_ncm(logits, score, digit_ids)
    assert expected.tolist() == pytest.approx([0.5 * 3 + 0.5 * 4 + 0.4 + 0.07, 2.6, 0.0])
    assert wrong.tolist() == pytest.approx([0.5 * 4, 0.6, 0.0]) and rows.tolist() == [True, True, False]

    trainer = SimpleNamespace(digit_ids=digit_ids, _ncm_totals={})
    ScoreTrainer._record_ncm(trainer, logits, score)
    ScoreTrainer._record_ncm(trainer, logits[:1], {key: value[:1] for key, value in score.items()})
    # Three scored rows: |3.97 - 3.47| twice and |2.6 - 2.5|; NCM* 2.0 twice and 0.6.
    assert trainer._ncm_totals == {"n": 3, "abs": pytest.approx(0.5 + 0.5 + 0.1),
                                   "star": pytest.approx(2.0 + 2.0 + 0.6)}


@pytest.mark.slow
def test_lora_adapter_round_trips_through_realqa_score(tiny_model_dir, toy, tmp_path):
    train_manifest, test_manifest = toy
    out = tmp_path / "lora"
    overrides = _overrides(tiny_model_dir, out, train_manifest, "lora.rank=8", "learning_rate=1e-2", "max_steps=30",
                           "ncm_loss_weight=0.1")
    result = train(load_config(None, overrides), log=lambda m: None)
    assert (out / "adapter_config.json").is_file() and (out / "realqa_card.json").is_file()
    images = [str(read_manifest(test_manifest).image_path(s)) for s in read_manifest(test_manifest).samples][:8]

    from realqa.engine import Scorer
    from realqa.model import ModelCard, ScoringModel, load_model

    base = load_model(tiny_model_dir, device="cpu")
    result.model.eval()
    in_process = Scorer(
        ScoringModel(result.model, base.tokenizer, base.image_processor, ModelCard(), base.digit_ids, "x"),
        **SMALL_PIXELS,
    ).score(images)
    scores_file = tmp_path / "scores.jsonl"
    # No pixel bounds given: the adapter's card carries the ones training used.
    assert main(["score", *images, "--model", str(tiny_model_dir), "--adapter", str(out), "--out", str(scores_file),
                 "--quiet"]) == 0
    loaded = [json.loads(line) for line in scores_file.read_text().splitlines()]
    assert [r["text"] for r in loaded] == [r.text for r in in_process]
    assert [r["score"] for r in loaded] == [r.score for r in in_process]
    for row, result_row in zip(loaded, in_process):
        assert (row["ncm"] is None) == (result_row.ncm is None)
        if row["ncm"] is not None:
            assert row["ncm"] == pytest.approx(result_row.ncm, abs=1e-3)


def test_lora_output_passed_as_the_model_names_its_base(tiny_model_dir, toy, tmp_path, capsys):
    train_manifest, _ = toy
    out = tmp_path / "lora"
    train(load_config(None, _overrides(tiny_model_dir, out, train_manifest, "lora.rank=4", "max_steps=1")),
          log=lambda m: None)
    from realqa.model import load_model

    expected = f"{out} is a LoRA adapter (adapter_config.json) for {tiny_model_dir}: " \
               f"pass --model {tiny_model_dir} --adapter {out}"
    with pytest.raises(ValueError) as raised:
        load_model(out, device="cpu")
    assert str(raised.value) == expected
    images = [str(p) for p in sorted(train_manifest.parent.rglob("*.png"))[:1]]
    assert main(["score", *images, "--model", str(out), "--out", str(tmp_path / "s.csv"), "--quiet"]) != 0
    assert expected in capsys.readouterr().err
    # Without the adapter config's record, the realqa card's base model is named.
    config_file, card_file = out / "adapter_config.json", out / "realqa_card.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "base_model_name_or_path": None}))
    card_file.write_text(json.dumps({**json.loads(card_file.read_text()), "base_model": "owner/base-from-card"}))
    with pytest.raises(ValueError, match="adapter_config.json. for owner/base-from-card: pass --model owner/base-from"):
        load_model(out, device="cpu")
    card_file.unlink()
    with pytest.raises(ValueError, match="records no base model: pass --model BASE --adapter"):
        load_model(out, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("finetuning", ["full", "lora"])
def test_resume_from_checkpoint_continues(tiny_model_dir, toy, tmp_path, finetuning):
    """A fine-tune killed after its step-4 checkpoint and resumed gives the uninterrupted run's steps 5-8:
    the checkpoint's weights, not the base's (for a full fine-tune the Trainer's own load missed every key of
    the layout save_pretrained writes, only warned, and trained on from the base weights with the checkpoint's
    optimizer)."""
    train_manifest, _ = toy

    def run(out, *extra):
        overrides = _overrides(tiny_model_dir, out, train_manifest, f"finetuning={finetuning}", "save_steps=4",
                               "learning_rate=1e-3", "logging_steps=1", "max_steps=8", *extra)
        return train(load_config(None, overrides), log=lambda m: None)

    whole = run(tmp_path / "whole")
    killed = tmp_path / "killed"
    shutil.copytree(tmp_path / "whole" / "checkpoint-4", killed / "checkpoint-4")
    resumed = run(killed, "resume_from_checkpoint=latest")
    assert resumed.steps == 8
    logged = [entry["step"] for entry in resumed.log_history if "loss" in entry]
    assert logged == list(range(1, 9))  # the checkpoint's history, then steps 5-8: none run twice
    losses = {e["step"]: e["loss"] for e in whole.log_history if "loss" in e}
    after = {e["step"]: e["loss"] for e in resumed.log_history if "loss" in e and e["step"] > 4}
    assert all(after[step] == pytest.approx(losses[step], rel=1e-4) for step in after), (after, losses)


@pytest.mark.slow
def test_train_command_line(tiny_model_dir, toy, tmp_path, capsys):
    train_manifest, _ = toy
    overrides = _overrides(tiny_model_dir, tmp_path / "cli", train_manifest, "max_steps=2", "finetuning=full")
    code = main(["train", *overrides, "--decimals", "1"])
    assert code == 0
    assert "trained 2 steps" in capsys.readouterr().err
    card = json.loads((tmp_path / "cli" / "realqa_card.json").read_text())
    assert card["tasks"]["quality"]["decimals"] == 1
    assert main(["train", "model=m", "output_dir=o", "train=[a.jsonl]", "bogus=1"]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_end_with_identical_weights(tiny_model_dir, toy, tmp_path):
    train_manifest, _ = toy
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # --standalone: a rendezvous on a free local port (a fixed port collides with a concurrent run).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "tests" / "dist_train.py"), str(out),
               *[o for o in _overrides(tiny_model_dir, out, train_manifest, "lora.rank=4", "max_steps=6",
                                       "per_device_batch_size=4") if not o.startswith("output_dir=")]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    digests = [(out / f"digest_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert digests[0][2] == digests[1][2] == "2"  # both ran in one 2-process group
    assert digests[0][1] == digests[1][1] == "6"
    assert digests[0][0] == digests[1][0]


# ---------------------------------------------------------------- the README.md model card


def _front_matter(text: str) -> dict:
    import yaml

    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_text_front_matter_recipe_figures_and_usage():
    from realqa.model import ModelCard
    from realqa.train.card import model_card_text

    config = load_config(None, ["model=Qwen/Qwen2-VL-7B-Instruct", "output_dir=runs/koniq", "train=[data/koniq.jsonl]",
                                "lora.rank=64", "learning_rate=2e-4", "epochs=3", "license=mit"])
    text = model_card_text(config, ModelCard(), steps=120, train_loss=0.25,
                           metrics={"step": 120, "heldout_test_quality_srcc": 0.9123, "heldout_test_quality_rows": 16})
    assert _front_matter(text) == {"base_model": "Qwen/Qwen2-VL-7B-Instruct", "library_name": "peft", "license": "mit",
                                   "pipeline_tag": "image-text-to-text",
                                   "tags": ["realqa", "image-quality-assessment", "image-aesthetics-assessment",
                                            "qwen2-vl", "lora"]}
    for line in ("| LoRA | rank 64, alpha 128, dropout 0.15 |", "| learning rate | 0.0002, cosine, warmup 0.1 |",
                 "| epochs | 3 |", "| decimals | 2 |", "| steps run | 120 |", "| final training loss | 0.2500 |",
                 "- `koniq.jsonl`: quality, plain answers", "| heldout_test_quality_srcc | 0.9123 |",
                 "| heldout_test_quality_rows | 16 |",
                 "realqa score photos/ --model Qwen/Qwen2-VL-7B-Instruct --adapter runs/koniq --task quality",
                 'realqa.create_metric("Qwen/Qwen2-VL-7B-Instruct", adapter="runs/koniq", task="quality")'):
        assert line in text, line
    assert "| step |" not in text  # the step a figure was taken at is not a figure


def test_model_card_of_a_full_fine_tune_from_a_hub_cache_folder_without_figures():
    from realqa.model import ModelCard
    from realqa.train.card import model_card_text

    base = "/cache/hub/models--Qwen--Qwen2-VL-2B-Instruct/snapshots/0123abc"
    config = load_config(None, [f"model={base}", "output_dir=out/full", "train=[a.jsonl]", "finetuning=full"])
    text = model_card_text(config, ModelCard())
    front = _front_matter(text)
    assert front["base_model"] == "Qwen/Qwen2-VL-2B-Instruct" and front["library_name"] == "transformers"
    assert front["license"] == "unknown" and "full" in front["tags"]
    assert "LoRA" not in text and "computed no figures" in text
    assert 'realqa.create_metric("out/full", task="quality")' in text
    local = model_card_text(load_config(None, ["model=/models/mine", "output_dir=o", "train=[a.jsonl]"]), ModelCard())
    assert "base_model" not in _front_matter(local) and "set `base_model` above before uploading" in local


def test_a_training_run_writes_a_model_card_that_scores(tiny_model_dir, toy, tmp_path):
    """The README.md beside realqa_card.json: its front matter, the run's held-out figures, and a Python line that
    loads the output."""
    import realqa

    train_manifest, test_manifest = toy
    out = tmp_path / "lora"
    overrides = _overrides(tiny_model_dir, out, train_manifest, f"eval=[{test_manifest}]", "lora.rank=8", "max_steps=2",
                           "eval_max_samples=4", "license=apache-2.0")
    result = train(load_config(None, overrides), log=lambda m: None)
    text = (out / "README.md").read_text()
    assert (out / "realqa_card.json").is_file()
    # the saved processor sizes images as training did (the base's processor allows more pixels)
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": SMALL_PIXELS["min_pixels"], "longest_edge": SMALL_PIXELS["max_pixels"]}
    front = _front_matter(text)
    assert front["library_name"] == "peft" and front["license"] == "apache-2.0" and "realqa" in front["tags"]
    final = result.held_out[-1]
    assert f"| heldout_test_quality_rows | {final['heldout_test_quality_rows']} |" in text
    assert "| eval_loss |" in text and "| steps run | 2 |" in text and "eval_runtime" not in text
    (python,) = [line for line in text.splitlines() if line.startswith("metric = realqa.create_metric(")]
    namespace = {"realqa": realqa}
    exec(python.replace('task="quality"', f'task="quality", device="cpu", min_pixels={SMALL_PIXELS["min_pixels"]}'),
         namespace)
    assert namespace["metric"].task.name == "quality"
