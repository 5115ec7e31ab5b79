import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import write_bad_inputs, write_photos, write_unusual_inputs
from conftest import EXAMPLE_PHOTOS, ROOT, SHARED_DATA, SMALL_PIXELS
from realqa.cli import main

PIXEL_ARGS = ["--min-pixels", str(SMALL_PIXELS["min_pixels"]), "--max-pixels", str(SMALL_PIXELS["max_pixels"])]


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in path.read_text().splitlines()]


def _folder_with_bad_files(tmp_path: Path, photos) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in photos:
        (folder / Path(photo).name).write_bytes(Path(photo).read_bytes())
    write_bad_inputs(folder / "bad")
    write_unusual_inputs(folder / "odd")
    return folder


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_score_folder_writes_one_row_per_input_in_order(format_model_dir, tmp_path, capsys, suffix):
    folder = _folder_with_bad_files(tmp_path, EXAMPLE_PHOTOS)
    out = tmp_path / f"scores{suffix}"
    missing = str(tmp_path / "nowhere.jpg")
    code = main(
        ["score", str(folder), missing, "--model", str(format_model_dir), "--out", str(out), "--quiet", *PIXEL_ARGS]
    )
    assert code == 0
    rows = _rows(out)
    expected = [str(p) for p in sorted(folder.rglob("*")) if p.is_file()]
    assert sorted(r["path"] for r in rows[:-1]) == sorted(expected)
    assert rows[-1]["path"] == missing and "not found" in rows[-1]["error"]
    assert set(rows[0]) >= {"path", "score", "ncm", "text", "error", "status"}
    errors = [r for r in rows if r["status"] == "error"]
    assert len(errors) == 5  # four bad files and the missing one
    for row in errors:
        assert row["score"] in ("", None) and row["error"]
    scored = [r for r in rows if r["score"] not in ("", None)]
    assert len(scored) >= 6
    assert "scored" in capsys.readouterr().err


def test_score_prints_a_ranked_table(format_model_dir, tmp_path, capsys):
    code = main(["score", *map(str, EXAMPLE_PHOTOS), "--model", str(format_model_dir), *PIXEL_ARGS])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["rank", "score", "ncm", "+-", "path"]
    rows = [line.split() for line in lines[1:] if line.split()[0].isdigit()]
    ranked = [(float(row[1]), float(row[2])) for row in rows]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) >= 1  # by score, ties by NCM
    assert all(float(row[3]) > 0 for row in rows)  # every NCM comes with its spread


@pytest.mark.slow  # some 40 photographs
def test_score_real_photos_with_bad_files(tiny_model_dir, tmp_path):
    """The repository's example photographs, photographs made here, and the shared real ones when present."""
    made = tmp_path / "made"
    shared = sorted((SHARED_DATA / "photos").glob("*.jpg")) if (SHARED_DATA / "photos").is_dir() else []
    photos = [*EXAMPLE_PHOTOS, *(made / name for name in write_photos(made)), *shared]
    folder = _folder_with_bad_files(tmp_path, photos)
    out = tmp_path / "scores.csv"
    assert (
        main(["score", str(folder), "--model", str(tiny_model_dir), "--out", str(out), "--quiet", "--batch-size", "8"])
        == 0
    )
    rows = _rows(out)
    assert len(rows) == len(photos) + 4 + 6
    by_name = {Path(r["path"]).name: r for r in rows}
    assert all(by_name[p.name]["status"] != "error" for p in photos)
    assert sum(r["status"] == "error" for r in rows) == 4


def test_manifest_input_keeps_manifest_order(format_model_dir, tmp_path):
    manifest = tmp_path / "list.txt"
    order = [EXAMPLE_PHOTOS[2], EXAMPLE_PHOTOS[0], EXAMPLE_PHOTOS[1]]
    manifest.write_text("\n".join(map(str, order)) + "\n")
    out = tmp_path / "o.jsonl"
    assert (
        main(["score", str(manifest), "--model", str(format_model_dir), "--out", str(out), "--quiet", *PIXEL_ARGS]) == 0
    )
    assert [r["path"] for r in _rows(out)] == list(map(str, order))


def test_usage_errors_are_one_line_and_exit_2(format_model_dir, tmp_path, capsys):
    assert main(["score", str(EXAMPLE_PHOTOS[0]), "--model", str(format_model_dir), "--task", "nope", "--quiet"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert (
        main(["score", str(EXAMPLE_PHOTOS[0]), "--model", str(format_model_dir), "--out", str(tmp_path / "x.txt")]) == 2
    )
    assert "must end in .csv, .jsonl or .parquet" in capsys.readouterr().err


def test_a_mistyped_model_or_adapter_folder_is_named_as_missing(format_model_dir, tmp_path, capsys):
    """Not transformers' "Repo id must be in the form 'repo_name' ...": the path the user typed, and why."""
    for path in (tmp_path / "no-such-model", "./no-such-model"):
        assert main(["score", str(EXAMPLE_PHOTOS[0]), "--model", str(path), "--quiet"]) == 2
        assert f"model {path}: no such file or folder" in capsys.readouterr().err
    missing = tmp_path / "no-such-adapter"
    assert main(["score", str(EXAMPLE_PHOTOS[0]), "--model", str(format_model_dir), "--adapter", str(missing),
                 "--quiet"]) == 2
    assert f"adapter {missing}: no such file or folder" in capsys.readouterr().err


def test_default_model_is_the_bundled_demo_model(tmp_path, capsys):
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(EXAMPLE_PHOTOS[0]), "--quiet", "--out", str(out)]) == 0
    assert "bundled demo model" in capsys.readouterr().err
    row = json.loads(out.read_text().splitlines()[0])
    assert row["status"] == "ok" and 1.0 <= row["score"] <= 5.0


