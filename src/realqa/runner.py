"""The runner: a :class:`~realqa.job.ScoreJob` -> one row per input, in input order, resumable.

- One process: results are appended to the job's ``out`` in input order as they arrive (one flushed
  write per row), so a killed run loses at most the rows in flight; rerunning the same job skips the
  inputs already in the file (:class:`realqa.results.ResumableOutput`).
- ``torchrun`` / ``accelerate launch``: the inputs not yet done are shared out across the ranks
  (:func:`score_distributed`); rank 0 merges the ranks' parts into ``out`` in input order.
- ``backend="ray"``: :mod:`realqa.ray_backend` maps scorer actors over the inputs not yet done, on
  a Ray cluster; the driver appends their rows to ``out`` in input order.

Before any file is created the job's settings are checked against an existing ``out`` and the
model is loaded and asked whether it knows the task and decimals, so a refused run leaves nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from .job import ScoreJob, iter_rows
from .results import ResumableOutput, ScoreResult

__all__ = ["run"]


def run(job: ScoreJob, *, log: Callable[[str], None]) -> list[ScoreResult] | None:
    """Score ``job.inputs``; every input's result, in input order.

    Under ``torchrun`` only rank 0 returns them (the other ranks return None).
    """
    if not job.inputs:
        raise ValueError("no inputs to score")
    job.check()  # an unknown task or impossible decimals: refused before any file exists
    ranks = Ranks.from_env()
    if ranks is not None and job.backend == "ray":
        raise ValueError("--backend ray runs its own workers; start it once, not under torchrun")
    if job.out is None:
        if ranks is not None:
            raise ValueError("a distributed run (torchrun / accelerate launch) needs --out: the ranks' rows merge into it")
        return _score_here(job, None, log)
    if ranks is not None and ranks.rank != 0:
        return score_distributed(job, ranks, log=log)  # rank 0 holds the lock for the whole job
    output = ResumableOutput(job.out, job.settings())
    with output.lock():  # one writer per output file; released by the OS if this process is killed
        if ranks is not None or part_files(output.path):  # (a killed distributed run: reuse its parts too)
            return score_distributed(job, ranks or Ranks(0, 1, 0), log=log)
        return _score_here(job, output, log)


def _score_here(job: ScoreJob, output: ResumableOutput | None, log: Callable[[str], None]) -> list[ScoreResult]:
    """This process (or the Ray driver): the rows already in ``output`` reused, the others scored."""
    inputs = list(job.inputs)
    if output is not None:
        if job.overwrite:
            output.remove()
            _frames_file(output.path).unlink(missing_ok=True)
        output.check()
    if job.backend == "ray":  # it matches the rows in output itself: tar shards are listed on the cluster, not here
        from .ray_backend import score_with_ray

        return score_with_ray(job, output, log=log)
    done = output.completed(inputs) if output is not None else []
    if done:
        log(f"resuming {job.out}: {len(done)} of {len(inputs)} inputs were already scored")
    return done + _score_rows(job, inputs[len(done):], done, output)


def _score_rows(job: ScoreJob, remaining: list[str], done: list[ScoreResult],
                output: ResumableOutput | None) -> list[ScoreResult]:
    """Score ``remaining`` in this process, appending each row to ``output`` as it comes."""
    if not remaining:
        return []
    from .media import is_video
    from .video import FrameWriter

    scorer = job.model.load()
    writer = output.writer(job.check()) if output else None
    frames = None
    if output is not None and any(map(is_video, remaining)):
        frames = FrameWriter(_frames_file(output.path), keep=[r.path for r in done if is_video(r.path)])
    results = []
    try:
        for result in iter_rows(scorer, job, remaining, on_video=frames.write if frames else None, done=len(done)):
            results.append(result)
            if writer:
                writer.write(result)
    finally:
        for file in (writer, frames):
            if file:
                file.close()
    return results


def _frames_file(out: str | os.PathLike) -> Path:
    from .video import FrameWriter

    return FrameWriter.beside(out)


# ---------------------------------------------------------------- torchrun / accelerate launch


class Ranks:
    """This process's place in a ``torchrun`` / ``accelerate launch`` job (both set these variables)."""

    def __init__(self, rank: int, world: int, local_rank: int, local_world: int | None = None):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.local_world = local_world or world  # ranks on this machine

    @classmethod
    def from_env(cls) -> "Ranks | None":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                   int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or None)

    def gpu(self, device_count: int) -> tuple[int, str]:
        """This rank's GPU index and the process-group backend. More ranks than GPUs share them (rank
        modulo count); NCCL refuses two ranks on one GPU, so those groups talk over gloo."""
        if device_count < 1:
            raise ValueError("a CUDA device was asked for but none is visible")
        return self.local_rank % device_count, "nccl" if self.local_world <= device_count else "gloo"


def part_files(out: Path) -> list[Path]:
    """The ranks' part files of a distributed run into ``out`` (any world size, left by any run)."""
    return sorted(out.parent.glob(f"{out.name}.part-*.jsonl"))


