"""``realqa score`` under torchrun: ranks share the inputs, rank 0 merges one file in input order."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from realqa.cli import main
from realqa.results import journal_path, read_results
from test_resume import write_images

pytestmark = pytest.mark.slow  # torchrun processes


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _same(got: list[dict], want: list[dict], skip=()) -> None:
    assert [r["path"] for r in got] == [r["path"] for r in want]  # every input once, in input order
    for i, (a, b) in enumerate(zip(got, want)):
        if i in skip:
            continue
        same_rows(a, b)


def same_rows(a: dict, b: dict) -> None:
    """Two runs' rows of one input: equal, but for the last float bits of the values the digit
    probabilities give (another batch, another process: other kernel sums)."""
    close = ("ncm", "ncm_std")
    assert {k: v for k, v in a.items() if k not in close} == {k: v for k, v in b.items() if k not in close}
    for key in close:
        assert (a.get(key) is None) == (b.get(key) is None)
        if b.get(key) is not None:
            assert a[key] == pytest.approx(b[key], abs=1e-5)


def _killed_run(reference: Path, out: Path, want: list[dict]) -> None:
    """What a killed distributed run leaves: 3 rows merged into ``out``, and rank 1's part holding
    input 6 (marked, to see that it is reused, not scored again) and a torn row."""
    out.write_text("".join(line + "\n" for line in reference.read_text().splitlines()[:3]))
    shutil.copy(reference.with_name(reference.name + ".run.json"), out.with_name(out.name + ".run.json"))
    planted = {"index": 6, **want[6], "text": "planted"}
    out.with_name(out.name + ".part-1.jsonl").write_text(json.dumps(planted) + "\n" + '{"index": 7, "pa')


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    images = write_images(folder / "images", 12)
    args = ["score", *images, "--model", str(tiny_model_dir), "--device", "cpu", "--quiet", "--batch-size", "2"]
    out = folder / "one.jsonl"
    assert main([*args, "--out", str(out)]) == 0
    return args, out, _rows(out)


def test_two_ranks_give_the_one_process_file_and_resume(reference, tmp_path):
    args, one, want = reference
    out = tmp_path / "two.jsonl"
    _killed_run(one, out, want)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "realqa.cli", *args, "--out", str(out)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"4 of {len(want)} inputs were already scored" in run.stderr
    got = _rows(out)
    _same(got, want, skip={6})
    assert got[6]["text"] == "planted"  # a whole row in a part is kept, not scored again
    assert not list(tmp_path.glob("two.jsonl.part-*"))


def test_one_process_finishes_a_killed_distributed_run(reference, tmp_path, capsys):
    args, one, want = reference
    out = tmp_path / "again.jsonl"
    _killed_run(one, out, want)
    assert main([*args, "--out", str(out)]) == 0
    assert f"4 of {len(want)} inputs were already scored" in capsys.readouterr().err
    got = _rows(out)
    _same(got, want, skip={6})
    assert got[6]["text"] == "planted"
    assert not list(tmp_path.glob("again.jsonl.part-*"))


def test_one_process_finishes_a_killed_distributed_run_into_parquet(reference, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    args, one, want = reference
    out = tmp_path / "again.parquet"
    _killed_run(one, journal_path(out), want)  # a Parquet file's merged rows wait in its journal
    journal_path(out).with_name(journal_path(out).name + ".run.json").rename(out.with_name(out.name + ".run.json"))
    journal_path(out).with_name(journal_path(out).name + ".part-1.jsonl").rename(out.with_name(out.name + ".part-1.jsonl"))
    assert main([*args, "--out", str(out)]) == 0
    assert f"4 of {len(want)} inputs were already scored" in capsys.readouterr().err
    got = [result.to_row() for result in read_results(out).results]
    _same(got, want, skip={6})
    assert got[6]["text"] == "planted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.parquet", "again.parquet.lock", "again.parquet.run.json"]


def test_parts_of_other_inputs_are_refused(reference, tmp_path, capsys):
    args, one, want = reference
    out = tmp_path / "odd.jsonl"
    _killed_run(one, out, want)
    part = out.with_name(out.name + ".part-1.jsonl")
    part.write_text(json.dumps({"index": 5, **want[6]}) + "\n")
    assert main([*args, "--out", str(out)]) == 2
    assert "does not match this run's inputs" in capsys.readouterr().err


def test_ranks_share_gpus_when_there_are_more_ranks_than_gpus(monkeypatch):
    from realqa.runner import Ranks

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    ranks = Ranks.from_env()
    assert (ranks.rank, ranks.world, ranks.local_rank, ranks.local_world) == (3, 4, 3, 4)
    assert ranks.gpu(4) == (3, "nccl")  # one GPU each
    assert ranks.gpu(2) == (1, "gloo")  # two ranks per GPU: NCCL would refuse the duplicate device
    assert ranks.gpu(1) == (0, "gloo")
    assert Ranks(1, 2, 1).gpu(2) == (1, "nccl")  # without LOCAL_WORLD_SIZE: all ranks on this machine
    with pytest.raises(ValueError, match="none is visible"):
        ranks.gpu(0)
