"""The benchmark runner: a stub scorer for exact numbers, the tiny model end to end through the CLI."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import SMALL_PIXELS
from realqa import data
from realqa.bench import run_bench
from realqa.metrics import evaluate
from realqa.results import ScoreResult
from test_data_support import cli, koniq_csv, write_image, write_text

MOS = [10.0, 25.0, 40.0, 55.0, 70.0, 85.0]


@pytest.fixture
def six_images(tmp_path):
    """A generic dataset of six tiny images with MOS on 0-100, all in one split."""
    lines = ["path,mos"] + [f"img{i}.png,{mos}" for i, mos in enumerate(MOS)]
    labels = write_text(tmp_path / "six.csv", "\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    for i in range(len(MOS)):
        write_image(
            tmp_path / "imgs" / f"img{i}.png", size=(48, 40), color=tuple(int(c) for c in rng.integers(0, 255, 3))
        )
    return data.load("generic", tmp_path, labels=labels, image_column="path", score_columns="quality=mos",
                     native_range="0,100")


class StubScorer:
    """Answers from the file name: a score for most, no score for img4, an error for img5; ``spreads``
    (optional) gives each scored image's ncm_std."""

    def __init__(self, scores, spreads=None):
        self.scores = scores
        self.spreads = spreads or [None] * len(scores)
        self.calls = []

    def iter_scores(self, paths, task, *, decimals=None, batch_size=None, cot=False, attributes=False):
        self.calls.append((task, len(paths)))
        for path in paths:
            index = int(path[-5])
            if index == 5:
                yield ScoreResult.failed(path, task, f"{path}: file is empty (0 bytes)")
            elif index == 4:
                yield ScoreResult(path, task, None, None, "no_score", "The quality is good")
            else:
                value = self.scores[index]
                yield ScoreResult(path, task, value, value, "ok" if value <= 5 else "out_of_range", f"{value:.2f}.",
                                  ncm_std=self.spreads[index])


def test_table_counts_metrics_and_prediction_rows(six_images, tmp_path):
    scorer = StubScorer([1.5, 1.2, 2.9, 3.4, None, None])
    table = run_bench(scorer, [("six", six_images)], tmp_path / "bench", model="stub")
    (row,) = table.rows
    assert (row.rows, row.evaluated, row.parse_failures, row.errors, row.out_of_range) == (6, 4, 1, 1, 0)
    expected = evaluate([1.5, 1.2, 2.9, 3.4, None, None], [1 + 4 * m / 100 for m in MOS])
    assert row.srcc == pytest.approx(expected.srcc) and row.plcc == pytest.approx(expected.plcc)
    assert row.rmse_native == pytest.approx(row.rmse * 25)  # 1-5 is 0-100 scaled by 1/25
    assert row.split == "all" and scorer.calls == [("quality", 6)]
    with open(row.predictions, newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["id"] for p in predictions] == [f"img{i}" for i in range(6)]
    assert predictions[0]["score"] == "1.5" and float(predictions[0]["score_native"]) == pytest.approx(12.5)
    assert float(predictions[0]["label_native"]) == 10.0
    assert predictions[4]["status"] == "no_score" and predictions[4]["score"] == ""
    assert predictions[5]["status"] == "error" and "file is empty" in predictions[5]["error"]
    markdown = (tmp_path / "bench" / "bench.md").read_text()
    assert "| Model | six SRCC | six PLCC |" in markdown and f"| stub | {row.srcc:.4f} | {row.plcc:.4f} |" in markdown
    with open(tmp_path / "bench" / "bench.csv", newline="") as handle:
        assert list(csv.DictReader(handle))[0]["parse_failures"] == "1"


