"""Long runs are safe: rows are appended as they come, and a killed run resumes where it stopped."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from realqa.cli import main
from realqa.results import ResultWriter, ResumableOutput, ScoreResult, journal_path, read_complete_rows

SETTINGS = {"model": "m", "task": "quality"}


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _result(i: int, text: str = "3.47") -> ScoreResult:
    return ScoreResult(f"img{i}.jpg", "quality", 3.47, 3.4512, "ok", text)


def write_images(folder: Path, count: int) -> list[str]:
    """``count`` JPEGs of several sizes (different visual-token counts) and one that is not an image."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = [(96, 64), (64, 96), (128, 128), (200, 80), (56, 56)]
    paths = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        path = folder / f"im{i:03d}.jpg"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").save(path, quality=90)
        paths.append(str(path))
    bad = folder / f"im{count // 2:03d}_bad.jpg"
    bad.write_text("not an image\n")
    return sorted(paths + [str(bad)])


# ---------------------------------------------------------------- torn rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_torn_last_row_is_cut_off_and_appending_continues(tmp_path, suffix):
    out = tmp_path / f"s{suffix}"
    with ResultWriter(out) as writer:
        for i in range(3):
            writer.write(_result(i, text="multi\nline" if i == 1 else "3.47"))
    whole = out.read_bytes()
    with ResultWriter(out, append=True) as writer:
        writer.write(_result(3, text="ends\nhere"))
    full = out.read_bytes()
    for cut in range(len(whole) + 1, len(full)):  # every way the 4th row can be torn
        out.write_bytes(full[:cut])
        rows = read_complete_rows(out, repair=True)
        assert [r["path"] for r in rows] == ["img0.jpg", "img1.jpg", "img2.jpg"], cut
        assert rows[1]["text"] == "multi\nline"
        assert out.read_bytes() == whole
    with ResultWriter(out, append=True) as writer:
        writer.write(_result(3, text="ends\nhere"))
    assert out.read_bytes() == full
    assert [r["path"] for r in _rows(out)] == [f"img{i}.jpg" for i in range(4)]


def test_a_csv_torn_inside_a_quoted_line_break_is_cut_off(tmp_path):
    out = tmp_path / "s.csv"
    with ResultWriter(out) as writer:
        writer.write(_result(0))
    whole = out.read_bytes()
    with ResultWriter(out, append=True) as writer:
        writer.write(_result(1, text="first\nsecond"))
    text = out.read_bytes()
    out.write_bytes(text[: text.index(b"first\n") + len(b"first\n")])  # ends on a line end inside quotes
    assert [r["path"] for r in read_complete_rows(out, repair=True)] == ["img0.jpg"]
    assert out.read_bytes() == whole


