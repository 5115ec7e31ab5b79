"""The demo benchmark's own arithmetic (benchmarks/demo_model.py), on made-up scores whose answer is known."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
from scipy import stats

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import demo_model as bench  # noqa: E402


def held_out(rows):
    """(photo, label, NCM) triples as the benchmark sees a scored split."""
    samples = [SimpleNamespace(scores={"quality": label}, info={"photo": photo}) for photo, label, _ in rows]
    results = [SimpleNamespace(ncm=ncm) for _, _, ncm in rows]
    return SimpleNamespace(samples=samples), results


def test_photo_rows_separate_a_per_photo_offset_from_the_ranking_within_photos():
    # Each photo ranked perfectly within itself, but "b" scored about 2 too low throughout: content read as
    # damage. Moving each photo's mean NCM to its mean label leaves a perfect ranking.
    rows = [("a", 5.0, 4.9), ("a", 3.0, 3.9), ("a", 2.0, 3.4), ("a", 5.0, 4.8),
            ("b", 5.0, 2.6), ("b", 4.0, 2.2), ("b", 2.5, 1.2), ("b", 5.0, 2.5)]
    dataset, results = held_out(rows)
    raw = bench.agreement(results=[SimpleNamespace(score=r.ncm, ncm=r.ncm, status="ok") for r in results],
                          labels=[label for _, label, _ in rows])["ncm_srcc"]
    figures = bench.photo_rows(dataset, results)
    a, b = figures["photos"]
    assert (a["photo"], a["images"], b["photo"]) == ("a", 4, "b")
    assert a["intact_ncm"] == pytest.approx(4.85) and b["intact_ncm"] == pytest.approx(2.55)
    assert b["damaged_label"] == pytest.approx(3.25) and b["damaged_ncm"] == pytest.approx(1.7)
    assert a["srcc"] > 0.9 and b["srcc"] > 0.9
    shifted = [4.4, 3.4, 2.9, 4.3, 4.6, 4.2, 3.2, 4.5]  # a: -0.5 (3.75 - 4.25), b: +2.0 (4.125 - 2.125)
    assert raw < 0.5
    assert figures["offsets_removed_srcc"] == pytest.approx(stats.spearmanr(shifted, [r[1] for r in rows])[0])


def test_photo_rows_leave_out_unscored_images():
    rows = [("a", 5.0, 4.0), ("a", 2.0, None), ("a", 3.0, 2.0), ("b", 5.0, 4.5), ("b", 1.0, 1.5)]
    figures = bench.photo_rows(*held_out(rows))
    assert [r["images"] for r in figures["photos"]] == [2, 2]
    assert figures["photos"][0]["damaged_ncm"] == pytest.approx(2.0)


def test_ablation_trains_each_arm_once_at_its_precision_and_scores_every_held_out_image(tmp_path):
    from realqa.data.manifest import read_manifest
    from realqa.data.synth import synthesize
    from realqa.model import load_model
    from realqa.models import demo_model_path
    from test_synth import photo

    (tmp_path / "photos").mkdir()
    for i in range(4):
        photo(i).save(tmp_path / "photos" / f"photo{i}.jpg", quality=95)
    work = tmp_path / "work"
    _, paths = synthesize(tmp_path / "photos", work / "synth", seed=0, types=["noise", "gaussian_blur"], levels=2,
                          views=1, preprocessing="fragments")
    held_out = read_manifest(paths["test"])
    # Two arms side by side in worker processes, one step each: the plumbing, not the figures.
    rows = bench.ablation(held_out, work, demo_model_path(), seeds=[0], steps=1, lr=1e-3, jobs=2, threads=2)
    assert [r["decimals"] for r in rows] == [0, 1, 2]
    for row in rows:
        arm = work / "ablation" / f"decimals{row['decimals']}-seed0-steps1"
        assert load_model(arm, device="cpu").card.tasks["quality"].decimals == row["decimals"]
        (run,) = row["runs"]
        assert run["images"] == len(held_out)  # one answer per held-out image
    trained = {p: p.stat().st_mtime_ns for p in (work / "ablation").glob("decimals*/model.safetensors")}
    assert len(trained) == 3
    again = bench.ablation(held_out, work, demo_model_path(), seeds=[0], steps=1, lr=1e-3, jobs=2, threads=2)
    assert {p: p.stat().st_mtime_ns for p in trained} == trained  # present arms are scored, not trained again
    assert json.dumps(again) == json.dumps(rows)  # (a constant answer's SRCC is NaN, unequal to itself)
