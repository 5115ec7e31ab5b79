"""Inputs inside containers (realqa.sources): WebDataset tar shards, Parquet tables, saved Hugging Face
datasets. Every container is built here from small generated images, with broken samples among good ones."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import realqa
from realqa.cli import main
from realqa.compat import MissingExtra
from realqa.job import ModelOptions
from realqa.media import MediaError, collect_inputs, load_image
from realqa.models import demo_model_path
from realqa.sources import SampleRef, Unlisted, parse

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

SIZES = [(96, 64), (64, 96), (128, 128), (200, 80), (56, 56), (80, 120)]
TRUNCATED = "truncated"


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    w, h = SIZES[i % len(SIZES)]
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _images(folder: Path, count: int) -> list[Path]:
    """``count`` good JPEG files: the reference every container's good samples must score like."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"im{i:02d}.jpg"
        path.write_bytes(_jpeg(i))
        paths.append(path)
    return paths


def _write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for extension, data in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _half_jpeg(i: int) -> bytes:
    data = _jpeg(i)
    return data[: len(data) // 2]  # a JPEG cut off half way: a truncated image


@pytest.fixture()
def containers(tmp_path):
    return write_containers(tmp_path)


def write_containers(tmp_path: Path):
    """Images as files, and the same images in two shards, two Parquet tables and a saved dataset.

    Returns (folder of files, {container argument: (expected row paths, reference file per row or an
    expected error fragment)}).
    """
    files = _images(tmp_path / "files", 6)
    data = [f.read_bytes() for f in files]
    expected: dict[str, list[tuple[str, object]]] = {}

    # Two shards; shard 1 holds a truncated JPEG and a sample whose only member is a label.
    _write_shard(tmp_path / "shard-000.tar", [("a/000", {"jpg": data[0], "cls": b"1"}), ("a/001", {"jpg": data[1]})])
    _write_shard(tmp_path / "shard-001.tar", [("b/002", {"jpg": _half_jpeg(2), "json": b"{}"}),
                                              ("b/003", {"cls": b"3"}), ("b/004.x", {"png": data[4]})])
    pattern = str(tmp_path / "shard-{000..001}.tar")
    expected[pattern] = [(f"{tmp_path}/shard-000.tar#a/000", files[0]), (f"{tmp_path}/shard-000.tar#a/001", files[1]),
                         (f"{tmp_path}/shard-001.tar#b/002", "truncated or corrupt"),
                         (f"{tmp_path}/shard-001.tar#b/003", "no image member (it has: .cls)"),
                         (f"{tmp_path}/shard-001.tar#b/004", files[4])]  # key: up to the basename's first dot

    # Parquet with image bytes: text where an image should be, and a null; two row groups.
    table = tmp_path / "bytes.parquet"
    pq.write_table(pa.table({"id": [10, 11, 12, 13], "jpg": [data[3], b"not an image", None, data[5]]}), table,
                   row_group_size=2)
    expected[str(table)] = [(f"{table}#0", files[3]), (f"{table}#1", "not a recognised image format"),
                            (f"{table}#2", "no image in column 'jpg' (the value is null)"), (f"{table}#3", files[5])]

    # Parquet with paths relative to its folder: one file is missing.
    paths = tmp_path / "paths.parquet"
    pq.write_table(pa.table({"image_path": ["files/im00.jpg", "files/gone.jpg", "files/im02.jpg"],
                             "score": [1.0, 2.0, 3.0]}), paths)
    expected[str(paths)] = [(str(tmp_path / "files/im00.jpg"), files[0]), (str(tmp_path / "files/gone.jpg"), "file not found"),
                            (str(tmp_path / "files/im02.jpg"), files[2])]

    # A saved DatasetDict with an Image feature: a JPEG cut in half in the split scored.
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")})
    rows = {"image": [{"bytes": data[1], "path": None}, {"bytes": _half_jpeg(3), "path": None},
                      {"bytes": data[5], "path": None}], "label": [1.0, 2.0, 3.0]}
    split = datasets.Dataset.from_dict(rows, features=features)
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": split}).save_to_disk(str(folder))
    expected[str(folder)] = [(f"{folder}[train]#0", files[1]), (f"{folder}[train]#1", "truncated or corrupt"),
                             (f"{folder}[train]#2", files[5])]
    return tmp_path / "files", expected


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()]


# ---------------------------------------------------------------- listing and reading (no model)


