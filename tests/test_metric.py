"""The pyiqa-shaped API: create_metric / list_models / register_model, input conversion, and the same
numbers as ``realqa score`` on the same images."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

import realqa
from conftest import EXAMPLE_PHOTOS, SMALL_PIXELS
from realqa import metric as metric_module
from realqa.cli import main
from realqa.media import MediaError
from realqa.metric import array_to_image, as_inputs, tensor_to_image
from realqa.models import demo_model_path

PIXEL_ARGS = ["--min-pixels", str(SMALL_PIXELS["min_pixels"]), "--max-pixels", str(SMALL_PIXELS["max_pixels"])]


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    monkeypatch.setattr(metric_module, "_registered", {})


def _photo_array(index: int = 0, size=(64, 48)) -> np.ndarray:
    return np.asarray(Image.open(EXAMPLE_PHOTOS[index]).convert("RGB").resize(size))


# ---------------------------------------------------------------- conversion


def test_a_tensor_in_0_1_becomes_the_image_it_came_from_exactly():
    rng = np.random.default_rng(0)
    levels = rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)
    tensor = torch.from_numpy(levels.copy()).permute(2, 0, 1).float() / 255  # float32, as a pipeline holds it
    assert np.array_equal(np.asarray(tensor_to_image(tensor)), levels)


def test_tensor_values_are_rounded_to_the_nearest_level_not_truncated():
    k = torch.arange(1, 255, dtype=torch.float64)
    below = (k - 0.3) / 255  # a hair under level k: rounds up to k (truncation would give k - 1)
    above = (k + 0.3) / 255  # a hair over: stays k
    for values in (below, above):
        tensor = values.view(1, 1, -1).expand(3, 1, -1).float()
        image = np.asarray(tensor_to_image(tensor))
        assert image.shape == (1, 254, 3)
        assert image[0, :, 0].tolist() == k.long().tolist()
    ends = torch.tensor([0.0, 1.0]).view(1, 1, 2).expand(3, 1, 2)
    assert np.asarray(tensor_to_image(ends))[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("tensor, problem", [
    (torch.full((3, 4, 4), 1.5), "values in [0, 1], got min 1.5, max 1.5"),
    (torch.full((3, 4, 4), -0.1), "values in [0, 1]"),
    (torch.full((3, 4, 4), math.nan), "NaN or infinite"),
    (torch.zeros(3, 4, 4, dtype=torch.uint8), "floats in [0, 1], got dtype torch.uint8"),
    (torch.zeros(1, 4, 4), "shape (3, H, W)"),
    (torch.zeros(3, 0, 4), "no pixels"),
])
def test_a_bad_tensor_is_refused_with_its_problem(tensor, problem):
    with pytest.raises(MediaError, match=None) as raised:
        tensor_to_image(tensor, "<image 2>")
    assert str(raised.value).startswith("<image 2>: ") and problem in str(raised.value)


def test_arrays_become_images_by_channel_count():
    rgb = _photo_array()
    assert np.array_equal(np.asarray(array_to_image(rgb)), rgb)
    assert array_to_image(rgb[:, :, 0]).mode == "L"
    assert array_to_image(rgb[:, :, :1]).mode == "L"
    assert array_to_image(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])).mode == "RGBA"
    assert np.array_equal(np.asarray(array_to_image(rgb[:, ::-1])), rgb[:, ::-1])  # a strided view
    with pytest.raises(MediaError, match="must be uint8"):
        array_to_image(rgb.astype(np.float32))
    with pytest.raises(MediaError, match=r"got \(48, 64, 2\)"):
        array_to_image(rgb[:, :, :2])


def test_a_batch_tensor_is_one_input_per_image():
    batch = torch.rand(5, 3, 8, 8)
    items = as_inputs(batch)
    assert len(items) == 5 and torch.equal(items[3], batch[3])
    assert len(as_inputs(batch[0])) == 1 and len(as_inputs("a.jpg")) == 1 and len(as_inputs(_photo_array())) == 1
    assert len(as_inputs(["a.jpg", batch[0], _photo_array()])) == 3
    # A batch inside a list is its images too, in place: one output per image, as the README shows.
    items = as_inputs(["a.jpg", batch, batch[1], batch[:1]])
    assert len(items) == 1 + 5 + 1 + 1 and items[0] == "a.jpg"
    assert all(torch.equal(item, batch[i]) for item, i in zip(items[1:], [0, 1, 2, 3, 4, 1, 0]))


# ---------------------------------------------------------------- the registry


def test_list_models_names_the_demo_model_and_the_official_presets():
    names = realqa.list_models()
    assert names[0] == "realqa-demo"
    assert {"realqa-koniq", "realqa-ava", "realqa-realqa"} <= set(names)
    entries = metric_module._entries()
    assert entries["realqa-demo"].model == str(demo_model_path())
    for name in ("realqa-koniq", "realqa-ava", "realqa-realqa"):
        assert entries[name].model == "Qwen/Qwen2-VL-7B-Instruct"
        assert entries[name].adapter.startswith("MingxingLi/RealQA-models/")
    assert entries["realqa-ava"].task == "aesthetics"


def test_an_unknown_name_is_an_error_listing_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'no-such-metric'.*Known names: realqa-demo, realqa-koniq"):
        realqa.create_metric("no-such-metric")


def test_register_model_adds_a_name_and_refuses_a_second_or_a_missing_folder(tiny_model_dir, tmp_path):
    entry = realqa.register_model("mine", tiny_model_dir, task="quality", description="tiny")
    assert "mine" in realqa.list_models() and entry.model == str(tiny_model_dir)
    with pytest.raises(ValueError, match="already a known model"):
        realqa.register_model("mine", tiny_model_dir)
    realqa.register_model("mine", tiny_model_dir, overwrite=True)
    with pytest.raises(ValueError, match="path .*nowhere.* is neither an existing folder nor a hub id"):
        realqa.register_model("other", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="card .* is neither an existing file or folder"):
        realqa.register_model("other", tiny_model_dir, card=tmp_path / "no-card.json")


def test_options_are_checked_before_loading():
    with pytest.raises(ValueError, match="value must be one of ncm, score"):
        realqa.create_metric("realqa-demo", value="mean")
    with pytest.raises(TypeError, match="unknown option.*colour"):
        realqa.create_metric("realqa-demo", colour="red")


# ---------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def tiny_metric(tiny_model_dir):
    metric_module._registered["tiny"] = metric_module.ModelEntry("tiny", str(tiny_model_dir))
    try:
        return realqa.create_metric("tiny", device="cpu", batch_size=4, **SMALL_PIXELS)
    finally:
        metric_module._registered.pop("tiny")


def test_every_input_kind_gets_its_row_in_order(tiny_metric, tmp_path):
    photo = _photo_array(1)
    inputs = [str(EXAMPLE_PHOTOS[0]), Image.fromarray(photo), photo, torch.from_numpy(photo.copy()).permute(2, 0, 1) / 255,
              str(tmp_path / "missing.jpg"), np.zeros((4, 4), np.float32), {"not": "an image"}]
    scores, rows = tiny_metric(inputs, return_rows=True)
    assert scores.dtype == torch.float64 and scores.shape == (7,)
    assert [r.path for r in rows] == [str(EXAMPLE_PHOTOS[0]), "<image 1>", "<image 2>", "<image 3>",
                                      str(tmp_path / "missing.jpg"), "<image 5>", "<image 6>"]
    assert [r.status for r in rows[4:]] == ["error"] * 3
    assert rows[4].error.endswith("file not found")
    assert rows[5].error.startswith("<image 5>: a NumPy image must be uint8")
    assert rows[6].error.startswith("<image 6>: cannot score a dict")
    assert all(math.isnan(s) for s in scores[4:].tolist())
    # The same pixels as a PIL image, an array and a tensor give the same row.
    assert rows[1].text == rows[2].text == rows[3].text and rows[1].ncm == rows[2].ncm == rows[3].ncm
    for score, row in zip(scores.tolist(), rows):
        assert (math.isnan(score) and (row.status != "ok" or row.ncm is None)) or score == row.ncm
    assert tiny_metric.score_range == (1, 5) and tiny_metric.lower_better is False
    assert tiny_metric.name == "tiny" and tiny_metric.entry.adapter is None


def test_a_batch_tensor_in_a_list_gives_its_images_in_place_named_by_their_output_position(tiny_metric):
    """The README's example: a path, a PIL image, an HWC array and an (N, 3, H, W) tensor in one list."""
    photo = _photo_array(1)
    batch = torch.stack([torch.from_numpy(_photo_array(i).copy()).permute(2, 0, 1) / 255 for i in (2, 0)])
    scores, rows = tiny_metric([str(EXAMPLE_PHOTOS[0]), Image.fromarray(photo), photo, batch], return_rows=True)
    assert scores.shape == (5,) and [r.path for r in rows] == [str(EXAMPLE_PHOTOS[0]), "<image 1>", "<image 2>",
                                                               "<image 3>", "<image 4>"]
    assert all(r.status != "error" for r in rows), [r.error for r in rows]

    def answers(found):
        return [(r.status, r.text, r.ncm) for r in found]

    # The batch on its own gives the same rows in the same order (the tiny model's answers differ by image).
    _, alone = tiny_metric(batch, return_rows=True)
    assert answers(rows[3:]) == answers(alone) and answers(tiny_metric(batch[1], return_rows=True)[1]) == answers(alone[1:])
    assert answers(alone[:1]) != answers(alone[1:])


