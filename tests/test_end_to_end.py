"""A user's own labelled folder: prepare -> train -> score -> eval, all through the command line."""

import csv
import json

import numpy as np
import pytest

from conftest import SMALL_PIXELS
from realqa.cli import main
from toy_data import brightness_image

pytestmark = pytest.mark.slow  # prepares data, trains, scores and evaluates


def test_prepare_train_score_eval(tiny_model_dir, tmp_path, capsys):
    root = tmp_path / "mydata"
    (root / "pics").mkdir(parents=True)
    rng = np.random.default_rng(3)
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "mos"])
        for i, level in enumerate(rng.uniform(0.05, 0.95, 64)):
            brightness_image(float(level), size=(56, 56)).save(root / "pics" / f"p{i:02d}.png")
            writer.writerow([f"pics/p{i:02d}.png", f"{100 * level:.2f}"])  # native MOS on 0..100

    prepared = tmp_path / "prepared"
    assert main(["data", "prepare", "generic", "--root", str(root), "--labels", str(root / "labels.csv"),
                 "--out", str(prepared), "--image-column", "file", "--score-column", "quality=mos",
                 "--native-range", "0,100", "--split", "random", "--ratios", "0.75,0.25", "--seed", "1"]) == 0
    manifests = sorted(p.name for p in prepared.rglob("*.jsonl"))
    assert manifests == ["test.jsonl", "train.jsonl"], manifests
    train_manifest = next(prepared.rglob("train.jsonl"))
    test_manifest = next(prepared.rglob("test.jsonl"))
    capsys.readouterr()

    out = tmp_path / "model"
    assert main(["train", f"model={tiny_model_dir}", f"output_dir={out}", f"train=[{train_manifest}]",
                 "finetuning=full", "learning_rate=3e-3", "epochs=20", "per_device_batch_size=8",
                 "gradient_accumulation_steps=1", "save_steps=100000", "gradient_checkpointing=false",
                 "progress_bar=false", *(f"{k}={v}" for k, v in SMALL_PIXELS.items())]) == 0

    test_rows = [json.loads(line) for line in test_manifest.read_text().splitlines()]
    images = [str(root / row["image"]) for row in test_rows]
    scores = tmp_path / "scores.csv"
    assert main(["score", *images, "--model", str(out), "--out", str(scores), "--quiet"]) == 0
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "mos"])
        for image, row in zip(images, test_rows):
            writer.writerow([image, row["scores"]["quality"]])
    capsys.readouterr()
    assert main(["eval", str(scores), "--labels", str(labels)]) == 0
    values = capsys.readouterr().out.splitlines()[1].split()
    assert values[1] == str(len(test_rows)) == "16"
    assert int(values[2]) + int(values[3]) == 16
    assert float(values[4]) >= 0.6  # SRCC; 16 images: chance probability < 1% at 0.6
