"""Frozen manifests (write -> read gives the same Dataset), splits, and `data prepare`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from realqa import data
from realqa.data import DataError
from realqa.data.splits import parse_ratios, random_split, split_from_file_name
from test_data_support import cli, koniq_csv, write_image, write_text

ROWS = [(f"{100 + i}.jpg", 10.0 + 7.3 * i, ["training", "validation", "test"][i % 3]) for i in range(9)]


@pytest.fixture
def koniq_root(tmp_path):
    root = tmp_path / "koniq"
    write_text(root / "koniq10k_distributions_sets.csv", koniq_csv(ROWS))
    for name, _, _ in ROWS[:-1]:  # the last image is missing
        write_image(root / "1024x768" / name)
    return root


def test_manifests_read_back_identically(koniq_root, tmp_path):
    dataset = data.load("koniq10k", koniq_root)
    paths = data.write_manifests(dataset, tmp_path / "out")
    assert sorted(paths) == ["test", "train", "validation"]
    for split, path in paths.items():
        again = data.read_manifest(path)
        assert again == dataset.subset(split)  # metadata and samples, floats exact
        assert all(sample.split == split for sample in again)
    lines = paths["train"].read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["id"] == "100"
    meta = json.loads((tmp_path / "out" / "train.meta.json").read_text())
    assert meta["samples"] == 3 and meta["split_counts"] == {"train": 3}
    assert meta["dataset"]["mappings"]["quality"]["description"] == (
        "KonIQ MOS as the authors publish it on [0, 100] (higher is better) -> quality [1, 5], linear")
    assert meta["dataset"]["label_files"][0]["sha256"] and meta["dataset"]["image_folder"] == "1024x768"


def test_a_manifest_can_move_with_its_images(koniq_root, tmp_path):
    path = data.write_manifest(data.load("koniq10k", koniq_root), tmp_path / "all.jsonl")
    moved = data.read_manifest(path, root=tmp_path / "elsewhere")
    assert moved.image_path(moved.samples[0]) == tmp_path / "elsewhere" / "1024x768" / "100.jpg"


def test_manifest_problems(koniq_root, tmp_path):
    path = data.write_manifest(data.load("koniq10k", koniq_root), tmp_path / "all.jsonl")
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.warns(UserWarning, match="changed since it was written: 7 samples \\(recorded 8\\)"):
        assert len(data.read_manifest(path)) == 7
    path.write_text(lines[0] + "\n{\"id\": 1}\n")
    with pytest.raises(DataError, match="all.jsonl: line 2: not a sample .*missing key"):
        data.read_manifest(path)
    (tmp_path / "all.meta.json").unlink()
    with pytest.raises(DataError, match="all.meta.json is missing"):
        data.read_manifest(path)


def test_random_split_is_reproducible_from_its_seed():
    ids = [f"img{i:03d}" for i in range(100)]
    first = random_split(ids, (0.8, 0.2), seed=123)
    assert first == random_split(ids, (0.8, 0.2), seed=123)
    assert first.count("train") == 80 and first.count("test") == 20
    assert first != random_split(ids, (0.8, 0.2), seed=124)
    three = random_split(ids, (0.7, 0.1, 0.2), seed=0)
    assert (three.count("train"), three.count("validation"), three.count("test")) == (70, 10, 20)
    # Independent of row order: the split is a function of the ids and the seed.
    shuffled = ids[50:] + ids[:50]
    assert dict(zip(shuffled, random_split(shuffled, (0.8, 0.2), 123))) == dict(zip(ids, first))
    with pytest.raises(ValueError, match="sum to 1"):
        random_split(ids, (0.8, 0.3), 0)
    assert parse_ratios("80/20") == (0.8, 0.2)


def test_split_names_from_files():
    assert split_from_file_name("data/ava_test.json") == "test"
    assert split_from_file_name("realqa/train/metadata.jsonl") == "train"
    assert split_from_file_name("data/train-00000-of-00001.parquet") == "train"
    assert split_from_file_name("val.csv") == "validation"
    assert split_from_file_name("koniq10k_distributions_sets.csv") is None


def test_random_split_overrides_the_official_one(koniq_root):
    dataset = data.load("koniq10k", koniq_root, split="random", seed=5, ratios="0.5,0.5")
    assert dataset.split.strategy == "random" and dataset.split.seed == 5
    # Splits come from the labels alone: the missing image does not move the others.
    labels_only = data.load("koniq10k", labels=koniq_root / "koniq10k_distributions_sets.csv", split="random",
                            seed=5, ratios="0.5,0.5")
    assert {s.id: s.split for s in dataset} == {s.id: s.split for s in labels_only if s.id != "108"}


def test_prepare_command_writes_manifests_report_and_prints_counts(koniq_root, tmp_path, capsys):
    out = tmp_path / "prepared"
    assert cli("data", "prepare", "koniq10k", "--root", koniq_root, "--out", out) == 0
    printed = capsys.readouterr().out
    assert "koniq10k: 9 label rows read, 8 samples kept, 1 rows excluded" in printed
    assert "splits: train 3, validation 3, test 2" in printed
    assert f"wrote {out / 'koniq10k' / 'test.jsonl'} (2 samples)" in printed
    report = json.loads((out / "koniq10k" / "report.json").read_text())
    assert report["excluded_counts"] == {"missing_image": 1}
    assert report["problems"][0]["row"] == "line 10" and report["problems"][0]["image"] == "108.jpg"
    text = (out / "koniq10k" / "report.txt").read_text()
    assert "[missing_image]" in text and "line 10: file not found: 108.jpg" in text
    dataset = data.read_manifest(out / "koniq10k" / "test.jsonl")
    assert [s.id for s in dataset] == ["102", "105"]


def test_prepare_command_passes_adapter_options(tmp_path, capsys):
    write_text(tmp_path / "meta_info_LIVEChallengeDataset.csv", "img_name,mos,std\nt1.bmp,50,10\n11.bmp,60,10\n")
    assert cli("data", "prepare", "livec", "--labels", tmp_path / "meta_info_LIVEChallengeDataset.csv",
               "--out", tmp_path / "p", "--set", "all_images=true") == 0
    assert "2 samples kept" in capsys.readouterr().out
    assert cli("data", "list") == 0
    listing = capsys.readouterr().out
    assert "koniq10k" in listing and "--set all_images=..." in listing


def test_dataset_equality_ignores_the_report(koniq_root):
    a = data.load("koniq10k", koniq_root)
    assert a == replace(a, report=None)
