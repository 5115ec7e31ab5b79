"""realqa eval beside the official RealQA evaluation script's reading, on hand-made predictions.

The official script reads each LLaMA-Factory row's label after "score of this image is " and its
prediction between the first '<' and the first '>' (else like the label), skips any row it cannot
read and correlates the rest raw. realqa counts every row, and never scores an answer outside the
task's range. Every figure below is worked out by hand (or from scipy on the rows that must be kept).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from scipy import stats

from realqa.cli import main
from realqa.evaluation import (
    OfficialReading,
    Prediction,
    evaluate_predictions,
    format_table,
    official_label,
    official_reading,
    official_value,
    read_labels,
    read_predictions,
)
from realqa.results import ScoreResult

QUESTION = "<image>Can you evaluate the quality of the image from 1 to 5?"
PROMPT = "system\nYou are a helpful assistant.\nuser\n" + QUESTION + "\nassistant\n"
SAID = "The quality score of this image is {}."

# (predict, label answer): what each row is for
ROWS = [
    (SAID.format("3.47"), SAID.format("3.50")),  # plain
    (SAID.format("2.10"), SAID.format("2.00")),  # plain
    (SAID.format("33333333"), SAID.format("4.00")),  # out of the 1-5 range: realqa leaves it out, the script keeps it
    ("Sharp, well exposed <4.40>; on reflection <4.80>.", SAID.format("4.60")),  # realqa: last <...>, script: first
    ("I am not sure.", SAID.format("3.00")),  # no score: realqa counts it failed, the script skips it
    (SAID.format("1.20"), SAID.format("1.10")),  # plain
    (SAID.format("2.90"), SAID.format("3.20")),  # plain
    (SAID.format("3.30"), "Sharp, bright, a little noisy. <3.40>"),  # a CoT label: the script skips the row
]
# realqa's reading: rows 0, 1, 3 (4.80), 5, 6, 7 scored; row 2 out of range; row 4 failed
REALQA_PRED = [3.47, 2.10, 4.80, 1.20, 2.90, 3.30]
REALQA_LABEL = [3.50, 2.00, 4.60, 1.10, 3.20, 3.40]
# RMSE by hand: errors -0.03, 0.10, 0.20, 0.10, -0.30, -0.10 -> squares sum 0.1609 over 6 rows
REALQA_RMSE = math.sqrt(0.1609 / 6)
# the official reading keeps rows 0, 1, 2, 3 (4.40), 5, 6
OFFICIAL_PRED = [3.47, 2.10, 33333333.0, 4.40, 1.20, 2.90]
OFFICIAL_LABEL = [3.50, 2.00, 4.00, 4.60, 1.10, 3.20]
# Spearman by hand: prediction ranks 4 2 6 5 1 3, label ranks 4 2 5 6 1 3 -> sum d^2 = 2 -> 1 - 12/210
OFFICIAL_SRCC = 1 - 6 * 2 / (6 * 35)


def _write_predictions(path: Path, rows=ROWS, prompt=PROMPT) -> Path:
    path.write_text("".join(json.dumps({"prompt": prompt, "predict": p, "label": label}) + "\n" for p, label in rows))
    return path


def _write_conversations(path: Path, answers, images=None, question=QUESTION) -> Path:
    images = images or [f"img/{i}.jpg" for i in range(len(answers))]
    records = [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "images": [image]} for answer, image in zip(answers, images)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    return path


# ---------------------------------------------------------------- the official rule, piece by piece


@pytest.mark.parametrize("text, after_prefix, expected", [
    (SAID.format("3.47"), False, 3.47),  # a whole answer
    ("It is <3.1> or maybe <4.2>", None, 3.1),  # the first <...>
    ("a > b, so <3.1>", None, None),  # the first '>' comes before the first '<': nothing between, skipped
    ("< 3.1 >", None, 3.1),  # float() takes the spaces
    (SAID.format("3.47") + " " + SAID.format("3.90"), False, None),  # "3.47. The quality " is no number
    ("The quality score of this image is 3.47...", False, 3.47),  # dots stripped from both ends
    ("3.47", False, None),  # a whole answer without the phrase: the script's split finds nothing
    ("3.47.", None, 3.47),  # realqa's plain text: what followed the forced prefix
    ("3.47.", True, 3.47),
    ("3.47. " + SAID.format("3.90"), True, None),  # prefix + text reads "3.47. The quality "
    ("3.47. " + SAID.format("3.90"), None, 3.90),  # holding the phrase, it is taken as a whole answer
    ("", None, None),  # an input that failed
])
def test_official_value(text, after_prefix, expected):
    value = official_value(text, after_prefix=after_prefix)
    assert value == (pytest.approx(expected) if expected is not None else None)


def test_official_label_reads_numbers_and_plain_answers_only():
    assert official_label(3.4) == 3.4
    assert official_label(SAID.format("3.50")) == 3.5
    assert official_label("Sharp, bright, a little noisy. <3.40>") is None
    assert official_label(None) is None


def test_official_reading_keeps_what_the_script_keeps():
    reading = official_reading([p for p, _ in ROWS], [label for _, label in ROWS], after_prefix=False)
    assert isinstance(reading, OfficialReading)
    n_rows, n_kept, plcc, srcc = reading  # usable as the tuple (n_rows, n_kept, plcc, srcc)
    assert (n_rows, n_kept) == (8, 6)
    assert plcc == pytest.approx(stats.pearsonr(OFFICIAL_PRED, OFFICIAL_LABEL)[0])
    assert srcc == pytest.approx(OFFICIAL_SRCC) == pytest.approx(stats.spearmanr(OFFICIAL_PRED, OFFICIAL_LABEL)[0])
    assert plcc < 0.5  # the 33333333 answer drags it: the script has no range check


def test_official_reading_of_realqa_texts_with_numeric_labels():
    """What the bench passes: realqa's texts (plain: after the prefix; CoT: whole) and label values."""
    texts = ["3.47.", "2.10.", "Fine detail <4.40> then <4.80>", "", "1.20.", "no idea"]
    reading = official_reading(texts, [3.5, 2.0, 4.6, 3.0, 1.1, 2.2])
    assert (reading.n_rows, reading.n_kept) == (6, 4)
    assert reading.plcc == pytest.approx(stats.pearsonr([3.47, 2.10, 4.40, 1.20], [3.5, 2.0, 4.6, 1.1])[0])
    assert reading.srcc == pytest.approx(1.0)
    assert math.isnan(official_reading(["3.0."], [3.0]).plcc)  # one row: undefined, not an error
    with pytest.raises(ValueError, match="2 answers but 1 labels"):
        official_reading(["3.0.", "2.0."], [3.0])