def score_distributed(job: ScoreJob, ranks: Ranks, *, log: Callable[[str], None]) -> list[ScoreResult] | None:
    """Each rank scores its share of the inputs not yet done into ``OUT.part-RANK.jsonl`` (rows with
    their input index, appended as they come); then rank 0 appends them to ``--out`` in input order
    and removes the parts. Killed anywhere, a rerun (with any number of ranks) reuses every whole row
    in ``--out`` and in the parts."""
    import datetime
    from dataclasses import replace

    import torch
    import torch.distributed as dist

    from .media import is_video

    inputs = list(job.inputs)
    group = ranks.world > 1  # else one process finishing a killed distributed run
    device = job.model.device
    if group:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        backend = "gloo"
        if device.startswith("cuda"):
            index, backend = ranks.gpu(torch.cuda.device_count())
            device = f"cuda:{index}"
            torch.cuda.set_device(index)
        job = replace(job, model=replace(job.model, device=device))
        if not dist.is_initialized():
            # Long timeout: ranks wait at the final barrier while the slowest finishes its share.
            dist.init_process_group(backend, timeout=datetime.timedelta(hours=24))
    try:
        plan: list = [None]
        if ranks.rank == 0:
            try:
                plan[0] = _plan(job, inputs, log)
            except (ValueError, OSError) as err:
                plan[0] = err
        if group:
            dist.broadcast_object_list(plan, src=0)  # one rank decides what is left; all follow
        if isinstance(plan[0], Exception):
            if ranks.rank == 0:
                raise plan[0]
            return None
        remaining = plan[0]
        share = remaining[ranks.rank::ranks.world]  # strided: a sorted folder's big and small images spread out
        if ranks.rank == 0 and any(is_video(inputs[i]) for i in remaining):
            log("note: a distributed run writes no per-frame side file for videos; each clip's row has its mean")
        if share:
            scorer = job.model.load()
            part = Path(job.out).with_name(f"{Path(job.out).name}.part-{ranks.rank}.jsonl")
            with open(part, "a", encoding="utf-8") as f:
                rows = iter_rows(scorer, job, [inputs[i] for i in share], shown=ranks.rank == 0)
                for index, result in zip(share, rows):
                    f.write(json.dumps({"index": index, **result.to_row()}, ensure_ascii=False) + "\n")
                    f.flush()
        if group:
            dist.barrier()
        if ranks.rank != 0:
            return None
        return _merge(job, inputs)
    finally:
        if group:
            dist.destroy_process_group()


def _plan(job: ScoreJob, inputs: Sequence[str], log) -> list[int]:
    """Rank 0: check and repair ``--out`` and the parts; the indices of the inputs left to score."""
    output = ResumableOutput(job.out, job.settings())
    if job.overwrite:
        output.remove()
        for part in part_files(output.path):
            part.unlink()
    output.check()
    if not output.exists() and part_files(output.path):
        raise ValueError(f"{output.path}.part-*.jsonl are left from another run; pass --overwrite to start again")
    done = output.completed(inputs)
    parted = _part_rows(output.path, inputs, repair=True)
    output.begin()  # --out and its run file exist from now on: the parts are made with these settings
    remaining = [i for i in range(len(done), len(inputs)) if i not in parted]
    if done or parted:
        log(f"resuming {job.out}: {len(done) + len([i for i in parted if i >= len(done)])} of {len(inputs)} inputs "
            "were already scored")
    return remaining


def _part_rows(out: Path, inputs: Sequence[str], *, repair: bool = False) -> dict[int, ScoreResult]:
    from .results import read_results

    rows: dict[int, ScoreResult] = {}
    for part in part_files(out):
        stored = read_results(part, complete_only=True, repair=repair)
        for result, others in zip(stored.results, stored.others):
            index = others.get("index")
            if not isinstance(index, int) or not 0 <= index < len(inputs) or inputs[index] != result.path:
                raise ValueError(f"{part}: a row for {result.path!r} at input {index} does not match this run's "
                                 "inputs; pass --overwrite to start again")
            rows[index] = result
    return rows


def _merge(job: ScoreJob, inputs: Sequence[str]) -> list[ScoreResult]:
    """Rank 0: the parts' rows into ``--out`` in input order, then the parts go."""
    output = ResumableOutput(job.out, job.settings())
    done = output.completed(inputs)  # a merge killed half way left more rows here: they stay
    parted = _part_rows(output.path, inputs)
    missing = [inputs[i] for i in range(len(done), len(inputs)) if i not in parted]
    if missing:
        raise ValueError(f"{len(missing)} inputs have no row after the ranks finished (first: {missing[0]}); "
                         "rerun the same command to score them")
    merged = [parted[i] for i in range(len(done), len(inputs))]
    names = list(dict.fromkeys(n for r in done + merged for n in (r.attributes or {})))
    with output.writer(names) as writer:
        for result in merged:
            writer.write(result)
    for part in part_files(output.path):
        part.unlink()
    return done + merged
