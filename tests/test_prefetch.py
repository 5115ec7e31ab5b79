"""The fast path (images prepared in worker processes, batches grouped by size) gives the plain path's results."""

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLE_PHOTOS
from realqa.engine import Scorer
from realqa.model import load_model
from realqa.prefetch import prepare_examples

# 4 to 64 visual tokens: the images' sizes decide their prompt lengths, as at RealQA's bounds.
MIXED_PIXELS = {"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 64}


def mixed_images(folder) -> list[str]:
    rng = np.random.default_rng(3)
    sizes = [(56, 56), (300, 200), (90, 160), (224, 224), (120, 60), (500, 90), (64, 64), (180, 240)]
    paths = []
    for i in range(22):
        w, h = sizes[i % len(sizes)]
        level = rng.uniform(0.1, 0.9)
        pixels = np.clip(level * 255 + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
        path = folder / f"m{i:02d}.png"
        Image.fromarray(pixels, "RGB").save(path)
        paths.append(str(path))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    paths.insert(7, str(folder / "broken.jpg"))
    paths.insert(15, str(folder / "missing.jpg"))
    return paths + [str(p) for p in EXAMPLE_PHOTOS[:2]]


@pytest.fixture(scope="module")
def loaded(format_model_dir):
    return load_model(format_model_dir, device="cpu")


def _padding(scorer: Scorer, images, **options) -> tuple[list, int]:
    """Results, and the padded prompt positions over all model batches."""
    padded = []
    answer = scorer._answer

    def counting(batch, *rest, **kwargs):
        padded.append(int((batch.tensors["attention_mask"] == 0).sum()))  # left padding of the prompts
        return answer(batch, *rest, **kwargs)

    scorer._answer = counting
    return scorer.score(images, **options), sum(padded)


def test_workers_and_grouping_give_the_plain_results(loaded, tmp_path):
    images = mixed_images(tmp_path)
    plain, plain_padding = _padding(Scorer(loaded, batch_size=4, workers=0, group_batches=1, **MIXED_PIXELS), images)
    fast, fast_padding = _padding(Scorer(loaded, batch_size=4, workers=2, group_batches=4, **MIXED_PIXELS), images)
    assert [r.path for r in fast] == images
    assert fast_padding < plain_padding / 2  # grouping did change the batches
    assert sum(r.status == "ok" for r in plain) >= 10
    for a, b in zip(plain, fast):
        assert (a.path, a.status, a.text, a.score, a.error) == (b.path, b.status, b.text, b.score, b.error)
        if a.ncm is None:
            assert b.ncm is None
        else:
            assert b.ncm == pytest.approx(a.ncm, abs=1e-5)
    errors = {r.path.rsplit("/", 1)[-1]: r.error for r in fast if r.status == "error"}
    assert set(errors) == {"broken.jpg", "missing.jpg"}
    assert "not found" in errors["missing.jpg"] and errors["broken.jpg"].startswith(images[7])


def test_several_questions_match_with_workers(tiny_model_dir, tmp_path):
    loaded = load_model(tiny_model_dir, device="cpu")  # random weights: answers quality and aesthetics
    images = mixed_images(tmp_path)[:9]
    plain = Scorer(loaded, batch_size=3, group_batches=1, **MIXED_PIXELS).score_tasks(images, ["quality", "aesthetics"])
    fast = Scorer(loaded, batch_size=3, workers=1, group_batches=3, **MIXED_PIXELS).score_tasks(
        images, ["quality", "aesthetics"]
    )
    for a, b in zip(plain, fast):
        for task in ("quality", "aesthetics"):
            assert (a[task].path, a[task].text, a[task].status) == (b[task].path, b[task].text, b[task].status)


def test_prepared_examples_come_in_input_order_from_workers(loaded, tmp_path):
    images = mixed_images(tmp_path)
    scorer = Scorer(loaded, **MIXED_PIXELS)
    prompt = scorer.prompt_ids(scorer.task("quality"))
    inline = list(prepare_examples(images, scorer.examples, prompt, dtype=loaded.dtype, workers=0))
    pooled = list(prepare_examples(images, scorer.examples, prompt, dtype=loaded.dtype, workers=2, chunk=3))
    assert [(i, label) for i, label, _ in pooled] == [(i, label) for i, label, _ in inline] == list(enumerate(images))
    for (_, _, a), (_, _, b) in zip(inline, pooled):
        assert type(a) is type(b)
        if hasattr(a, "pixel_values"):
            assert a.input_ids == b.input_ids and bool((a.pixel_values == b.pixel_values).all())
        else:
            assert str(a) == str(b)


def test_cli_workers_option_gives_the_same_file(format_model_dir, tmp_path):
    from realqa.cli import main

    images = mixed_images(tmp_path)
    pixels = ["--min-pixels", str(MIXED_PIXELS["min_pixels"]), "--max-pixels", str(MIXED_PIXELS["max_pixels"])]
    args = ["score", *images, "--model", str(format_model_dir), "--quiet", "--batch-size", "4", *pixels]
    assert main([*args, "--workers", "0", "--group-batches", "1", "--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main([*args, "--workers", "2", "--out", str(tmp_path / "fast.jsonl")]) == 0
    import json

    plain = [json.loads(line) for line in (tmp_path / "plain.jsonl").read_text().splitlines()]
    fast = [json.loads(line) for line in (tmp_path / "fast.jsonl").read_text().splitlines()]
    assert [r["path"] for r in fast] == images
    from test_distributed import same_rows

    for a, b in zip(plain, fast):
        same_rows(a, b)


@pytest.mark.slow  # torch.compile
def test_compiled_language_model_gives_the_same_results(tiny_model_dir, tmp_path):
    """--compile: torch.compile (inductor, dynamic shapes) of the language model changes no answer."""
    from realqa.engine import compile_language_model

    images = mixed_images(tmp_path)[:8]
    plain = Scorer(load_model(tiny_model_dir, device="cpu"), batch_size=4, **MIXED_PIXELS).score(images)
    loaded = load_model(tiny_model_dir, device="cpu")
    compile_language_model(loaded)
    compiled = Scorer(loaded, batch_size=4, **MIXED_PIXELS).score(images + images[:3])  # new batch shapes too
    for a, b in zip(plain + plain[:3], compiled):
        assert (a.path, a.status, a.text) == (b.path, b.status, b.text)
        assert (a.ncm is None and b.ncm is None) or b.ncm == pytest.approx(a.ncm, abs=1e-5)
