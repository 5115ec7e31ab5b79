"""The bundled demo model: it loads through ``load_scorer``, its expected score (NCM) falls for the
distortions it learned, and its card says what it is.

It ranks held-out photos only roughly (see the README: the model is small and briefly trained), so these
tests hold it to what benchmarks/demo_model.py shows it does, not to what a RealQA checkpoint does.
"""

from __future__ import annotations

import json

import pytest
from PIL import Image, ImageEnhance, ImageFilter

from conftest import EXAMPLE_PHOTOS
from realqa.engine import load_scorer
from realqa.model import read_card
from realqa.models import demo_model_path

pytestmark = pytest.mark.slow  # the demo model is larger than the tiny test models

DEMO = demo_model_path()  # the default model ships in the package: its absence is a failure


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(str(DEMO), device="cpu", batch_size=8)


def test_demo_model_scores_the_example_photos(scorer):
    results = scorer.score([str(p) for p in EXAMPLE_PHOTOS])
    assert [r.path for r in results] == [str(p) for p in EXAMPLE_PHOTOS]
    for r in results:
        assert r.status == "ok", (r.path, r.text)
        assert 1.0 <= r.score <= 5.0 and 1.0 <= r.ncm <= 5.0


@pytest.mark.parametrize("distort", [lambda im: im.filter(ImageFilter.GaussianBlur(8)),
                                     lambda im: ImageEnhance.Brightness(im).enhance(0.25)],
                         ids=["heavy blur", "underexposed"])
def test_demo_model_expects_a_lower_score_for_a_heavily_distorted_copy(scorer, distort):
    photos = [Image.open(p).convert("RGB") for p in EXAMPLE_PHOTOS]
    clean = scorer.score(photos)
    distorted = scorer.score([distort(p) for p in photos])
    # Its NCM values span about 1.4 to 4.8. The smallest drop today: rocket.jpg, a dusk photo (clean 3.09, the
    # lowest), to 2.24 darkened; before the brightness steps (benchmarks/RESULTS.md, "Sixth stage") the tower
    # hardly told it from its darkened copy (3.17 -> 2.80).
    for a, b in zip(clean, distorted):
        assert b.ncm < a.ncm - 0.6, (a.path, a.ncm, b.ncm)
        assert b.status == "ok" and b.score < a.score, (a.path, a.score, b.score)
    assert max(b.ncm for b in distorted) < min(a.ncm for a in clean) - 0.5  # every copy ranks below every photo


def test_demo_model_ranks_the_damaged_example_copies_below_the_original(scorer):
    """What `make demo` shows: blurred, noised and JPEG (quality 10) copies of motorcycle.jpg, a photo held out
    of the model's training, below the original, by the greedy score and by NCM (the JPEG copy by at least 0.1:
    the model ranks JPEG more weakly than blur and noise, README)."""
    folder = EXAMPLE_PHOTOS[0].parent
    damaged = [folder / "damaged" / f"motorcycle_{name}.jpg" for name in ("blur3", "noise20", "jpeg10")]
    original, *copies = scorer.score([str(folder / "motorcycle.jpg"), *map(str, damaged)])
    assert all(r.status == "ok" for r in (original, *copies))
    for copy in copies:
        assert copy.score < original.score and copy.ncm < original.ncm - 0.1, (copy.path, copy.score, copy.ncm,
                                                                               original.score, original.ncm)


def test_demo_model_card_says_what_it_was_trained_on_and_cannot_judge():
    card = read_card(DEMO)
    assert sorted(card.tasks) == ["clarity", "exposure", "level_shot", "quality", "saturation"]
    assert card.tasks["quality"].decimals == 2
    assert card.trained_on and "synth" in card.trained_on[0]
    assert any("aesthetic" in line for line in card.extra["cannot_judge"])
    assert any("semantic" in line for line in card.extra["cannot_judge"])
    assert card.extra["held_out_photos"] and card.extra["reproduce"].startswith("python scripts/train_demo_model.py")
    assert card.max_pixels < 200_704  # a small input keeps CPU scoring fast
    # a plain transformers load of the folder sizes images as the card (and training) did
    processor = json.loads((DEMO / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": card.min_pixels, "longest_edge": card.max_pixels}
    # Its training images were distorted at the photos' own size, then made into the canvas it scores.
    settings = card.extra["synth_settings"]
    assert settings["preprocessing"] == card.preprocessing == "fragments" and settings.get("max_pixels") is None
    assert settings["test_sources"] == sorted(card.extra["held_out_photos"])
    size = sum(f.stat().st_size for f in DEMO.rglob("*") if f.is_file())
    assert size < 20_000_000
