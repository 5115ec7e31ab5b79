"""``realqa score --backend ray``: Ray Data maps scorer actors over the inputs (a local Ray cluster, CPU)."""

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from realqa.cli import main
from realqa.models import demo_model_path
from realqa.results import journal_path, read_results
from test_distributed import _same
from test_resume import write_images
from test_sources import write_containers

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    # Logical CPUs: two actors, plus room for Ray Data's own tasks.
    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow  # a local Ray cluster and its actors
@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_ray_backend_writes_the_local_file_in_input_order_and_resumes(tiny_model_dir, tmp_path, ray_cluster, capsys,
                                                                      suffix):
    images = write_images(tmp_path / "images", 12)
    args = ["score", *images, "--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--batch-size", "2"]
    local = tmp_path / "local.jsonl"
    assert main([*args, "--out", str(local)]) == 0
    want = [json.loads(line) for line in local.read_text().splitlines()]

    out = tmp_path / f"ray{suffix}"  # a killed earlier run left 3 rows (a Parquet file's in its journal)
    rows_file = journal_path(out) if suffix == ".parquet" else out
    rows_file.write_text("".join(line + "\n" for line in local.read_text().splitlines()[:3]))
    shutil.copy(local.with_name(local.name + ".run.json"), out.with_name(out.name + ".run.json"))
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--backend", "ray", "--ray-actors", "2", "--ray-batch-size", "3"]) == 0
    err = capsys.readouterr().err
    assert f"3 of {len(images)} inputs were already scored" in err and "2 scorer actor(s)" in err
    if suffix == ".jsonl":
        _same([json.loads(line) for line in out.read_text().splitlines()], want)
    else:
        _same([result.to_row() for result in read_results(out).results], want)
        assert not journal_path(out).exists()