# ---------------------------------------------------------------- realqa's reading of LLaMA-Factory rows


def test_llamafactory_rows_read_with_the_range_the_row_states(tmp_path):
    predictions = read_predictions(_write_predictions(tmp_path / "generated_predictions.jsonl"))
    assert [p.status for p in predictions] == ["ok", "ok", "out_of_range", "ok", "no_score", "ok", "ok", "ok"]
    assert predictions[2].pred is None and predictions[2].read == 33333333.0  # kept to report, never scored
    assert predictions[3].pred == 4.80 and predictions[7].label == 3.40
    assert predictions[3].text == ROWS[3][0] and predictions[7].label_text == ROWS[7][1]
    assert all(p.source == "llamafactory" for p in predictions)


def test_the_range_comes_from_the_prompt_then_the_task(tmp_path):
    aesthetics = [
        (SAID.format("7.50").replace("quality", "aesthetic"), SAID.format("6.00").replace("quality", "aesthetic"))
    ]
    ten = "user\n<image>Rate the aesthetics of this image from 1 to 10.\nassistant\n"
    (row,) = read_predictions(_write_predictions(tmp_path / "a.jsonl", aesthetics, ten), task="quality")
    assert (row.status, row.pred) == ("ok", 7.5)  # the row's own 1-10 beats --task quality's 1-5
    unlabelled = [("The score of this image is 7.50.", "")]
    (row,) = read_predictions(_write_predictions(tmp_path / "b.jsonl", unlabelled, "q"), task="quality")
    assert (row.status, row.pred, row.read) == ("out_of_range", None, 7.5)  # nothing stated: quality's 1-5
    (row,) = read_predictions(_write_predictions(tmp_path / "c.jsonl", unlabelled, "q"), task="aesthetics")
    assert (row.status, row.pred) == ("ok", 7.5)


