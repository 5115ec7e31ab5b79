"""The HTML report: ranking, thumbnails, attributes, plots and metrics; rendered in headless Chromium."""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from realqa.cli.app import add_commands
from realqa.metrics import evaluate
from realqa.report import build_report
from realqa.results import ScoreResult, write_rows

pytest.importorskip("matplotlib")  # the 'report' extra: every report draws its plots

# Saturated colours that neither the page's text nor its plots use: the screenshot test finds the
# thumbnails by them.
COLORS = {"magenta.png": (255, 0, 255), "yellow.png": (255, 255, 0), "cyan.png": (0, 255, 255)}
SCORES = {"magenta.png": 4.5, "yellow.png": 3.0, "cyan.png": 1.5}
LABELS = {"magenta.png": 4.0, "yellow.png": 3.5, "cyan.png": 1.0}


@pytest.fixture
def scores_csv(tmp_path):
    """A scores file as `realqa score` writes it (worst image first), with labels, an unscored row
    and an error row; the images beside it."""
    for name, color in COLORS.items():
        Image.new("RGB", (120, 90), color).save(tmp_path / name)
    rows = [{"path": name, "task": "quality", "score": SCORES[name], "ncm": SCORES[name] + 0.01, "status": "ok",
             "text": f"{SCORES[name]:.2f}.", "error": "", "label": LABELS[name]} for name in reversed(list(COLORS))]
    rows.append({"path": "<odd>.png", "task": "quality", "score": "", "ncm": "", "status": "no_score",
                 "text": "blurry", "error": "", "label": 2.0})
    rows.append({"path": "gone.jpg", "task": "quality", "score": "", "ncm": "", "status": "error", "text": "",
                 "error": "gone.jpg: file not found", "label": 3.0})
    path = tmp_path / "scores.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def ranking_names(page: str) -> list[str]:
    return re.findall(r'<td class="name">(.*?)</td>', page)


def test_page_ranks_by_score_and_is_self_contained(scores_csv, tmp_path):
    files = build_report(scores_csv, tmp_path / "out" / "report.html", image_root=tmp_path)
    page = files.html.read_text(encoding="utf-8")
    assert ranking_names(page) == ["magenta.png", "yellow.png", "cyan.png", "&lt;odd&gt;.png", "gone.jpg"]
    assert page.count('src="data:image/jpeg;base64,') == 3 and "image not found" in page
    assert "gone.jpg: file not found" in page and "blurry" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing loaded from elsewhere
    for png in (files.histogram, files.scatter):
        assert png.read_bytes().startswith(b"\x89PNG") and Image.open(png).size[0] > 300
    expected = evaluate([4.5, 3.0, 1.5, None, None], [4.0, 3.5, 1.0, 2.0, 3.0])
    assert files.evaluation.srcc == pytest.approx(expected.srcc) and files.evaluation.n_failed == 2
    assert f"{expected.plcc:.4f}" in page and "labelled rows evaluated" in page


def test_without_labels_there_is_no_scatter(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"path": f"{i}.png", "score": s, "status": "ok"}) + "\n"
                            for i, s in enumerate([2.0, 3.5])), encoding="utf-8")
    files = build_report(path, tmp_path / "r.html")
    assert files.scatter is None and files.evaluation is None and not (tmp_path / "r.scatter.png").exists()
    assert ranking_names(files.html.read_text(encoding="utf-8")) == ["1.png", "0.png"]


def test_a_video_row_shows_its_middle_frame(tmp_path):
    from test_video import write_video

    write_video(tmp_path / "clip.mp4", level=lambda i: 200)
    (tmp_path / "s.csv").write_text("path,score,status\nclip.mp4,3.2,ok\n", encoding="utf-8")
    page = build_report(tmp_path / "s.csv", tmp_path / "r.html").html.read_text(encoding="utf-8")
    uri = re.search(r'src="data:image/jpeg;base64,([^"]+)"', page).group(1)
    thumb = Image.open(io.BytesIO(base64.b64decode(uri)))
    assert thumb.size == (64, 48) and abs(np.asarray(thumb).mean() - 200) < 5


def test_a_sample_inside_a_shard_or_table_shows_its_image(tmp_path):
    import tarfile

    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    def jpeg(level):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 30), (level, level, level)).save(buffer, "JPEG", quality=95)
        return buffer.getvalue()

    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        info = tarfile.TarInfo("k1.jpg")
        info.size = len(data := jpeg(60))
        tar.addfile(info, io.BytesIO(data))
    pq.write_table(pa.table({"jpg": [jpeg(10), jpeg(220)]}), tmp_path / "t.parquet")
    (tmp_path / "s.csv").write_text("path,score,status\nshard.tar#k1,3.0,ok\nt.parquet#1,2.0,ok\nt.parquet#5,1.0,ok\n",
                                    encoding="utf-8")
    page = build_report(tmp_path / "s.csv", tmp_path / "r.html").html.read_text(encoding="utf-8")
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    levels = [round(float(np.asarray(Image.open(io.BytesIO(base64.b64decode(u)))).mean())) for u in uris]
    assert len(levels) == 2 and abs(levels[0] - 60) < 4 and abs(levels[1] - 220) < 4  # ranked: shard, then row 1
    assert "no preview" in page  # row 5 of a 2-row table: no thumbnail, and the page says why