def test_ray_backend_refuses_torchrun(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    images = write_images(tmp_path / "images", 1)
    assert main(["score", *images, "--model", str(tiny_model_dir), "--out", str(tmp_path / "o.csv"),
                 "--backend", "ray"]) == 2
    assert "not under torchrun" in capsys.readouterr().err


@pytest.mark.slow  # a local Ray cluster and its actors, two runs of three Ray Data pipelines each
def test_ray_reads_shards_and_tables_itself_in_input_order_and_resumes(tmp_path, ray_cluster, capsys):
    """Tar shards and Parquet tables go to Ray Data's readers (the command line does not list them); the rows,
    broken samples included, are those of a one-process run, in the same order, and a killed run resumes
    from inside a shard and from inside a table."""
    inputs = list(write_containers(tmp_path)[1])  # two shards (a brace pattern), a table of bytes, a table of paths, a saved dataset
    # and a shard cut off inside its second sample: Ray Data's reader fails on it, realqa lists it and goes on
    whole = (tmp_path / "shard-000.tar").read_bytes()
    with tarfile.open(tmp_path / "shard-000.tar") as tar:
        second = [m for m in tar.getmembers() if m.name.startswith("a/001")][0]
    (tmp_path / "cut.tar").write_bytes(whole[: second.offset_data + second.size // 2])
    inputs.append(str(tmp_path / "cut.tar"))
    # The demo model: its scores differ from image to image, so a row given another sample's image would show.
    args = ["score", *inputs, "--model", str(demo_model_path()), "--device", "cpu", "--quiet", "--batch-size", "2"]
    local = tmp_path / "local.jsonl"
    assert main([*args, "--out", str(local)]) == 0
    want = [json.loads(line) for line in local.read_text().splitlines()]
    assert want[15]["path"].endswith("cut.tar#a/000") and want[15]["status"] != "error"
    assert all(r["status"] == "error" for r in want[16:]) and "truncated" in want[16]["error"]

    ray_args = [*args, "--backend", "ray", "--ray-actors", "1", "--ray-batch-size", "3"]
    out = tmp_path / "ray.jsonl"
    shutil.copy(local.with_name(local.name + ".run.json"), out.with_name(out.name + ".run.json"))
    for kept in (3, 7):  # killed inside the second shard (the rest read by Ray); inside the table of bytes
        out.write_text("".join(line + "\n" for line in local.read_text().splitlines()[:kept]))
        capsys.readouterr()
        assert main([*ray_args, "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert f"{kept} inputs were already scored" in err and "Ray Data could not read the tar shards" in err
        _same([json.loads(line) for line in out.read_text().splitlines()], want)


@pytest.mark.slow  # a local Ray cluster and its actors
def test_ray_adds_the_row_for_a_shard_cut_at_a_members_header_and_does_not_repeat_it(tiny_model_dir, tmp_path,
                                                                                      ray_cluster, capsys):
    """A shard cut exactly where a member's header starts reads, to Ray Data as to tarfile, as a shorter whole
    shard; the rows are still a one-process run's, the cut's own error row included, once after a resume."""
    write_containers(tmp_path)
    whole = (tmp_path / "shard-000.tar").read_bytes()
    with tarfile.open(tmp_path / "shard-000.tar") as tar:
        second = [m for m in tar.getmembers() if m.name.startswith("a/001")][0]
    (tmp_path / "cut.tar").write_bytes(whole[:second.offset])
    inputs = [str(tmp_path / "cut.tar"), str(tmp_path / "shard-001.tar")]
    args = ["score", *inputs, "--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--batch-size", "2"]
    local = tmp_path / "local.jsonl"
    assert main([*args, "--out", str(local)]) == 0
    want = [json.loads(line) for line in local.read_text().splitlines()]
    assert [r["path"] for r in want[:2]] == [f"{tmp_path}/cut.tar#a/000", f"{tmp_path}/cut.tar#"]
    assert want[1]["status"] == "error" and "no end-of-archive marker" in want[1]["error"]

    out = tmp_path / "ray.jsonl"
    shutil.copy(local.with_name(local.name + ".run.json"), out.with_name(out.name + ".run.json"))
    for kept in (0, 2):  # from the start; killed just after the cut's row
        out.write_text("".join(line + "\n" for line in local.read_text().splitlines()[:kept]))
        assert main([*args, "--out", str(out), "--backend", "ray", "--ray-actors", "1", "--ray-batch-size", "3"]) == 0
        assert "Ray Data could not read" not in capsys.readouterr().err  # Ray read the cut shard itself
        _same([json.loads(line) for line in out.read_text().splitlines()], want)


@pytest.mark.slow  # a local Ray cluster and its actors
def test_ray_gives_a_folder_loop_the_rows_a_local_run_gives(tiny_model_dir, tmp_path, ray_cluster):
    """A folder the scan does not enter (a link back to a folder holding it) is the same error row, with its
    reason, whichever backend scores it."""
    folder = tmp_path / "photos"
    write_images(folder, 2)
    (folder / "again").symlink_to(folder, target_is_directory=True)
    args = ["score", str(folder), "--model", str(tiny_model_dir), "--device", "cpu", "--quiet"]
    local, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main([*args, "--out", str(local)]) == 0
    assert main([*args, "--out", str(out), "--backend", "ray", "--ray-actors", "1"]) == 0
    want = [json.loads(line) for line in local.read_text().splitlines()]
    loop = [r for r in want if r["path"] == str(folder / "again")]
    assert len(want) == 4 and len(loop) == 1 and "(a loop)" in loop[0]["error"]  # 2 images, 1 bad file, the loop
    _same([json.loads(line) for line in out.read_text().splitlines()], want)


@pytest.mark.slow  # a local Ray cluster and its actors
def test_ray_scores_a_table_whose_image_column_is_named_path(tiny_model_dir, tmp_path, ray_cluster):
    """Ray's Parquet reader adds a column "path" of its own (the run used to stop on the duplicate name):
    such a table is listed and its rows read one by one, giving a one-process run's rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = write_images(tmp_path / "images", 3)
    table = tmp_path / "named-path.parquet"
    pq.write_table(pa.table({"path": [Path(p).read_bytes() for p in images] + [b"not an image"]}), table)
    args = ["score", str(table), "--model", str(tiny_model_dir), "--device", "cpu", "--quiet"]
    local, out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert main([*args, "--out", str(local)]) == 0
    assert main([*args, "--out", str(out), "--backend", "ray", "--ray-actors", "1"]) == 0
    want = [json.loads(line) for line in local.read_text().splitlines()]
    assert [r["path"] for r in want] == [f"{table}#{n}" for n in range(len(images) + 1)]
    assert want[0]["status"] != "error" and want[-1]["status"] == "error"
    _same([json.loads(line) for line in out.read_text().splitlines()], want)


def test_resume_recognises_shard_rows_by_key_and_table_rows_by_index(tmp_path):
    """What a rerun reads again after a kill, decided from --out alone (no Ray, no shard listed)."""
    from realqa.ray_backend import FILES, _resume, _runs
    from realqa.results import ScoreResult
    from realqa.sources import SampleRef, Unlisted

    inputs = ["a.jpg", Unlisted("tar", "s0.tar"), Unlisted("tar", "s1.tar"), Unlisted("parquet", "t.parquet", "jpg", 3),
              "b.jpg"]
    out = tmp_path / "out.jsonl"

    def left_after(*paths):
        out.write_text("".join(json.dumps(ScoreResult.failed(p, "quality", "x").to_row()) + "\n" for p in paths))
        done, left = _resume(out, _runs(inputs))
        assert [r.path for r in done] == list(paths)
        return [(run.kind, [str(i) for i in run.inputs], sorted(run.skip)) for run in left]

    every = [("files", ["a.jpg"], []), ("tar", ["s0.tar", "s1.tar"], []), ("parquet", ["t.parquet"], []),
             ("files", ["b.jpg"], [])]
    assert left_after() == every
    assert left_after("a.jpg") == every[1:]
    # killed inside the second shard: it is read again without the keys already written
    assert left_after("a.jpg", "s0.tar#k1", "s0.tar#k2", "s1.tar#k1") == [("tar", ["s1.tar"], ["k1"]), *every[2:]]
    # killed inside the table: its other rows by name (each actor reads them), then the rest
    assert left_after("a.jpg", "s0.tar#k1", "s1.tar#k1", "t.parquet#0") == [
        (FILES, ["t.parquet#1", "t.parquet#2"], []), every[3]]
    begun = _resume(out, _runs(inputs))[1][0].inputs[0]
    assert isinstance(begun, SampleRef) and begun.column == "jpg"
    assert left_after("a.jpg", "s0.tar#k1", "t.parquet#0", "t.parquet#1", "t.parquet#2", "b.jpg") == []
    for wrong in (["b.jpg"], ["a.jpg", "t.parquet#1"], ["a.jpg", "s1.tar#k", "s0.tar#k"]):
        with pytest.raises(ValueError, match="is not the next input of this run"):
            left_after(*wrong)
