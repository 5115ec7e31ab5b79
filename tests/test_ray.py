"""``realqa score --backend ray``: Ray Data maps scorer actors over the inputs (a local Ray cluster, CPU)."""

import json
import shutil

import pytest

from realqa.cli import main
from realqa.results import journal_path, read_results
from test_distributed import _same
from test_resume import write_images

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
