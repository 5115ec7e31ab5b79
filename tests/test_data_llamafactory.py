"""LLaMA-Factory sharegpt export and import, and the round trip between them."""

from __future__ import annotations

import json

import pytest

from realqa import data
from realqa.data import DataError
from realqa.data.llamafactory import record_path
from realqa.tasks import DEFAULT_TASKS
from test_data_support import cli, write_image, write_text


@pytest.fixture
def two_task_dataset(tmp_path):
    """Three images with quality (native 0-100) and aesthetics (native 1-10) scores, images on disk."""
    rows = [("a.jpg", 77.3836, 6.125), ("b.jpg", 12.5, 10.0), ("c.jpg", 50.0, 1.0)]
    lines = ["image,q,aes"] + [f"{image},{q},{aes}" for image, q, aes in rows]
    labels = write_text(tmp_path / "labels.csv", "\n".join(lines) + "\n")
    for image, _, _ in rows:
        write_image(tmp_path / "images" / image)
    return data.load("generic", tmp_path, labels=labels, image_column="image",
                     score_columns="quality=q;aesthetics=aes", native_range="quality=0,100")


def test_export_writes_sharegpt_and_its_dataset_info_entry(two_task_dataset, tmp_path):
    out = tmp_path / "lf" / "koniq_train.json"
    write_text(out.parent / "dataset_info.json", json.dumps({"other": {"file_name": "other.json"}}))
    entry = data.export_sharegpt(two_task_dataset, out)
    records = json.loads(out.read_text())
    assert len(records) == 6  # 3 images x 2 tasks
    assert records[0] == {
        "messages": [
            {"role": "user", "content": "<image>" + DEFAULT_TASKS["quality"].question_text()},
            {"role": "assistant", "content": "The quality score of this image is 4.10."},
        ],
        "images": [str((tmp_path / "images" / "a.jpg").resolve())],
    }
    assert records[1]["messages"][1]["content"] == "The aesthetic score of this image is 6.13."  # half-up
    assert records[3]["messages"][1]["content"] == "The aesthetic score of this image is 9.99."  # 10 -> one digit
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["other"] == {"file_name": "other.json"}
    assert info["koniq_train"] == entry == {
        "file_name": "koniq_train.json",
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def test_export_relative_to_media_dir_and_with_other_decimals(two_task_dataset, tmp_path):
    out = tmp_path / "lf.json"
    data.export_sharegpt(two_task_dataset, out, decimals=3, media_dir=tmp_path)
    first = json.loads(out.read_text())[0]
    assert first["images"] == ["images/a.jpg"]
    assert first["messages"][1]["content"] == "The quality score of this image is 4.095."


def test_round_trip_keeps_scores_at_the_written_precision(two_task_dataset, tmp_path):
    """Without the export's record, an import knows only what the answers say."""
    out = tmp_path / "train.json"
    data.export_sharegpt(two_task_dataset, out, media_dir=tmp_path)
    record_path(out).unlink()
    back = data.import_sharegpt(out, media_dir=tmp_path)
    assert back.tasks == ["quality", "aesthetics"] and back.split_counts() == {"train": 3}
    assert [s.image for s in back] == [s.image for s in two_task_dataset]
    for original, imported in zip(two_task_dataset, back):
        for task, value in original.scores.items():
            written = DEFAULT_TASKS[task].score_format.format(value)
            assert imported.scores[task] == float(written)
    assert not back.report.problems


def test_answers_without_a_score_are_reported_by_record(tmp_path):
    question = "<image>" + DEFAULT_TASKS["quality"].question_text()
    def record(answer: str, *images: str) -> dict:
        return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                "images": list(images)}

    records = [
        record("The quality score of this image is 3.47.", "a.jpg"),
        record("It looks fine to me.", "b.jpg"),
        record("The quality score of this image is 7.20.", "c.jpg"),
        record("3.1", "d.jpg", "e.jpg"),
    ]
    path = write_text(tmp_path / "conv.json", json.dumps(records))
    dataset = data.import_sharegpt(path)
    assert [s.image for s in dataset] == ["a.jpg"]
    problems = sorted((p.row, p.kind, p.message) for p in dataset.report.problems)
    assert problems == [
        ("record 2", "bad_score", "the answer holds no score: 'It looks fine to me.'"),
        ("record 3", "bad_score", "quality score 7.2 is outside the native range [1, 5]"),
        ("record 4", "malformed_row", "expected one image path in 'images', found 2"),
    ]
    assert dataset.report.rows_read == 4


