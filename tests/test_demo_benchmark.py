"""The demo benchmark's own arithmetic (benchmarks/demo_model.py), on made-up scores whose answer is known."""

from __future__ import annotations

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