def test_a_failed_in_memory_image_keeps_its_own_name(tiny_metric):
    """The scorer sees only the inputs that converted (here the 2nd and 3rd, its images 0 and 1); its error
    row for the 3rd is named as the caller gave it."""
    sliver = Image.new("RGB", (1, 5000))  # an aspect ratio the image processor refuses: the scorer's own error row
    rows = tiny_metric.score_rows([np.zeros((4, 4), np.float32), _photo_array(), sliver])
    assert [r.path for r in rows] == ["<image 0>", "<image 1>", "<image 2>"]
    assert rows[2].status == "error" and rows[2].error.startswith("<image 2>: image cannot be preprocessed")


def test_same_rows_as_realqa_score(tiny_metric, tiny_model_dir, tmp_path):
    paths = [str(p) for p in EXAMPLE_PHOTOS] + [str(tmp_path / "missing.jpg")]
    out = tmp_path / "scores.csv"
    assert main(["score", *paths, "--model", str(tiny_model_dir), "--out", str(out), "--quiet", *PIXEL_ARGS]) == 0
    with open(out, newline="") as handle:
        cli = list(csv.DictReader(handle))
    rows = tiny_metric.score_rows(paths)
    assert [r["path"] for r in cli] == [r.path for r in rows]
    for written, row in zip(cli, rows):
        assert (written["status"], written["text"]) == (row.status, row.text)
        for key in ("score", "ncm", "ncm_std"):
            value = getattr(row, key)
            assert written[key] == ("" if value is None else str(value))


