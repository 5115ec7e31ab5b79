"""Result files: one row schema, one reader (CSV, JSONL, Parquet), and Parquet's journal."""

from __future__ import annotations

import json
import sys

import pytest

from realqa.evaluation import read_predictions
from realqa.results import (
    ResultWriter,
    ResumableOutput,
    ScoreResult,
    journal_path,
    read_complete_rows,
    read_results,
    write_rows,
)

pytest.importorskip("pyarrow")  # the 'parquet' extra

SETTINGS = {"model": "m", "task": "quality"}
ROWS = [
    ScoreResult("a.png", "quality", 3.1, 3.0, "ok", "3.10.", ncm_std=0.21,
                attributes={"exposure": {"value": "dark", "status": "ok", "text": "dark."},
                            "noise": {"value": 2.5, "status": "ok", "text": "2.5"}}),
    ScoreResult.failed("=b.png", "quality", "=b.png: file not found"),
    ScoreResult("c.png", "quality", None, None, "no_score", "multi\nline, \"quoted\"",
                attributes={"exposure": {"value": None, "status": "missing", "text": ""}}),
    ScoreResult("d.png", "quality", 7.0, 6.93, "out_of_range", "7.00.", ncm_std=0.4,
                attributes={"noise": {"value": 9.0, "status": "out_of_range", "text": "9"}}),
]