def test_classic_sharegpt_tags_cot_answers_and_merged_tasks(tmp_path):
    lines = [
        {"conversations": [{"from": "human", "value": "<image>Rate the aesthetics of this photo."},
                           {"from": "gpt", "value": "Composition is balanced, colours are vivid. <7.25>"}],
         "images": ["x.jpg"]},
        {"conversations": [{"from": "system", "value": "You are an expert."},
                           {"from": "human", "value": "<image>How good is the image quality?"},
                           {"from": "gpt", "value": "The quality score of this image is 4.12."}],
         "images": ["x.jpg"]},
        {"conversations": [{"from": "human", "value": "<image>Describe the picture."},
                           {"from": "gpt", "value": "A cat."}], "images": ["y.jpg"]},
    ]
    path = write_text(tmp_path / "cot.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    dataset = data.import_sharegpt(path, split_name="test")
    (sample,) = dataset.samples
    assert sample.scores == {"aesthetics": 7.25, "quality": 4.12} and sample.split == "test"
    assert [(p.row, p.message) for p in dataset.report.problems] == [
        ("line 3", "cannot tell the task of the question 'Describe the picture.'")]


def test_import_without_any_score_is_fatal(tmp_path):
    path = write_text(tmp_path / "chat.json", json.dumps([
        {"messages": [{"role": "user", "content": "<image>What quality?"}, {"role": "assistant", "content": "good"}],
         "images": ["a.jpg"]}]))
    with pytest.raises(DataError, match="no conversation holds a score"):
        data.import_sharegpt(path)


def test_export_and_import_commands(two_task_dataset, tmp_path, capsys):
    manifest = data.write_manifest(two_task_dataset, tmp_path / "m" / "all.jsonl")
    out = tmp_path / "lf" / "mine.json"
    assert cli("data", "export-llamafactory", manifest, "--out", out, "--name", "mine_train") == 0
    assert "wrote" in capsys.readouterr().out
    assert "mine_train" in json.loads((out.parent / "dataset_info.json").read_text())
    back = tmp_path / "back" / "train.jsonl"
    assert cli("data", "import-llamafactory", out, "--out", back, "--name", "mine") == 0
    dataset = data.read_manifest(back)
    assert dataset.name == "mine" and len(dataset) == 3
    assert dataset.samples[0].image == str((tmp_path / "images" / "a.jpg").resolve())


# ---------------------------------------------------------------- the export's record (<file>.realqa.json)


@pytest.fixture
def prepared_koniq(tmp_path):
    """A KonIQ-like set prepared as usual: MOS on 0-100, a seeded random 60/40 split, images on disk."""
    mos = {"a.jpg": 77.3836, "b.jpg": 12.5, "c.jpg": 50.0, "d.jpg": 3.14159, "e.jpg": 99.0}
    labels = write_text(tmp_path / "labels.csv", "image,mos\n" + "".join(f"{k},{v}\n" for k, v in mos.items()))
    for name in mos:
        write_image(tmp_path / "images" / name)
    dataset, paths = data.prepare("generic", tmp_path, tmp_path / "prepared", labels=labels, image_column="image",
                                  score_columns="quality=mos", native_range="0,100", split="random",
                                  ratios="0.6,0.4", seed=3)
    return dataset, paths


def _fields(dataset):
    return [(s.id, s.scores, s.native, s.split, s.dataset) for s in dataset]


def test_import_of_an_export_has_the_manifests_native_values_mappings_and_splits(prepared_koniq, tmp_path):
    dataset, _ = prepared_koniq
    assert dataset.split_counts() == {"train": 3, "test": 2}
    out = tmp_path / "lf" / "koniq_all.json"
    data.export_sharegpt(dataset, out, media_dir=tmp_path)
    record = json.loads(record_path(out).read_text())
    assert record["mappings"]["quality"]["native"] == [0.0, 100.0]
    assert record["samples"][0] == {"image": "images/a.jpg", "id": "a", "dataset": dataset.name,
                                    "split": dataset.samples[0].split, "native": {"quality": 77.3836},
                                    "attributes": {}, "info": {}}
    back = data.import_sharegpt(out, media_dir=tmp_path)
    assert _fields(back) == _fields(dataset)  # exact: 77.3836 comes back, not the answer's 4.10
    assert back.samples[0].native == {"quality": 77.3836} and back.samples[0].scores["quality"] == pytest.approx(
        4.095344
    )
    assert back.mappings == dataset.mappings and back.split == dataset.split and back.name == dataset.name
    assert back.to_native(4.0) == pytest.approx(75.0)
    assert not back.report.problems


def test_command_round_trip_prepare_export_import(prepared_koniq, tmp_path, capsys):
    dataset, paths = prepared_koniq
    original = data.read_manifest(paths["test"])
    manifest = paths["test"]
    out = tmp_path / "lf" / "koniq_test.json"
    assert cli("data", "export-llamafactory", manifest, "--out", out) == 0
    back_file = tmp_path / "back" / "test.jsonl"
    assert cli("data", "import-llamafactory", out, "--out", back_file) == 0  # --split-name's default gives way
    back = data.read_manifest(back_file)
    assert _fields(back) == _fields(original) and back.split_counts() == {"test": 2}
    assert back.mappings == original.mappings and back.split == original.split


def test_export_record_is_not_used_for_a_changed_file_or_when_asked_not_to(prepared_koniq, tmp_path):
    dataset, _ = prepared_koniq
    out = tmp_path / "lf.json"
    data.export_sharegpt(dataset, out, media_dir=tmp_path)
    plain = data.import_sharegpt(out, media_dir=tmp_path, export_record="false")
    assert plain.split_counts() == {"train": 5} and plain.samples[0].native == {"quality": 4.10}
    assert plain.mappings["quality"].native == (1.0, 5.0) and plain.name == "lf"
    records = json.loads(out.read_text())
    records[0]["messages"][1]["content"] = "The quality score of this image is 4.20."
    out.write_text(json.dumps(records))
    changed = data.import_sharegpt(out, media_dir=tmp_path)
    assert changed.samples[0].native == {"quality": 4.20} and changed.split_counts() == {"train": 5}
    assert any("lf.json changed since the export that wrote lf.json.realqa.json" in note for note in changed.notes)