def test_realqa_figures_leave_the_out_of_range_answer_out(tmp_path):
    table = evaluate_predictions(read_predictions(_write_predictions(tmp_path / "p.jsonl")), None, "p.jsonl")
    m = table[0].metrics
    assert (m["n_total"], m["n_evaluated"], m["n_failed"], m["n_out_of_range"]) == (8, 6, 1, 1)
    assert m["rmse"] == pytest.approx(REALQA_RMSE)  # 0.1638: finite and sane, not 1.4e7
    assert m["srcc"] == pytest.approx(1.0)
    assert m["plcc"] == pytest.approx(stats.pearsonr(REALQA_PRED, REALQA_LABEL)[0])
    official = table[0].official
    assert (official.n_rows, official.n_kept) == (8, 6) and official.srcc == pytest.approx(OFFICIAL_SRCC)
    header, row = format_table(table).splitlines()
    assert header.split()[-1] == "out-of-range" and row.split()[:4] == ["quality", "8", "6", "1"]
    assert row.split()[-1] == "1"


def test_eval_command_prints_both_readings(tmp_path, capsys):
    path = _write_predictions(tmp_path / "generated_predictions.jsonl")
    assert main(["eval", str(path)]) == 0
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert len(table) == 2 and table[1].split()[:4] == ["quality", "8", "6", "1"]
    assert float(table[1].split()[8]) == pytest.approx(REALQA_RMSE, abs=5e-5)
    plcc = stats.pearsonr(OFFICIAL_PRED, OFFICIAL_LABEL)[0]
    assert f"official reading: 6 of 8 rows kept, PLCC {plcc:.4f}, SRCC {OFFICIAL_SRCC:.4f}" in captured.err
    assert "authors' eval script" in captured.err


# ---------------------------------------------------------------- --labels: by order, by image


def test_llamafactory_rows_match_a_conversation_file_by_order(tmp_path, capsys):
    labels = _write_conversations(tmp_path / "koniq10k_test.json", [label for _, label in ROWS])
    path = _write_predictions(tmp_path / "generated_predictions.jsonl")
    table = evaluate_predictions(read_predictions(path), read_labels(labels), str(path))
    assert table[0].metrics["rmse"] == pytest.approx(REALQA_RMSE)
    assert table[0].official.n_kept == 6  # the CoT label still fails the script's reading
    assert main(["eval", str(path), "--labels", str(labels)]) == 0
    assert "official reading: 6 of 8 rows kept" in capsys.readouterr().err


def test_order_matching_refuses_other_counts_and_other_labels(tmp_path, capsys):
    path = _write_predictions(tmp_path / "generated_predictions.jsonl")
    short = _write_conversations(tmp_path / "short.json", [label for _, label in ROWS[:7]])
    assert main(["eval", str(path), "--labels", str(short)]) == 2
    err = capsys.readouterr().err
    assert "has 8 rows" in err and "short.json has 7 records" in err
    shifted = _write_conversations(tmp_path / "shifted.json", [label for _, label in ROWS[1:] + ROWS[:1]])
    assert main(["eval", str(path), "--labels", str(shifted)]) == 2
    assert "row 1's label 3.5 is not record 1's 2" in capsys.readouterr().err
    table = tmp_path / "labels.csv"
    table.write_text("image,mos\n0.jpg,3.5\n")
    assert main(["eval", str(path), "--labels", str(table)]) == 2
    assert "LLaMA-Factory rows name no image" in capsys.readouterr().err


