"""Output files under careless or hostile use: nothing lost, nothing mixed, nothing skipped in silence."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SMALL_PIXELS
from realqa.cli import main as cli
from realqa.evaluation import read_predictions
from realqa.model import build_tiny_model
from realqa.results import ResumableOutput, read_complete_rows

PIXELS = ["--min-pixels", str(SMALL_PIXELS["min_pixels"]), "--max-pixels", str(SMALL_PIXELS["max_pixels"])]


def _photos(folder: Path, names=("a.jpg", "b.jpg", "c.jpg")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(np.full((60, 80, 3), 40 * i + 20, np.uint8)).save(folder / name)
    return folder


def _score(model: Path, *args) -> int:
    return cli(["score", *map(str, args), "--model", str(model), "--device", "cpu", "--quiet", *PIXELS])


def test_a_second_run_on_the_same_output_is_refused_at_once(tiny_model_dir, tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "s.csv"
    with ResumableOutput(out, {}).lock():  # another run is writing
        assert _score(tiny_model_dir, photos, "--out", out) == 2
    assert "is being written by another realqa run" in capsys.readouterr().err
    assert not out.exists()
    assert _score(tiny_model_dir, photos, "--out", out) == 0  # once it is done, the file is free
    assert len(read_complete_rows(out)) == 3


def test_a_killed_run_does_not_leave_the_output_locked(tiny_model_dir, tmp_path):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "s.csv"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from realqa.results import ResumableOutput\n"
                               f"with ResumableOutput({str(out)!r}, {{}}).lock():\n"
                               "    print('locked', flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    assert _score(tiny_model_dir, photos, "--out", out) == 2
    holder.kill()  # kill -9
    holder.wait()
    assert _score(tiny_model_dir, photos, "--out", out) == 0
    assert [Path(r["path"]).name for r in read_complete_rows(out)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_resume_with_other_weights_in_the_same_folder_is_refused_naming_the_file(tiny_model_dir, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    photos, out = _photos(tmp_path / "photos"), tmp_path / "s.jsonl"
    assert _score(model, photos / "a.jpg", "--out", out) == 0
    other = build_tiny_model(tmp_path / "retrained", seed=7)  # "retrained into the same folder"
    shutil.copy(other / "model.safetensors", model / "model.safetensors")
    capsys.readouterr()
    assert _score(model, photos / "a.jpg", photos / "b.jpg", "--out", out) == 2
    err = capsys.readouterr().err
    assert "model_files: model.safetensors changed" in err
    assert len(read_complete_rows(out)) == 1  # nothing appended from the other weights


def test_a_folder_scan_gives_every_file_a_row(tiny_model_dir, tmp_path):
    folder = _photos(tmp_path / "mixed", ("a.jpg",))
    Image.new("RGB", (80, 60), (10, 200, 30)).save(folder / "b.avif")
    (folder / "c.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    (folder / "d.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg' width='8' height='8'/>")
    (folder / "clip.mp4").write_bytes(b"not really a video")
    out = tmp_path / "s.csv"
    assert _score(tiny_model_dir, folder, "--out", out) == 0
    rows = {Path(r["path"]).name: r for r in read_complete_rows(out)}
    assert sorted(rows) == ["a.jpg", "b.avif", "c.HEIC", "clip.mp4", "d.svg"]
    assert rows["a.jpg"]["status"] != "error" and rows["b.avif"]["status"] != "error"
    assert "pip install pillow-heif" in rows["c.HEIC"]["error"]
    assert "SVG is a vector format" in rows["d.svg"]["error"]
    assert rows["clip.mp4"]["status"] == "error" and "clip.mp4" in rows["clip.mp4"]["error"]


# The tiny model's card: quality at 2 decimals, no chain-of-thought form (it was not trained to reason).
@pytest.mark.parametrize("bad, problem", [(["--decimals", "7"], "decimals"), (["--task", "nosuch"], "unknown task"),
                                          (["--frames", "0"], "frames"), (["--min-pixels", "0"], "min"),
                                          (["--decimals", "1"], "answers quality with 2 decimals"),
                                          (["--cot"], "names no chain-of-thought form")],
                         ids=["decimals", "task", "frames", "min-pixels", "other-precision", "cot-untrained"])
def test_a_refused_run_creates_no_file(tiny_model_dir, tmp_path, capsys, bad, problem):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "s.csv"
    assert cli(["score", str(photos), "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(out),
                "--quiet", *bad]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and problem in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # no --out, run file or lock left behind
    assert _score(tiny_model_dir, photos, "--out", out) == 0  # the corrected command needs no --overwrite


def test_naming_the_cards_own_decimals_resumes_the_same_run(tiny_model_dir, tmp_path):
    photos, out = _photos(tmp_path / "photos"), tmp_path / "s.csv"
    assert _score(tiny_model_dir, photos, "--out", out) == 0
    written = out.read_bytes()
    assert _score(tiny_model_dir, photos, "--out", out, "--decimals", "2") == 0  # the tiny card's precision
    assert out.read_bytes() == written


def test_a_run_where_every_input_failed_exits_1_with_its_rows(tiny_model_dir, tmp_path, capsys):
    """A mistyped folder or a folder of unreadable files: the rows say why, the exit status says it to a script."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_bytes(b"")
    (broken / "b.png").write_text("not an image")
    out = tmp_path / "s.csv"
    assert _score(tiny_model_dir, tmp_path / "typo", broken, "--out", out) == 1
    rows = read_complete_rows(out)
    assert [r["status"] for r in rows] == ["error"] * 3 and "file not found" in rows[0]["error"]
    assert "0 scored" in capsys.readouterr().err
    assert _score(tiny_model_dir, _photos(tmp_path / "photos"), broken, "--out", tmp_path / "t.csv") == 0


def test_an_existing_folder_as_output_is_named_as_a_folder(tiny_model_dir, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "results.csv").mkdir()
    assert _score(tiny_model_dir, photos, "--out", tmp_path / "results.csv") == 2
    err = capsys.readouterr().err
    assert "is a folder" in err and "--overwrite" not in err


def test_csv_cells_that_spreadsheets_would_run_are_neutralised_and_read_back(tiny_model_dir, tmp_path, monkeypatch):
    names = ["+1.jpg", "=HYPERLINK(x).jpg", "@sum.jpg", "plain.jpg"]
    monkeypatch.chdir(_photos(tmp_path / "photos", names))
    out = tmp_path / "s.csv"
    assert _score(tiny_model_dir, *names, "--out", out) == 0
    with open(out, newline="", encoding="utf-8") as handle:
        cells = [row[0] for row in csv.reader(handle)][1:]
    assert cells == ["'+1.jpg", "'=HYPERLINK(x).jpg", "'@sum.jpg", "plain.jpg"]  # a spreadsheet shows text
    assert [r["path"] for r in read_complete_rows(out)] == names  # our readers take the quote off
    assert [p.key for p in read_predictions(out)] == names
    before = out.read_text()
    assert _score(tiny_model_dir, *names, "--out", out) == 0  # the resume recognises every row: nothing redone
    assert out.read_text() == before


def test_run_settings_record_the_model_files(tiny_model_dir, tmp_path):
    photos, out = _photos(tmp_path / "photos", ("a.jpg",)), tmp_path / "s.csv"
    assert _score(tiny_model_dir, photos, "--out", out) == 0
    settings = json.loads(Path(str(out) + ".run.json").read_text())["settings"]
    assert set(settings["model_files"]) >= {"model.safetensors", "config.json", "realqa_card.json"}
    assert settings["adapter_files"] == {} and settings["card_files"] == {}