def test_each_container_lists_its_samples_in_order_with_stable_identities(containers):
    _, expected = containers
    for argument, rows in expected.items():
        assert collect_inputs([argument]) == [path for path, _ in rows], argument
    everything = collect_inputs(list(expected))
    assert everything == [path for rows in expected.values() for path, _ in rows]


def test_unlisted_shards_and_tables_stay_whole_for_ray(containers):
    """For Ray Data's readers: a shard or a table of bytes is one input (its footer read for the row count)."""
    _, expected = containers
    pattern, table, paths, saved = expected
    inputs = collect_inputs([pattern, table, paths, saved], unlisted=True)
    shards = [pattern.replace("{000..001}", n) for n in ("000", "001")]
    assert inputs == [*shards, table, *[p for p, _ in expected[paths]], *[p for p, _ in expected[saved]]]
    assert [(type(i).__name__, getattr(i, "kind", None), getattr(i, "column", None), getattr(i, "rows", None))
            for i in inputs[:3]] == [("Unlisted", "tar", None, None)] * 2 + [("Unlisted", "parquet", "jpg", 4)]
    assert pickle.loads(pickle.dumps(inputs[2])).rows == 4
    with pytest.raises(MediaError, match="only --backend ray scores it"):  # not mistaken for an image file
        load_image(inputs[0])


def test_a_table_whose_image_column_is_named_path_is_listed_even_for_ray(containers, tmp_path):
    """Ray Data's Parquet reader adds a column "path" of its own; such a table's rows are listed instead, and
    read one by one, as the same table under another column name would be read."""
    folder, _ = containers
    data = [f.read_bytes() for f in sorted(Path(folder).glob("*.jpg"))[:2]]
    table = tmp_path / "named-path.parquet"
    pq.write_table(pa.table({"path": data}), table)
    inputs = collect_inputs([str(table)], unlisted=True)
    assert inputs == [f"{table}#0", f"{table}#1"] and not any(isinstance(i, Unlisted) for i in inputs)
    assert np.array_equal(np.asarray(load_image(inputs[1])), np.asarray(load_image(sorted(Path(folder).glob("*.jpg"))[1])))


def test_samples_decode_to_the_same_pixels_as_the_files_or_fail_naming_the_sample(containers):
    _, expected = containers
    for rows in expected.values():
        for path, want in rows:
            if isinstance(want, Path):
                assert np.array_equal(np.asarray(load_image(path)), np.asarray(load_image(want))), path
            else:
                with pytest.raises(MediaError) as err:
                    load_image(path)
                assert err.value.source == path and want in str(err.value), str(err.value)


def test_a_shard_is_indexed_once_and_a_row_group_read_once_for_its_neighbouring_samples(tmp_path):
    from realqa import sources

    _write_shard(tmp_path / "s.tar", [(f"{i:03d}", {"jpg": _jpeg(i), "cls": b"1"}) for i in range(6)])
    pq.write_table(pa.table({"jpg": [_jpeg(i) for i in range(6)]}), tmp_path / "t.parquet", row_group_size=2)
    inputs = collect_inputs([tmp_path / "s.tar", tmp_path / "t.parquet"])
    for cache in (sources._tar_index, sources._row_group):
        cache.cache_clear()
    assert [load_image(i).size for i in inputs] == [SIZES[i] for i in range(6)] * 2
    assert sources._tar_index.cache_info().misses == 1  # one header scan for the six samples
    assert sources._row_group.cache_info().misses == 3  # each row group of two rows decoded once


def test_a_sample_identity_read_back_as_a_plain_string(containers):
    """An identity that travelled as a plain string (a manifest line, a Ray column) is read the same way."""
    _, expected = containers
    for rows in expected.values():
        for path, want in rows:
            ref = parse(str(path))
            if "#" in path:
                assert isinstance(ref, SampleRef) and ref == path
            if isinstance(want, Path) and ref is not None:
                assert np.array_equal(np.asarray(load_image(str(path))), np.asarray(load_image(ref)))
    assert parse("/nowhere/shard.tar#key") is None  # no such container: an ordinary (missing) path


