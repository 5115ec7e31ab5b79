"""A user's own CSV / JSONL labels through the generic adapter."""

from __future__ import annotations

import json

import pytest

from realqa import data
from test_data_support import cli, write_image, write_text


def test_csv_with_a_native_range(tmp_path):
    labels = write_text(tmp_path / "scores.csv", "file,MOS,light\nphotos/a.jpg,0,dark\nphotos/b.jpg,75,bright\n")
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "photos" / name)
    dataset = data.load("generic", tmp_path, labels=labels, image_column="file", score_columns="quality=MOS",
                        native_range="0,100", attribute_columns="light")
    assert dataset.name == "scores" and dataset.split.strategy == "all"
    assert [s.scores["quality"] for s in dataset] == [1.0, 4.0]
    assert [s.id for s in dataset] == ["photos/a", "photos/b"]
    assert dataset.samples[1].attributes == {"light": "bright"}
    assert dataset.to_native(4.0) == pytest.approx(75) and dataset.to_task(75) == pytest.approx(4.0)
    assert dataset.to_native(None) is None
    assert [(a.name, a.kind, a.values) for a in dataset.attribute_schema] == [
        ("light", "categorical", ("bright", "dark"))
    ]


def test_jsonl_with_two_tasks_a_split_column_and_a_lower_is_better_scale(tmp_path):
    records = [
        {"img": "x.png", "dmos": 10, "aes": 7.5, "part": "train", "key": "X"},
        {"img": "y.png", "dmos": 90, "aes": 2.0, "part": "test", "key": "Y"},
    ]
    labels = write_text(tmp_path / "mine.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    dataset = data.load("generic", labels=labels, image_column="img", score_columns=["quality=dmos", "aesthetics=aes"],
                        native_range="quality=100,0", split_column="part", id_column="key", dataset_name="mine-v1")
    assert dataset.tasks == ["quality", "aesthetics"] and dataset.name == "mine-v1"
    x, y = dataset.samples
    assert (x.id, x.split, y.split) == ("X", "train", "test")
    assert x.scores == {"quality": pytest.approx(4.6), "aesthetics": 7.5}  # DMOS 10 of 100 (lower is better)
    assert dataset.mapping("quality").higher_is_better is False
    assert dataset.to_native(4.6, "quality") == pytest.approx(10)
    assert dataset.split.strategy == "official" and "column 'part'" in dataset.split.description


def test_generic_prepare_command(tmp_path, capsys):
    labels = write_text(tmp_path / "mine.tsv", "path\tscore\na.jpg\t3.5\nb.jpg\t4.5\nc.jpg\t2\n")
    for name in ("a.jpg", "b.jpg"):
        write_image(tmp_path / "imgs" / name)
    code = cli("data", "prepare", "generic", "--labels", labels, "--root", tmp_path, "--out", tmp_path / "out",
               "--image-column", "path", "--score-column", "quality=score")
    assert code == 0
    printed = capsys.readouterr().out
    assert "3 label rows read, 2 samples kept, 1 rows excluded" in printed
    dataset = data.read_manifest(tmp_path / "out" / "mine" / "all.jsonl")
    assert [s.image for s in dataset] == ["imgs/a.jpg", "imgs/b.jpg"]
