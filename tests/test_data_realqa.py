"""The RealQA reader on generated files in the published forms: HF annotation files and conversations."""

from __future__ import annotations

import csv
import io
import json

import pytest

from realqa import data
from realqa.data import DataError
from realqa.tasks import DEFAULT_TASKS
from test_data_support import cli, write_image, write_text

# Ten attributes of mixed kinds; the reader must learn names and types from the files.
ATTRIBUTES = [
    {"clarity": "clear", "exposure": "normal", "saturation": 2, "subject_integrity": True, "subject_clutter": 1,
     "background_clutter": 0.5, "level_shot": "level", "composition": 4, "lighting": "soft", "color_harmony": 3},
    {"clarity": "blurry", "exposure": "over", "saturation": 3, "subject_integrity": False, "subject_clutter": 2,
     "background_clutter": 0.25, "level_shot": "tilted", "composition": 2, "lighting": "hard", "color_harmony": 1},
]


def hf_layout(root):
    """train/metadata.jsonl and test/metadata.csv (HF ImageFolder), reusing one file name in both folders."""
    train = [{"file_name": "0001.jpg", "quality": 3.47, "aesthetic": 6.5, **ATTRIBUTES[0]},
             {"file_name": "0002.jpg", "quality": 2.1, "aesthetic": 4.25, **ATTRIBUTES[1]}]
    write_text(root / "train" / "metadata.jsonl", "".join(json.dumps(r) + "\n" for r in train))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["file_name", "quality", "aesthetic", *ATTRIBUTES[0]])
    writer.writeheader()
    writer.writerow({"file_name": "0001.jpg", "quality": 4.0, "aesthetic": 8.0, **ATTRIBUTES[1]})
    write_text(root / "test" / "metadata.csv", buffer.getvalue())
    write_text(root / "README.md", "# RealQA\n")
    for path in ("train/0001.jpg", "train/0002.jpg", "test/0001.jpg"):
        write_image(root / path)
    return root


def test_hf_layout_reads_scores_splits_and_attributes(tmp_path):
    dataset = data.load("realqa", hf_layout(tmp_path))
    assert dataset.tasks == ["quality", "aesthetics"]
    assert dataset.split_counts() == {"train": 2, "test": 1}
    assert [s.image for s in dataset] == ["test/0001.jpg", "train/0001.jpg", "train/0002.jpg"]  # files in path order
    assert [s.id for s in dataset] == ["test/0001", "train/0001", "train/0002"]
    first = dataset.samples[1]
    assert first.scores == {"quality": 3.47, "aesthetics": 6.5} and first.native == first.scores
    assert first.attributes == ATTRIBUTES[0]
    assert dataset.samples[0].attributes == ATTRIBUTES[1]  # CSV text coerced to the same types as JSON
    schema = {spec.name: spec for spec in dataset.attribute_schema}
    assert list(schema) == list(ATTRIBUTES[0])
    assert schema["clarity"].kind == "categorical" and schema["clarity"].values == ("blurry", "clear")
    assert schema["subject_integrity"].values == (False, True)
    assert schema["composition"].kind == "numeric" and (schema["composition"].low, schema["composition"].high) == (2, 4)
    assert schema["background_clutter"].values == (0.25, 0.5) and schema["background_clutter"].present == 3
    meta = dataset.metadata()["attribute_schema"]
    assert meta[0] == {"name": "clarity", "kind": "categorical", "present": 3, "missing": 0, "low": None,
                       "high": None, "values": ("blurry", "clear")}


def test_column_roles_by_other_names_nested_attributes_and_missing_values(tmp_path):
    records = [
        {"image_path": "imgs/a.jpg", "Quality Score": 55, "attributes": {"clarity": "clear", "noise": 1}},
        {"image_path": "imgs/b.jpg", "Quality Score": 80, "attributes": {"clarity": "blurry"}},
    ]
    labels = write_text(tmp_path / "annotations.json", json.dumps(records))
    dataset = data.load("realqa", labels=labels, quality_range="0,100")
    assert dataset.tasks == ["quality"] and dataset.split.strategy == "all"
    assert [s.scores["quality"] for s in dataset] == [pytest.approx(3.2), pytest.approx(4.2)]
    assert dataset.samples[1].attributes == {"clarity": "blurry"}
    noise = next(spec for spec in dataset.attribute_schema if spec.name == "noise")
    assert (noise.present, noise.missing) == (1, 1)