def test_sample_refs_survive_pickling_with_their_column(tmp_path):
    """Worker processes receive the reference itself: kind, container, key and the chosen column."""
    _write_shard(tmp_path / "s.tar", [("k", {"jpg": _jpeg(0), "png": _jpeg(1)})])
    [ref] = collect_inputs([tmp_path / "s.tar"], image_column="png")
    back = pickle.loads(pickle.dumps(ref))
    assert isinstance(back, SampleRef) and back == ref == f"{tmp_path}/s.tar#k" and back.column == "png"
    png = Image.open(io.BytesIO(_jpeg(1)))
    assert np.array_equal(np.asarray(load_image(back)), np.asarray(png.convert("RGB")))
    with pytest.raises(MediaError, match="several image members"):  # the same identity without a column
        load_image(str(ref))


def test_shard_members_without_a_key_and_extension_are_in_no_sample(tmp_path):
    """As WebDataset reads a shard: "README" or "._k.jpg" (no key before a dot) belong to no sample."""
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for name, data in (("README", b"notes"), ("k.JPG", _jpeg(0)), ("._k.jpg", b"mac metadata"), ("dir/", b"")):
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
    assert collect_inputs([tmp_path / "s.tar"]) == [f"{tmp_path}/s.tar#k"]
    assert load_image(f"{tmp_path}/s.tar#k").size == SIZES[0]  # extensions compared in lower case


def test_a_file_whose_name_holds_a_hash_is_that_file(tmp_path):
    _write_shard(tmp_path / "s.tar", [("k", {"jpg": _jpeg(0)})])
    odd = tmp_path / "s.tar#k"
    odd.write_bytes(_jpeg(3))
    assert load_image(str(odd)).size == SIZES[3]


def test_a_truncated_shard_keeps_the_samples_before_the_damage_and_says_where(tmp_path):
    _write_shard(tmp_path / "s.tar", [(f"{i:03d}", {"jpg": _jpeg(i)}) for i in range(4)])
    whole = (tmp_path / "s.tar").read_bytes()
    with tarfile.open(tmp_path / "s.tar") as tar:
        third = tar.getmembers()[2]
    assert collect_inputs([tmp_path / "s.tar"]) == [f"{tmp_path}/s.tar#{i:03d}" for i in range(4)]  # whole: no extra row
    for cut, lost in ((third.offset_data + third.size // 2, "unexpected end of data"),  # inside a member's data
                      (third.offset + 100, "no end-of-archive marker"),  # inside its header
                      (third.offset, "no end-of-archive marker")):  # between two members
        shard = tmp_path / f"cut{cut}.tar"
        shard.write_bytes(whole[:cut])
        inputs = collect_inputs([shard])
        listed = [f"{shard}#000", f"{shard}#001"] + ([f"{shard}#002"] if cut > third.offset_data else [])
        assert inputs == listed + [f"{shard}#"]  # the damage has a row of its own, after the samples it kept
        assert load_image(inputs[0]).size == SIZES[0]
        if cut > third.offset_data:
            with pytest.raises(MediaError, match="truncated"):
                load_image(inputs[2])
        with pytest.raises(MediaError, match=f"tar shard is truncated.* after {len(listed)} sample.*{lost}"):
            load_image(inputs[-1])


def test_not_a_shard_and_compressed_shards_are_refused_naming_the_file(tmp_path):
    fake = tmp_path / "fake.tar"
    fake.write_bytes(b"hello, not a tar" * 100)
    with pytest.raises(MediaError, match="not a readable tar shard") as err:
        collect_inputs([fake])
    assert err.value.source == str(fake)
    packed = tmp_path / "s.tar.gz"
    _write_shard(tmp_path / "s.tar", [("k", {"jpg": _jpeg(0)})])
    packed.write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    for unlisted in (False, True):
        with pytest.raises(MediaError, match="compressed tar shards are not supported: decompress them to plain .tar"):
            collect_inputs([packed], unlisted=unlisted)


def test_column_detection_and_its_clear_errors(tmp_path):
    two = tmp_path / "two.parquet"
    pq.write_table(pa.table({"a": [_jpeg(0)], "b": [_jpeg(1)], "path": ["x.jpg"]}), two)
    with pytest.raises(MediaError, match=r"several image columns \(a, b\): choose one with --image-column"):
        collect_inputs([two])
    assert collect_inputs([two], image_column="b") == [f"{two}#0"]
    assert load_image(collect_inputs([two], image_column="b")[0]).size == SIZES[1]
    assert collect_inputs([two], image_column="path") == [str(tmp_path / "x.jpg")]
    with pytest.raises(MediaError, match=r"no column 'c' \(it has: a, b, path\)"):
        collect_inputs([two], image_column="c")
    none = tmp_path / "none.parquet"
    pq.write_table(pa.table({"caption": ["a cat"], "score": [3.0]}), none)
    with pytest.raises(MediaError, match="no column of image bytes or image paths among caption, score"):
        collect_inputs([none])
    with pytest.raises(MediaError, match="holds double, not image bytes or paths"):
        collect_inputs([none], image_column="score")


def test_a_folder_of_parquet_files_is_one_table_in_file_order(tmp_path):
    folder = tmp_path / "table"
    (folder / "part=b").mkdir(parents=True)
    pq.write_table(pa.table({"jpg": [_jpeg(0), _jpeg(1)]}), folder / "part=b" / "0.parquet")
    pq.write_table(pa.table({"jpg": [_jpeg(2)]}), folder / "a.parquet")
    (folder / "_SUCCESS").write_text("")
    assert collect_inputs([folder]) == [f"{folder}/a.parquet#0", f"{folder}/part=b/0.parquet#0",
                                        f"{folder}/part=b/0.parquet#1"]
    (folder / "notes.txt").write_text("x")  # not only tables: scanned as an ordinary folder
    assert collect_inputs([folder])[-1] == str(folder / "part=b" / "0.parquet")


def test_dataset_splits(tmp_path):
    features = datasets.Features({"img": datasets.Image()})
    split = datasets.Dataset.from_dict({"img": [{"bytes": _jpeg(0), "path": None}]}, features=features)
    folder = tmp_path / "dd"
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(folder))
    with pytest.raises(MediaError, match="splits train, test: choose one with --split"):
        collect_inputs([folder])
    with pytest.raises(MediaError, match="no split 'dev'"):
        collect_inputs([folder], split="dev")
    assert collect_inputs([folder], split="test") == [f"{folder}[test]#0"]
    single = tmp_path / "single"
    split.save_to_disk(str(single))
    assert collect_inputs([single]) == [f"{single}#0"]
    assert load_image(f"{single}#0").size == SIZES[0]