def test_attributes_are_columns_nested_or_flat(tmp_path):
    nested = {"path": "a.png", "score": 3.1, "status": "ok",
              "attributes": {"clarity": {"value": "good", "status": "ok", "text": "good"},
                             "exposure": {"value": None, "status": "no_value", "text": "??"}}}
    (tmp_path / "n.jsonl").write_text(json.dumps(nested) + "\n", encoding="utf-8")
    (tmp_path / "f.csv").write_text(
        "path,score,status,clarity,clarity_status\nb.png,2.5,ok,poor,ok\n", encoding="utf-8"
    )
    nested_page = build_report(tmp_path / "n.jsonl", tmp_path / "n.html").html.read_text(encoding="utf-8")
    flat_page = build_report(tmp_path / "f.csv", tmp_path / "f.html").html.read_text(encoding="utf-8")
    assert "<th>clarity</th><th>exposure</th>" in nested_page and "<td>good</td>" in nested_page
    assert "<td>(no_value)</td>" in nested_page
    assert "<th>clarity</th><th>status</th>" in flat_page and "<td>poor</td>" in flat_page


def test_ncm_std_is_a_column_when_the_file_has_one(tmp_path):
    pytest.importorskip("pyarrow")
    rows = [ScoreResult("a.png", "quality", 3.1, 3.05, "ok", "3.10.", ncm_std=0.123),
            ScoreResult("b.png", "quality", 2.0, 2.1, "ok", "2.00.", ncm_std=0.456)]
    write_rows(rows, tmp_path / "s.parquet")
    page = build_report(tmp_path / "s.parquet", tmp_path / "r.html").html.read_text(encoding="utf-8")
    assert "<th>NCM</th><th>NCM std</th>" in page
    assert '<td class="num">3.050</td><td class="num">0.123</td>' in page
    assert ranking_names(page) == ["a.png", "b.png"]
    (tmp_path / "old.csv").write_text("path,task,score,ncm,status,text,error\na.png,quality,3.1,3.05,ok,3.10.,\n",
                                      encoding="utf-8")  # written before ncm_std existed
    page = build_report(tmp_path / "old.csv", tmp_path / "old.html").html.read_text(encoding="utf-8")
    assert "NCM std" not in page and ranking_names(page) == ["a.png"]


def test_bench_predictions_report_with_their_own_labels(tmp_path):
    path = tmp_path / "koniq10k.predictions.csv"
    path.write_text("id,image,label,label_native,score,score_native,ncm,status,text,error\n"
                    "0,a.jpg,3.5,62.5,3.47,61.75,3.45,ok,3.47.,\n1,b.jpg,2.0,25.0,2.10,27.5,2.12,ok,2.10.,\n"
                    "2,c.jpg,4.0,75.0,4.40,85.0,4.38,ok,4.40.,\n", encoding="utf-8")
    files = build_report(path, tmp_path / "r.html")
    assert files.evaluation is not None and files.evaluation.n_evaluated == 3
    assert files.evaluation.srcc == pytest.approx(1.0)
    assert ranking_names(files.html.read_text(encoding="utf-8")) == ["c.jpg", "a.jpg", "b.jpg"]


def test_report_command_with_a_labels_file(scores_csv, tmp_path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    (tmp_path / "mos.csv").write_text(
        "image,mos\n" + "".join(f"{n},{v}\n" for n, v in LABELS.items()), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    args = parser.parse_args(["report", str(scores_csv), "--out", "r.html", "--labels", "mos.csv"])
    assert args.run(args) == 0
    assert "SRCC 1.0000" in capsys.readouterr().out  # the labels file wins over the file's own column
    with pytest.raises(ValueError, match="must end in .html"):
        build_report(scores_csv, tmp_path / "r.pdf")


def test_report_labels_match_as_eval_matches_them(tmp_path):
    """A label key with its folder labels the row whose path ends with it; one label two rows would take
    (the same file name in two folders) is an error naming them, not one label counted twice."""
    from realqa.evaluation import read_labels
    from realqa.report import read_entries

    rows = [ScoreResult(f"/data/{folder}/x.jpg", "quality", score, score, "ok", f"{score}.")
            for folder, score in (("a", 2.0), ("b", 4.0))]
    write_rows(rows, tmp_path / "s.csv")
    (tmp_path / "by_folder.csv").write_text("image,mos\na/x.jpg,1.5\nb/x.jpg,4.5\n", encoding="utf-8")
    (tmp_path / "by_name.csv").write_text("image,mos\nx.jpg,3.0\n", encoding="utf-8")
    entries = read_entries(tmp_path / "s.csv", read_labels(tmp_path / "by_folder.csv"))
    assert [e.label for e in entries] == [1.5, 4.5]
    with pytest.raises(ValueError, match="2 predictions match the one label of 'x.jpg'"):
        read_entries(tmp_path / "s.csv", read_labels(tmp_path / "by_name.csv"))


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (apt-get install chromium)")
def test_chromium_shows_the_ranking(scores_csv, tmp_path):
    page = build_report(scores_csv, tmp_path / "report.html", image_root=tmp_path).html
    shot = tmp_path / "shot.png"
    subprocess.run([
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--force-device-scale-factor=1",
        "--window-size=1280,1400", f"--screenshot={shot}", page.as_uri(),
    ], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.std() > 20 and (pixels.sum(axis=2) < 600).mean() > 0.01  # not blank: text and plots drawn
    # Each thumbnail is a solid block of its colour; the ranking puts them top to bottom by score.
    rows = {}
    for name, color in COLORS.items():
        ys = np.nonzero((np.abs(pixels - color).max(axis=2) < 40).sum(axis=1) > 40)[0]
        assert ys.size > 40, f"{name}'s thumbnail is not on screen"
        rows[name] = ys.mean()
    assert sorted(rows, key=rows.get) == ["magenta.png", "yellow.png", "cyan.png"]