def test_the_test_split_is_scored_and_limit_applies(six_images, tmp_path):
    split = data.load("generic", six_images.root, labels=six_images.label_files[0]["path"], image_column="path",
                      score_columns="quality=mos", native_range="0,100", split="random", ratios="0.5,0.5", seed=1)
    manifests = data.write_manifests(split, tmp_path / "prepared" / "six")
    scorer = StubScorer([2.0, 3.0, 6.5, 4.0, None, None])
    table = run_bench(scorer, [("six", tmp_path / "prepared" / "six")], tmp_path / "out")
    assert table.rows[0].split == "test" and table.rows[0].rows == 3
    assert manifests["test"].is_file()
    limited = run_bench(StubScorer([2.0] * 6), [("six", split)], tmp_path / "out2", split="train", limit=2)
    assert limited.rows[0].rows == 2


def test_out_of_range_scores_are_counted_apart_and_never_evaluated(six_images, tmp_path):
    table = run_bench(StubScorer([1.0, 2.0, 3.0, 6.5, None, None]), [("six", six_images)], tmp_path / "b")
    row = table.rows[0]
    assert (row.out_of_range, row.evaluated, row.parse_failures, row.errors) == (1, 3, 1, 1)
    assert row.official_rows == 4  # the authors' script reads 6.5 as a score: no range check there


def test_a_dataset_without_test_split_needs_a_choice(six_images, tmp_path):
    split = data.load("generic", six_images.root, labels=six_images.label_files[0]["path"], image_column="path",
                      score_columns="quality=mos", native_range="0,100", split="random", seed=1)
    train_only = split.subset("train")
    with pytest.raises(ValueError, match="no 'test' or 'all' split to evaluate \\(splits: train\\)"):
        run_bench(StubScorer([2.0] * 6), [("six", train_only)], tmp_path / "b")