def test_a_dataset_of_image_paths_lists_the_paths(tmp_path):
    """A text column with a path-like name: its paths are the inputs (relative ones from the dataset's folder)."""
    absolute = tmp_path / "b.jpg"
    absolute.write_bytes(_jpeg(1))
    split = datasets.Dataset.from_dict({"file_name": ["images/a.jpg", str(absolute), ""], "mos": [1.0, 2.0, 3.0]})
    folder = tmp_path / "ds"
    split.save_to_disk(str(folder))
    (folder / "images").mkdir()
    (folder / "images" / "a.jpg").write_bytes(_jpeg(0))
    inputs = collect_inputs([folder])
    assert inputs == [str(folder / "images" / "a.jpg"), str(absolute), f"{folder}#2"]
    assert [load_image(p).size for p in inputs[:2]] == [SIZES[0], SIZES[1]]
    with pytest.raises(MediaError, match=r"ds#2: no image in column 'file_name' \(the value is empty\)"):
        load_image(inputs[2])


def test_a_hub_dataset_takes_the_saved_dataset_path_through_load_dataset(tmp_path, monkeypatch):
    """The hub cannot be reached here: ``load_dataset`` is stood in for, to check what realqa asks of it and
    does with its answer (the same listing and reading as a saved dataset)."""
    features = datasets.Features({"image": datasets.Image()})
    rows = datasets.Dataset.from_dict({"image": [{"bytes": _jpeg(2), "path": None}, {"bytes": b"junk", "path": None}]},
                                      features=features)
    splits = datasets.DatasetDict({"train": rows, "test": rows})
    asked = []

    def load_dataset(name, split=None):
        asked.append((name, split))
        return splits[split] if split else splits

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    name = f"hf://datasets/someone/photos-{tmp_path.name}"  # a fresh name: opened datasets are cached per process
    with pytest.raises(MediaError, match="splits train, test: choose one with --split"):
        collect_inputs([name])
    inputs = collect_inputs([name], split="test")
    assert inputs == [f"{name}[test]#0", f"{name}[test]#1"] and asked[-1] == (f"someone/photos-{tmp_path.name}", "test")
    assert load_image(inputs[0]).size == SIZES[2]
    with pytest.raises(MediaError, match=r"\[test\]#1: not a recognised image format"):
        load_image(str(inputs[1]))  # as a plain string too