def test_tiny_model_command(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "tiny")]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "realqa_card.json"):
        assert (tmp_path / "tiny" / name).is_file()


# ---------------------------------------------------------------- eval


def test_eval_our_results_with_a_labels_file(tmp_path, capsys):
    results = tmp_path / "scores.csv"
    rows = [("a.jpg", "1.50", "ok"), ("b.jpg", "", "no_score"), ("c.jpg", "3.10", "ok"), ("d.jpg", "2.20", "ok"),
            ("e.jpg", "4.90", "ok"), ("f.jpg", "4.00", "ok"), ("g.jpg", "", "error")]
    with open(results, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "task", "score", "ncm", "status", "text", "error"])
        for path, score, status in rows:
            writer.writerow([f"/data/{path}", "quality", score, score, status, "", ""])
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "image,mos\n" + "".join(f"{n}.jpg,{m}\n" for n, m in zip("abcdefg", [1.2, 2, 3, 2.5, 4.8, 3.9, 1]))
    )
    assert main(["eval", str(results), "--labels", str(labels)]) == 0
    out = capsys.readouterr().out.splitlines()
    values = out[1].split()
    assert values[:4] == ["quality", "7", "5", "2"]  # rows, scored, failed: failures are counted, not dropped
    assert float(values[4]) == pytest.approx(1.0)  # pred order 1.5<2.2<3.1<4.0<4.9 matches labels


def test_eval_reports_whether_spread_goes_with_error(tmp_path, capsys):
    results = tmp_path / "scores.jsonl"
    scores, labels, spreads = [1.5, 2.2, 3.1, 4.0, 4.9], [1.2, 2.5, 3.0, 3.9, 4.0], [0.3, 0.2, 0.05, 0.08, 0.6]
    # |score - label| = 0.3, 0.3, 0.1, 0.1, 0.9: ranked like the spreads but for one tie, so Spearman is high
    results.write_text("".join(json.dumps({"path": f"/data/{i}.jpg", "task": "quality", "score": s, "ncm": s,
                                           "ncm_std": d, "status": "ok", "text": "", "error": None}) + "\n"
                               for i, (s, d) in enumerate(zip(scores, spreads))))
    (tmp_path / "labels.csv").write_text("image,mos\n" + "".join(f"{i}.jpg,{m}\n" for i, m in enumerate(labels)))
    assert main(["eval", str(results), "--labels", str(tmp_path / "labels.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2] == "std~err"
    from scipy.stats import spearmanr

    expected = spearmanr(spreads, [abs(a - b) for a, b in zip(scores, labels)]).statistic
    assert float(out[1].split()[-2]) == pytest.approx(expected, abs=1e-4) and expected > 0.8


def test_eval_llamafactory_predictions(tmp_path, capsys):
    predictions = tmp_path / "generated_predictions.jsonl"
    pairs = [("The quality score of this image is 3.47.", "The quality score of this image is 3.50."),
             ("The quality score of this image is 2.10.", "The quality score of this image is 2.00."),
             ("I am not sure.", "The quality score of this image is 4.00."),
             ("Reasoning first. <4.40>", "The quality score of this image is 4.60."),
             ("The quality score of this image is 1.20.", "The quality score of this image is 1.10."),
             ("The quality score of this image is 2.90.", "The quality score of this image is 3.00.")]
    predictions.write_text("".join(json.dumps({"prompt": "q", "predict": p, "label": label}) + "\n"
                                   for p, label in pairs))
    assert main(["eval", str(predictions)]) == 0
    values = capsys.readouterr().out.splitlines()[1].split()
    assert values[:4] == ["quality", "6", "5", "1"]
    assert float(values[4]) == pytest.approx(1.0)


def test_eval_without_labels_says_so(tmp_path, capsys):
    results = tmp_path / "scores.jsonl"
    results.write_text(json.dumps({"path": "a.jpg", "score": 3.0, "status": "ok"}) + "\n")
    assert main(["eval", str(results)]) == 2
    assert "pass --labels" in capsys.readouterr().err


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_module_entry_point_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "realqa.cli", "tiny-model", str(tmp_path / "m")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "m" / "config.json").is_file()


def test_quantize_is_refused_clearly_where_it_cannot_run(format_model_dir, capsys):
    from realqa.model import quantization_options

    args = ["score", str(EXAMPLE_PHOTOS[0]), "--model", str(format_model_dir), "--quiet", "--device", "cpu"]
    assert main([*args, "--quantize", "8bit"]) == 2
    assert "--quantize 8bit needs a CUDA device" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown quantization '3bit'"):
        quantization_options("3bit", "cuda", None)


def test_speed_flags_reach_load_scorer(monkeypatch):
    """Each throughput flag travels from the command line through ModelOptions into load_scorer."""
    import realqa.engine
    from realqa.cli import _parser as build_parser
    from realqa.cli.options import model_options

    seen = {}

    class Loaded:
        device = "cpu"

    class Stub:
        loaded = Loaded()

    def fake_load_scorer(model, adapter=None, **options):
        seen.update(options, model=model)
        return Stub()

    monkeypatch.setattr(realqa.engine, "load_scorer", fake_load_scorer)
    args = build_parser().parse_args(["score", "x.jpg", "--model", "m", "--compile-vision", "--compile",
                                      "--attention", "eager", "--max-pixels", "50176", "--workers", "0"])
    model_options(args).load()
    assert (seen["model"], seen["compile_vision"], seen["compile"], seen["attention"], seen["max_pixels"],
            seen["workers"]) == ("m", True, True, "eager", 50176, 0)
    model_options(build_parser().parse_args(["score", "x.jpg", "--model", "m"])).load()
    assert (seen["compile_vision"], seen["compile"]) == (False, False)