def test_bench_manifest_paths_and_folders_write_inside_out(six_images, tiny_model_dir, tmp_path, monkeypatch):
    """--datasets takes manifest paths (relative or absolute) and folders holding test.jsonl; every file lands
    in --out, two manifests of one name apart, none beside the manifests."""
    split = data.load("generic", six_images.root, labels=six_images.label_files[0]["path"], image_column="path",
                      score_columns="quality=mos", native_range="0,100", split="random", ratios="0.5,0.5", seed=1)
    for folder in ("a", "b", "c"):
        data.write_manifests(split, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    model = ["--model", tiny_model_dir, "--device", "cpu", "--quiet", "--limit", "1",
             "--min-pixels", SMALL_PIXELS["min_pixels"], "--max-pixels", SMALL_PIXELS["max_pixels"]]
    datasets = f"a/test.jsonl,{tmp_path / 'b' / 'test.jsonl'},c"
    assert cli("bench", *model, "--datasets", datasets, "--out", "out") == 0
    with open(out / "bench.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["dataset"] for row in rows] == datasets.split(",") and {row["split"] for row in rows} == {"test"}
    assert [row["predictions"] for row in rows] == [str(Path("out") / f"{stem}.predictions.csv")
                                                   for stem in ("a_test", "b_test", "c")]
    assert sorted(p.name for p in out.iterdir()) == ["a_test.predictions.csv", "b_test.predictions.csv", "bench.csv",
                                                     "bench.md", "c.predictions.csv"]
    assert [p for p in tmp_path.rglob("*.predictions.csv") if p.parent != out] == []
    with pytest.raises(ValueError, match="unknown dataset 'nowhere'.*nor is it a manifest"):
        cli("bench", *model, "--datasets", "nowhere", "--out", "out2")


def test_bench_command_with_the_tiny_model(tiny_model_dir, tmp_path, capsys):
    """End to end: a KonIQ-layout root -> prepared manifests -> tiny random model -> one table row per dataset."""
    rows = [(f"{i}.jpg", 20.0 + 10 * i, "test" if i < 6 else "training") for i in range(8)]
    root = tmp_path / "data" / "KonIQ-10k"
    write_text(root / "koniq10k_distributions_sets.csv", koniq_csv(rows))
    for i, (name, _, _) in enumerate(rows):
        write_image(root / "1024x768" / name, color=(30 * i, 100, 200 - 20 * i))
    out = tmp_path / "bench"
    model = ["--model", tiny_model_dir, "--device", "cpu", "--batch-size", "3", "--quiet",
             "--min-pixels", SMALL_PIXELS["min_pixels"], "--max-pixels", SMALL_PIXELS["max_pixels"]]
    assert cli("bench", *model, "--datasets", "koniq10k", "--data-root", tmp_path / "data", "--out", out) == 0
    printed = capsys.readouterr().out
    assert "koniq10k" in printed and "SRCC" in printed and "predictions, bench.csv and bench.md" in printed
    assert (out / "prepared" / "koniq10k" / "test.jsonl").is_file()  # the split scored is frozen with the results
    with open(out / "bench.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["dataset"], row["split"], int(row["rows"]), int(row["errors"])) == ("koniq10k", "test", 6, 0)
    assert int(row["evaluated"]) + int(row["parse_failures"]) == 6
    with open(row["predictions"], newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert [p["id"] for p in predictions] == [str(i) for i in range(6)]
    assert predictions[0]["image"] == str(root / "1024x768" / "0.jpg")
    assert all(p["status"] in ("ok", "out_of_range", "no_score") for p in predictions)
    if int(row["evaluated"]) < 2:
        assert math.isnan(float(row["srcc"]))

    again = tmp_path / "again"
    assert cli("bench", *model, "--datasets", "koniq10k", "--prepared", out / "prepared", "--out", again,
               "--limit", "2") == 0
    with open(again / "bench.csv", newline="") as handle:
        assert int(next(csv.DictReader(handle))["rows"]) == 2


def test_the_table_says_whether_a_larger_spread_goes_with_a_larger_error(six_images, tmp_path):
    """Labels on 1-5: 1.4, 2.0, 2.6, 3.2 for img0-3. Errors |score - label|: 0.1, 0.8, 0.3, 1.2."""
    scores = [1.5, 1.2, 2.9, 4.4, None, None]
    spreads = [0.05, 0.3, 0.1, 0.6, None, None]  # ranked as the errors: SRCC 1
    table = run_bench(StubScorer(scores, spreads), [("six", six_images)], tmp_path / "b")
    row = table.rows[0]
    assert row.std_error_srcc == pytest.approx(1.0)
    with open(row.predictions, newline="") as handle:
        assert [p["ncm_std"] for p in csv.DictReader(handle)] == ["0.05", "0.3", "0.1", "0.6", "", ""]
    assert "std~err" in table.to_text() and " 1.0000 " in table.to_text().splitlines()[1]
    assert "SRCC(ncm_std, abs. error)" in (tmp_path / "b" / "bench.md").read_text()
    reversed_spreads = [0.6, 0.1, 0.3, 0.05, None, None]
    assert run_bench(StubScorer(scores, reversed_spreads), [("six", six_images)], tmp_path / "c").rows[0] \
        .std_error_srcc == pytest.approx(-1.0)
    # Without spreads (a model whose digits were not read) there is nothing to correlate.
    assert math.isnan(run_bench(StubScorer(scores), [("six", six_images)], tmp_path / "d").rows[0].std_error_srcc)


def test_spread_error_srcc_by_hand():
    from realqa.evaluation import spread_error_srcc

    value, rows = spread_error_srcc([0.1, 0.2, None, 0.4, 0.3], [3.0, 2.0, 4.0, None, 1.0], [3.1, 2.5, 4.0, 1.0, 3.0])
    # Rows 0, 1 and 4 have both: errors 0.1, 0.5, 2.0 against spreads 0.1, 0.2, 0.3 -> same order.
    assert (value, rows) == (pytest.approx(1.0), 3)
    # Spread ranks 3, 1, 2 against error ranks 2, 3, 1 (errors 0.5, 0.9, 0): 1 - 6 * (1 + 4 + 1) / (3 * 8) = -0.5.
    value, rows = spread_error_srcc([0.3, 0.1, 0.2], [3.0, 2.0, 1.0], [3.5, 2.9, 1.0])
    assert (value, rows) == (pytest.approx(-0.5), 3)
    assert math.isnan(spread_error_srcc([0.1], [1.0], [2.0])[0])
    with pytest.raises(ValueError, match="2 spreads, 1 scores and 1 labels"):
        spread_error_srcc([0.1, 0.2], [1.0], [1.0])