def _our_rows(path: Path, rows) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "task", "score", "ncm", "status", "text", "error"])
        for image, score, status, text in rows:
            writer.writerow([image, "quality", score, score, status, text, "error!" if status == "error" else ""])
    return path


def test_our_rows_match_a_conversation_file_by_image(tmp_path, capsys):
    answers = [SAID.format(v) for v in ("3.50", "2.00", "4.00", "4.60", "3.00", "1.10")]
    labels = _write_conversations(tmp_path / "lf" / "test.json", answers)
    folder = tmp_path / "lf"
    rows = [
        (str(folder / "img" / "0.jpg"), "3.47", "ok", "3.47."),  # the resolved image path
        ("img/1.jpg", "2.10", "ok", "2.10."),  # as the file writes it
        ("/elsewhere/2.jpg", "9.10", "out_of_range", "9.10."),  # by file name; outside 1-5
        (str(folder / "sub" / ".." / "img" / "3.jpg"), "4.80", "ok", "Sharp <4.40>, or <4.80>"),  # same file
        ("/elsewhere/4.jpg", "", "error", ""),
        ("/elsewhere/5.jpg", "1.20", "ok", "1.20."),
    ]
    results = _our_rows(tmp_path / "scores.csv", rows)
    table = evaluate_predictions(read_predictions(results), read_labels(labels), str(results))
    m = table[0].metrics
    assert (m["n_total"], m["n_evaluated"], m["n_failed"], m["n_out_of_range"]) == (6, 4, 1, 1)
    assert m["rmse"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.1 ** 2 + 0.2 ** 2 + 0.1 ** 2) / 4))
    official = table[0].official
    assert (official.n_rows, official.n_kept) == (6, 5)  # the error row has no text; 9.10 is kept (no range check)
    assert official.plcc == pytest.approx(stats.pearsonr([3.47, 2.10, 9.10, 4.40, 1.20], [3.5, 2.0, 4.0, 4.6, 1.1])[0])
    assert main(["eval", str(results), "--labels", str(labels)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[1].split()[:4] == ["quality", "6", "4", "1"]
    assert out.out.splitlines()[1].split()[-1] == "1"
    assert "official reading: 5 of 6 rows kept" in out.err


def test_a_file_name_two_images_share_matches_neither_and_says_so(tmp_path):
    labels = _write_conversations(
        tmp_path / "t.json", [SAID.format("3.00"), SAID.format("4.00")], ["a/x.jpg", "b/x.jpg"]
    )
    read = read_labels(labels)
    assert read.lookup("b/x.jpg") == str(tmp_path / "b" / "x.jpg")
    with pytest.raises(ValueError, match=r"'/other/x.jpg' fits 2 labelled images equally well .*a/x.jpg.*b/x.jpg"):
        read.lookup("/other/x.jpg")


def test_the_task_picks_the_labels_of_a_two_task_file(tmp_path):
    aesthetic = "The aesthetic score of this image is {}."
    labels = _write_conversations(
        tmp_path / "t.json", [SAID.format("3.00"), aesthetic.format("7.00")], ["x.jpg", "x.jpg"],
        question="<image>Rate this image.")
    assert read_labels(labels, task="aesthetics").scores == {str(tmp_path / "x.jpg"): 7.0}
    assert read_labels(labels, task="quality").attributes == {str(tmp_path / "x.jpg"): {"aesthetics": 7.0}}
    assert read_labels(labels, task="clarity").scores == {}
    with pytest.raises(ValueError, match="holds quality, aesthetics scores, not 'clarity'"):
        evaluate_predictions([Prediction(ScoreResult("x.jpg", "quality", 3.0, None, "ok", ""))],
                             read_labels(labels, task="clarity"))


# ---------------------------------------------------------------- --labels: tables of every format


def _write_table(path: Path, rows: list[dict]) -> Path:
    """``rows`` as the file type its suffix names."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_a_labels_table_reads_alike_in_every_format(tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    rows = [{"image": "a.jpg", "mos": 3.5, "exposure": "dark"}, {"image": "b.jpg", "mos": 2.0, "exposure": ""}]
    labels = read_labels(_write_table(tmp_path / f"labels{suffix}", rows))
    assert labels.scores == {"a.jpg": 3.5, "b.jpg": 2.0}
    assert labels.attributes == {"a.jpg": {"exposure": "dark"}, "b.jpg": {}}
    assert read_labels(tmp_path / f"labels{suffix}", "mos").scores == labels.scores


def test_a_labels_table_with_a_bad_row_is_refused_naming_it(tmp_path):
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffimage,mos\na.jpg,3\n".encode())  # saved by a spreadsheet program
    assert read_labels(bom).scores == {"a.jpg": 3.0}
    bad = {  # file: (content, the error it must give)
        "short.csv": ("image,mos\na.jpg,3\nb.jpg\nc.jpg,1\n", r"short.csv: line 3: row has 1 fields; the header has 2"),
        "word.csv": ("image,mos\na.jpg,3\nb.jpg,good\n", r"word.csv: line 3: column 'mos': 'good' is not a number"),
        "broken.jsonl": ('{"image": "a.jpg", "mos": 3}\n{"image": "b.jpg", "mos"\n', r"broken.jsonl: line 2: invalid JSON"),
        "other.csv": ("name,value\na.jpg,3\n", r"need an image column .* found name, value"),
    }
    for name, (content, error) in bad.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(ValueError, match=error):
            read_labels(tmp_path / name)


# ---------------------------------------------------------------- our own rows and attributes


def test_our_out_of_range_rows_are_counted_apart_for_score_and_ncm(tmp_path):
    rows = [("a.jpg", "3.00", "ok", "3.00."), ("b.jpg", "7.00", "out_of_range", "7.00."),
            ("c.jpg", "", "no_score", "hm"), ("d.jpg", "2.00", "ok", "2.00."), ("e.jpg", "1.00", "ok", "1.00.")]
    results = _our_rows(tmp_path / "s.csv", rows)
    labels = tmp_path / "labels.csv"
    labels.write_text("image,mos\na.jpg,3\nb.jpg,4\nc.jpg,2\nd.jpg,2\ne.jpg,1.5\n")
    for field in ("score", "ncm"):
        m = evaluate_predictions(read_predictions(results, field=field), read_labels(labels))[0].metrics
        assert (m["n_total"], m["n_evaluated"], m["n_failed"], m["n_out_of_range"]) == (5, 3, 1, 1)
        assert m["rmse"] == pytest.approx(math.sqrt(0.25 / 3))


def test_an_attribute_out_of_range_is_counted_apart():
    predictions = [Prediction(ScoreResult(f"{i}.jpg", "quality", 3.0 + i / 10, None, "ok", "",
                                          attributes={"noise": {"value": value, "status": status, "text": ""}}),
                              text_kept=False)
                   for i, (value, status) in enumerate([(2.0, "ok"), (None, "out_of_range"), (None, "no_score"),
                                                        (4.0, "ok"), (1.0, "ok")])]
    labels = read_labels_from({f"{i}.jpg": (3.0 + i / 10, 1.0 + i) for i in range(5)})
    score, noise = evaluate_predictions(predictions, labels)
    assert noise.target == "noise"
    assert (noise.metrics["n_evaluated"], noise.metrics["n_failed"], noise.metrics["n_out_of_range"]) == (3, 1, 1)
    assert score.official is None  # no answer texts: nothing for the official reading to read


def read_labels_from(values: dict):
    from realqa.evaluation import Labels

    return Labels({k: v for k, (v, _) in values.items()}, {k: {"noise": n} for k, (_, n) in values.items()})