def test_hf_image_features_need_a_path(tmp_path):
    records = [{"image": {"bytes": None, "path": "a.jpg"}, "quality": 3.0},
               {"image": {"bytes": "...", "path": None}, "quality": 4.0}]
    dataset = data.load(
        "realqa", labels=write_text(tmp_path / "train.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    )
    assert [s.image for s in dataset] == ["a.jpg"]
    assert dataset.report.problems[0].message.startswith("the image is embedded bytes without a path")


def test_explicit_columns_and_attribute_selection(tmp_path):
    labels = write_text(tmp_path / "scores.csv", "img,q,a,width,clarity\nx.jpg,3,7,640,clear\n")
    dataset = data.load("realqa", labels=labels, image_column="img", quality_column="q", aesthetics_column="a",
                        ignore_columns="width")
    assert dataset.samples[0].scores == {"quality": 3, "aesthetics": 7}
    assert dataset.samples[0].attributes == {"clarity": "clear"}
    only = data.load("realqa", labels=labels, image_column="img", quality_column="q", attribute_columns="width")
    assert only.samples[0].attributes == {"width": 640}


def test_files_without_roles_are_noted_and_conversations_set_aside(tmp_path):
    root = hf_layout(tmp_path)
    write_text(root / "extra" / "sizes.csv", "width,height\n1,2\n")
    write_text(root / "conversations" / "realqa_train.json", json.dumps([conversation("train/0001.jpg", "quality", 3)]))
    dataset = data.load("realqa", root)
    notes = " | ".join(dataset.report.notes)
    assert "sizes.csv: not used (no image and score columns; columns: width, height)" in notes
    assert "conversation files not used" in notes and "realqa_train.json" in notes


def conversation(image: str, task: str, value: float) -> dict:
    spec = DEFAULT_TASKS[task]
    return {"messages": [{"role": "user", "content": "<image>" + spec.question_text()},
                         {"role": "assistant", "content": spec.answer_text(value)}], "images": [image]}


def test_conversation_release_merges_tasks_per_image(tmp_path):
    write_text(tmp_path / "data" / "realqa_train.json", json.dumps(
        [conversation("images/1.jpg", "quality", 3.47), conversation("images/1.jpg", "aesthetics", 5.5),
         conversation("images/2.jpg", "quality", 2.0)]))
    write_text(tmp_path / "data" / "realqa_test.json", json.dumps([conversation("images/3.jpg", "aesthetics", 7.0)]))
    for name in ("1.jpg", "2.jpg", "3.jpg"):
        write_image(tmp_path / "images" / name)
    dataset = data.load("realqa", tmp_path)
    assert dataset.split_counts() == {"train": 2, "test": 1}
    scores = {s.image: (s.split, s.scores) for s in dataset}
    assert scores == {"images/1.jpg": ("train", {"quality": 3.47, "aesthetics": 5.5}),
                      "images/2.jpg": ("train", {"quality": 2.0}), "images/3.jpg": ("test", {"aesthetics": 7.0})}
    assert any("attributes in free text are not extracted" in note for note in dataset.report.notes)


def test_no_annotations_at_all(tmp_path):
    write_text(tmp_path / "notes.json", json.dumps([{"text": "hello"}]))
    with pytest.raises(DataError, match="no LLaMA-Factory conversation file"):
        data.load("realqa", tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no annotation or conversation files"):
        data.load("realqa", empty)


def test_prepare_realqa_with_options_from_the_command_line(tmp_path, capsys):
    hf_layout(tmp_path / "realqa")
    assert cli("data", "prepare", "realqa", "--root", tmp_path / "realqa", "--out", tmp_path / "out",
               "--set", "quality_range=1,5") == 0
    assert "splits: train 2, test 1" in capsys.readouterr().out
    train = data.read_manifest(tmp_path / "out" / "realqa" / "train.jsonl")
    assert len(train.attribute_schema) == 10
    assert train == data.load("realqa", tmp_path / "realqa").subset("train")  # attributes and schema survive JSON


def test_parquet_annotations(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")  # the 'parquet' extra
    parquet = pytest.importorskip("pyarrow.parquet")

    table = pyarrow.Table.from_pylist([{"file_name": "a.jpg", "quality": 3.0, "clarity": "clear"}])
    parquet.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    dataset = data.load("realqa", labels=tmp_path / "train-00000-of-00001.parquet")
    assert dataset.samples[0].attributes == {"clarity": "clear"} and dataset.samples[0].split == "train"