def test_the_demo_model_gives_the_numbers_realqa_score_writes(tmp_path, capsys):
    paths = [str(p) for p in EXAMPLE_PHOTOS]
    out = tmp_path / "scores.csv"
    assert main(["score", *paths, "--out", str(out), "--quiet", "--device", "cpu"]) == 0
    with open(out, newline="") as handle:
        cli = list(csv.DictReader(handle))
    ncm_metric = realqa.create_metric("realqa-demo", device="cpu")
    greedy = realqa.create_metric("realqa-demo", device="cpu", value="score")
    ncm, rows = ncm_metric(paths, return_rows=True)
    assert all(r.status == "ok" for r in rows)
    assert ncm.tolist() == [float(r["ncm"]) for r in cli]
    assert greedy(paths).tolist() == [float(r["score"]) for r in cli]
    assert [r.ncm_std for r in rows] == [float(r["ncm_std"]) for r in cli]
    assert all(0 < r.ncm_std < 4.53 for r in rows)
    # A decoded photo given as a tensor in [0, 1] scores exactly as the same photo given as a PIL image.
    image = Image.open(EXAMPLE_PHOTOS[0]).convert("RGB")
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255
    assert ncm_metric(tensor[None]).tolist() == ncm_metric(image).tolist()
    # Options pass through as --decimals does: the card's precision is taken, another refused (the model would
    # still write two decimals and its answers would be cut), by the API as by the command line.
    two = realqa.create_metric("realqa-demo", device="cpu", decimals=2)
    assert two.task.decimals == 2 and two(paths).tolist() == ncm.tolist()
    with pytest.raises(ValueError, match="answers quality with 2 decimals"):
        realqa.create_metric("realqa-demo", device="cpu", decimals=1)
    assert main(["score", *paths, "--out", str(tmp_path / "one.csv"), "--quiet", "--device", "cpu", "--decimals", "1"]) == 2
    assert "answers quality with 2 decimals" in capsys.readouterr().err and not (tmp_path / "one.csv").exists()