def test_brace_patterns_expand_in_order_and_a_lone_brace_is_a_path(tmp_path):
    for i in range(3):
        (tmp_path / f"p{i}.jpg").write_bytes(_jpeg(i))
    assert collect_inputs([str(tmp_path / "p{2,0}.jpg"), str(tmp_path / "p{0..1}.jpg")]) == [
        str(tmp_path / n) for n in ("p2.jpg", "p0.jpg", "p0.jpg", "p1.jpg")]
    assert collect_inputs([str(tmp_path / "odd{name.jpg")]) == [str(tmp_path / "odd{name.jpg")]
    (tmp_path / "real{1..2}.jpg").write_bytes(_jpeg(0))  # an existing file is that file, braces or not
    assert collect_inputs([str(tmp_path / "real{1..2}.jpg")]) == [str(tmp_path / "real{1..2}.jpg")]


def test_a_missing_extra_is_named_in_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "braceexpand", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"needs the 'webdataset' extra: pip install 'realqa\[webdataset\]'"):
        collect_inputs([str(tmp_path / "shard-{0..1}.tar")])


# ---------------------------------------------------------------- scoring


def _score(model: Path, inputs: list[str], out: Path, *extra: str) -> list[dict]:
    args = ["score", *inputs, "--model", str(model), "--device", "cpu", "--quiet", "--batch-size", "3", "--out", str(out)]
    assert main([*args, *extra]) == 0
    return _rows(out)


@pytest.mark.slow  # scores the inputs four times with the demo model
def test_containers_score_one_row_per_sample_in_order_like_the_same_files(containers, tmp_path):
    # The bundled demo model: its scores differ from image to image (the tiny random model's answers hold no number).
    model = demo_model_path()
    _, expected = containers
    rows = _score(model, list(expected), tmp_path / "containers.jsonl")
    want = [row for rows in expected.values() for row in rows]
    assert [r["path"] for r in rows] == [path for path, _ in want]  # one row per sample, in order

    # The tiny model's expected score differs between these images, so a sample scored as another image would show.
    assert len({round(r["ncm"], 6) for r in rows if r["ncm"] is not None}) >= 5
    references = sorted({str(w) for _, w in want if isinstance(w, Path)})
    by_file = {r["path"]: r for r in _score(model, references, tmp_path / "files.jsonl")}
    for row, (path, reference) in zip(rows, want):
        if isinstance(reference, Path):
            assert row["status"] != "error", row
            same = by_file[str(reference)]
            assert (row["score"], row["text"], row["status"]) == (same["score"], same["text"], same["status"])
            assert row["ncm"] == pytest.approx(same["ncm"], abs=1e-5)
        else:
            assert row["status"] == "error" and reference in row["error"] and row["error"].startswith(path), row

    # The Python API: what collect_inputs lists, and the same identities as plain strings, score the same.
    scorer = ModelOptions(model=str(model), device="cpu", batch_size=3).load()
    listed = realqa.collect_inputs(list(expected))
    for given in (listed, [str(i) for i in listed]):
        api = scorer.score(given)
        assert [(r.path, r.text, r.status, r.error) for r in api] == [(r["path"], r["text"], r["status"], r["error"])
                                                                      for r in rows]
        assert [r.ncm for r in api] == pytest.approx([r["ncm"] for r in rows], abs=1e-5)


@pytest.mark.slow  # scores with the tiny model in two worker processes
def test_containers_resume_and_decode_in_worker_processes(tiny_model_dir, containers, tmp_path, capsys):
    _, expected = containers
    inputs = list(expected)
    out = tmp_path / "run.jsonl"
    whole = _score(tiny_model_dir, inputs, out)
    out.write_text("".join(json.dumps(r) + "\n" for r in whole[:7]))  # a killed run wrote 7 rows
    capsys.readouterr()
    again = _score(tiny_model_dir, inputs, out, "--workers", "2")
    assert f"7 of {len(whole)} inputs were already scored" in capsys.readouterr().err
    assert [r["path"] for r in again] == [r["path"] for r in whole]
    for a, b in zip(again, whole):
        assert (a["score"], a["status"], a["error"]) == (b["score"], b["status"], b["error"])
    # another image column under the same row names is another run: refused, not resumed
    shards = tmp_path / "shards.jsonl"
    _score(tiny_model_dir, inputs[:1], shards)
    capsys.readouterr()
    assert main(["score", inputs[0], "--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--out", str(shards),
                 "--image-column", "jpg"]) == 2
    assert "image_column" in capsys.readouterr().err