def test_a_damaged_row_before_the_last_is_refused(tmp_path):
    out = tmp_path / "s.jsonl"
    out.write_text('{"path": "a"}\nnot json\n{"path": "b"}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_complete_rows(out)


# ---------------------------------------------------------------- settings and inputs


def test_other_settings_changed_inputs_and_unknown_files_are_refused(tmp_path):
    out = tmp_path / "s.csv"
    output = ResumableOutput(out, SETTINGS)
    output.check()
    with output.writer() as writer:
        writer.write(_result(0))
    with pytest.raises(ValueError, match=r"other settings \(task: 'quality' then, 'aesthetics' now\)"):
        ResumableOutput(out, {**SETTINGS, "task": "aesthetics"}).check()
    again = ResumableOutput(out, SETTINGS)
    again.check()
    assert [r.path for r in again.completed(["img0.jpg", "img1.jpg"])] == ["img0.jpg"]
    with pytest.raises(ValueError, match="row 1 is 'img0.jpg' but input 1 is 'other.jpg'"):
        again.completed(["other.jpg"])
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("path,score\n")
    with pytest.raises(ValueError, match="cannot be resumed; pass --overwrite"):
        ResumableOutput(foreign, SETTINGS).check()


def test_cli_resume_refusal_and_overwrite(tiny_model_dir, tmp_path, capsys):
    images = write_images(tmp_path / "im", 4)
    out = tmp_path / "s.jsonl"
    base = ["score", *images[:3], "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]
    assert main(base) == 0
    first = _rows(out)
    assert main(["score", *images, "--model", str(tiny_model_dir), "--out", str(out), "--quiet"]) == 0
    assert "3 of 5 inputs were already scored" in capsys.readouterr().err
    rows = _rows(out)
    assert rows[:3] == first and [r["path"] for r in rows] == images
    assert main([*base, "--task", "aesthetics"]) == 2
    assert "other settings (task: 'quality' then, 'aesthetics' now)" in capsys.readouterr().err
    assert _rows(out) == rows  # refused: untouched
    assert main([*base, "--task", "aesthetics", "--overwrite"]) == 0
    assert [r["task"] for r in _rows(out)] == ["aesthetics"] * 3


# ---------------------------------------------------------------- kill -9 mid-run


@pytest.mark.slow  # a scoring process, killed and run again
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_kill_9_then_rerun_gives_every_input_once(tiny_model_dir, tmp_path, suffix):
    images = write_images(tmp_path / "images", 40)
    args = ["score", str(tmp_path / "images"), "--model", str(tiny_model_dir), "--batch-size", "2", "--quiet"]
    reference = tmp_path / f"reference{suffix}"
    assert main([*args, "--out", str(reference)]) == 0

    out = tmp_path / f"killed{suffix}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "realqa.cli", *args, "--out", str(out)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows_file = journal_path(out) if suffix == ".parquet" else out  # a Parquet file's rows stream to its journal
    deadline = time.monotonic() + 240
    killed_at = None
    while time.monotonic() < deadline and process.poll() is None:
        if rows_file.is_file() and rows_file.read_bytes().count(b"\n") >= 6:  # (CSV: header +) some rows
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed_at = len(read_complete_rows(out))
            break
        time.sleep(0.01)
    assert killed_at is not None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    assert 0 < killed_at < len(images)
    if suffix == ".parquet":
        assert not out.exists()  # killed before the end: no Parquet file yet, only the journal

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{killed_at} of {len(images)} inputs were already scored" in resumed.stderr
    got, want = _rows(out), _rows(reference)
    assert not journal_path(out).exists()
    assert [r["path"] for r in got] == images  # every input exactly once, in input order
    assert sum(r["status"] == "error" for r in got) == 1
    for a, b in zip(got, want):
        keys = ("path", "status", "text", "score", "error")
        assert [a[key] for key in keys] == [b[key] for key in keys]
        if b["ncm"]:
            assert float(a["ncm"]) == pytest.approx(float(b["ncm"]), abs=1e-5)


def test_frames_side_file_keeps_only_finished_clips(tmp_path):
    from realqa.video import FrameScore, FrameWriter, VideoScore

    def clip(path: str, n: int) -> VideoScore:
        frames = tuple(FrameScore(i, i * 0.5, 3.0, 3.0, "ok", "3.00") for i in range(n))
        return VideoScore(ScoreResult(path, "quality", 3.0, 3.0, "ok", "mean"), "frames", 2.0, frames)

    side = tmp_path / "s.frames.csv"
    with FrameWriter(side) as writer:
        for video in (clip("a.mp4", 2), clip("b.mp4", 3), clip("b.mp4", 3), clip("c.mp4", 2)):
            writer.write(video)
    # Killed after b.mp4's first row was written: its second occurrence and c.mp4 are scored again.
    with FrameWriter(side, keep=["a.mp4", "b.mp4"]) as writer:
        writer.write(clip("b.mp4", 3))
    with open(side, newline="") as f:
        videos = [row["video"] for row in csv.DictReader(f)]
    assert videos == ["a.mp4"] * 2 + ["b.mp4"] * 6