def _without_texts(result: ScoreResult) -> ScoreResult:
    """What CSV keeps of a result: an attribute's text is not a column."""
    if result.attributes is None:
        return result
    return result.with_attributes({name: {**entry, "text": ""} for name, entry in result.attributes.items()})


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_reads_back_the_results_written(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    with ResultWriter(path, attributes=["exposure", "noise"]) as writer:
        for result in ROWS:
            writer.write(result)
    stored = read_results(path)
    want = [_without_texts(r) for r in ROWS] if suffix == ".csv" else ROWS
    assert stored.results == want
    assert stored.others == [{}] * len(ROWS)
    assert [p.key for p in read_predictions(path)] == [r.path for r in ROWS]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no journal or temporary file left


def test_parquet_attributes_are_nested_and_typed(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "r.parquet"
    write_rows(ROWS, path)
    schema = pq.read_schema(path)
    assert schema.names == ["path", "task", "score", "ncm", "ncm_std", "status", "text", "error", "attributes"]
    assert str(schema.field("score").type) == "double"
    attributes = schema.field("attributes").type
    assert str(attributes.field("noise").type.field("value").type) == "double"
    assert str(attributes.field("exposure").type.field("value").type) == "string"
    # A categorical task's scores are words: the column is text.
    words = [ScoreResult("a.png", "exposure", "dark", None, "ok", "dark."), ScoreResult.failed("b.png", "exposure", "x")]
    write_rows(words, tmp_path / "w.parquet")
    assert str(pq.read_schema(tmp_path / "w.parquet").field("score").type) == "string"
    assert read_results(tmp_path / "w.parquet").results == words
    assert "attributes" not in pq.read_schema(tmp_path / "w.parquet").names


def test_files_written_before_ncm_std_still_read(tmp_path):
    old_csv = tmp_path / "old.csv"
    old_csv.write_text("path,task,score,ncm,status,text,error\na.jpg,quality,3.47,3.4512,ok,3.47.,\n", encoding="utf-8")
    old_jsonl = tmp_path / "old.jsonl"
    old_jsonl.write_text(json.dumps({"path": "a.jpg", "task": "quality", "score": 3.47, "ncm": 3.4512, "status": "ok",
                                     "text": "3.47.", "error": None}) + "\n", encoding="utf-8")
    want = [ScoreResult("a.jpg", "quality", 3.47, 3.4512, "ok", "3.47.")]
    assert read_results(old_csv).results == want and read_results(old_jsonl).results == want


def test_bench_prediction_files_read_with_their_label(tmp_path):
    path = tmp_path / "koniq10k.predictions.csv"
    path.write_text("id,image,label,label_native,score,score_native,ncm,status,text,error\n"
                    "7,a.jpg,3.5,62.5,3.47,61.75,3.45,ok,3.47.,\n", encoding="utf-8")
    stored = read_results(path)
    assert stored.results == [ScoreResult("a.jpg", "", 3.47, 3.45, "ok", "3.47.")]
    assert stored.others == [{"id": "7", "label": "3.5", "label_native": "62.5", "score_native": "61.75"}]
    (prediction,) = read_predictions(path)
    assert (prediction.key, prediction.pred, prediction.label) == ("a.jpg", 3.47, 3.5)


def test_a_file_that_is_not_results_is_named(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("name,mos\na.jpg,3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"labels.csv: not a realqa results file: it needs a 'path' \(or 'image'\) and a "
                                         r"'score' column; it has name, mos"):
        read_results(path)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"path": "a.jpg", "score": 3.0, "ncm": "many"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl: row 1: ncm 'many' is not a number"):
        read_results(bad)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_last_row_is_an_error_unless_resuming(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    write_rows(ROWS[:2], path)
    whole = path.read_bytes()
    with ResultWriter(path, ["exposure", "noise"], append=True) as writer:
        writer.write(ROWS[2])
    torn = path.read_bytes()[: len(whole) + 9]
    path.write_bytes(torn)
    with pytest.raises(ValueError, match=r"is incomplete: a run was killed while writing it, or is still writing"):
        read_results(path)
    with pytest.raises(ValueError, match="is incomplete"):
        read_predictions(path)
    assert [r.path for r in read_results(path, complete_only=True).results] == ["a.png", "=b.png"]
    assert path.read_bytes() == torn  # reading alone changes nothing
    assert [r.path for r in read_results(path, complete_only=True, repair=True).results] == ["a.png", "=b.png"]
    assert path.read_bytes() == whole


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_hand_written_file_may_lack_its_last_line_end(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    write_rows(ROWS[:2], path)
    path.write_bytes(path.read_bytes().rstrip(b"\r\n"))
    assert [r.path for r in read_results(path).results] == ["a.png", "=b.png"]


# ---------------------------------------------------------------- Parquet: the journal


def test_parquet_rows_stream_to_a_journal_until_the_writer_closes(tmp_path):
    path = tmp_path / "r.parquet"
    writer = ResultWriter(path)
    writer.write(ROWS[0])
    writer.write(ROWS[1])
    assert not path.exists() and journal_path(path).name == "r.parquet.rows.jsonl"
    assert [r.path for r in read_results(path).results] == ["a.png", "=b.png"]  # the journal is read meanwhile
    writer.close()
    assert not journal_path(path).exists()
    assert read_results(path).results == ROWS[:2]


def test_a_killed_parquet_run_resumes_from_its_journal(tmp_path):
    path = tmp_path / "r.parquet"
    output = ResumableOutput(path, SETTINGS)
    writer = output.writer(["exposure", "noise"])
    for result in ROWS[:3]:
        writer.write(result)
    writer._file.close()  # killed: the file never closed properly, so no Parquet file was written
    journal = journal_path(path)
    journal.write_bytes(journal.read_bytes()[:-5])  # and the last row torn
    again = ResumableOutput(path, SETTINGS)
    again.check()
    inputs = [r.path for r in ROWS]
    assert again.completed(inputs) == ROWS[:2]
    with again.writer(["exposure", "noise"]) as writer:
        for result in ROWS[2:]:
            writer.write(result)
    assert read_results(path).results == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.parquet", "r.parquet.run.json"]


def test_killed_between_writing_the_parquet_file_and_removing_the_journal(tmp_path):
    path = tmp_path / "r.parquet"
    output = ResumableOutput(path, SETTINGS)
    writer = output.writer()
    writer.write(ROWS[0])
    writer._file.flush()
    kept = journal_path(path).read_bytes()
    writer.close()
    journal_path(path).write_bytes(kept)  # as if the process died right after os.replace
    inputs = [r.path for r in ROWS]
    assert [r.path for r in ResumableOutput(path, SETTINGS).completed(inputs)] == ["a.png"]  # not doubled
    with ResumableOutput(path, SETTINGS).writer() as writer:
        writer.write(ROWS[1])
    assert [r.path for r in read_results(path).results] == ["a.png", "=b.png"]


def test_appending_to_a_finished_parquet_file_keeps_its_rows(tmp_path):
    path = tmp_path / "r.parquet"
    output = ResumableOutput(path, SETTINGS)
    with output.writer() as writer:
        writer.write(ROWS[0])
    assert path.is_file() and not journal_path(path).exists()
    inputs = [r.path for r in ROWS]
    again = ResumableOutput(path, SETTINGS)
    again.check()
    assert [r.path for r in again.completed(inputs)] == ["a.png"]
    writer = again.writer()
    assert [r["path"] for r in read_complete_rows(path)] == ["a.png"]  # the journal holds the finished rows
    writer.write(ROWS[1])
    writer.close()
    assert read_results(path).results == ROWS[:2]  # attributes too, through the copy


def test_parquet_overwrite_and_refusals(tmp_path):
    path = tmp_path / "r.parquet"
    output = ResumableOutput(path, SETTINGS)
    output.begin()
    assert journal_path(path).is_file() and not path.exists()  # an empty run: an empty journal
    assert output.completed(["a.png"]) == []
    with pytest.raises(ValueError, match=r"other settings \(task: 'quality' then, 'aesthetics' now\)"):
        ResumableOutput(path, {**SETTINGS, "task": "aesthetics"}).check()
    (tmp_path / "r.parquet.tmp").write_bytes(b"PAR1")  # what a kill while writing the file leaves
    output.remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    foreign = tmp_path / "foreign.parquet"
    write_rows(ROWS[:1], foreign)
    with pytest.raises(ValueError, match="cannot be resumed; pass --overwrite"):
        ResumableOutput(foreign, SETTINGS).check()
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ValueError, match="broken.parquet: cannot read it as Parquet"):
        read_results(tmp_path / "broken.parquet")


def test_without_pyarrow_a_parquet_output_is_refused_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # as if it were not installed
    with pytest.raises(ValueError, match=r"r.parquet: a .parquet results file needs the 'parquet' extra: "
                                         r"pip install 'realqa\[parquet\]'"):
        ResumableOutput(tmp_path / "r.parquet", SETTINGS)
    assert list(tmp_path.iterdir()) == []


def test_a_parquet_run_from_the_command_line_resumes(tiny_model_dir, tmp_path, capsys):
    from realqa.cli import main
    from test_resume import write_images

    images = write_images(tmp_path / "im", 4)
    out = tmp_path / "s.parquet"
    base = ["score", *images[:3], "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(base) == 0
    first = read_results(out).results
    assert [r.path for r in first] == images[:3]
    assert main(["score", *images, "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]) == 0
    assert "3 of 5 inputs were already scored" in capsys.readouterr().err
    rows = read_results(out).results
    assert rows[:3] == first and [r.path for r in rows] == images
    assert sum(r.status == "error" for r in rows) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["im", "s.parquet", "s.parquet.lock", "s.parquet.run.json"]
    # Killed after the last row, before the Parquet file was written: the rerun scores nothing and writes it.
    journal_path(out).write_text("".join(json.dumps(r.to_row()) + "\n" for r in rows), encoding="utf-8")
    out.unlink()
    assert main(["score", *images, "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]) == 0
    assert "5 of 5 inputs were already scored" in capsys.readouterr().err
    assert read_results(out).results == rows and not journal_path(out).exists()
    copy = tmp_path / "copy.jsonl"
    assert main(["score", *images, "--model", str(tiny_model_dir), "--out", str(copy), "--quiet"]) == 0
    assert _close(read_results(copy).results, rows)


def _close(got: list[ScoreResult], want: list[ScoreResult]) -> bool:
    """Equal rows, NCM to float rounding (separate runs, other batches)."""
    for a, b in zip(got, want, strict=True):
        if (a.path, a.task, a.score, a.status, a.text, a.error) != (b.path, b.task, b.score, b.status, b.text, b.error):
            return False
        if (a.ncm is None) != (b.ncm is None) or (a.ncm is not None and abs(a.ncm - b.ncm) > 1e-5):
            return False
    return True
