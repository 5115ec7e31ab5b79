"""``realqa score --backend ray``: score on a Ray cluster, many machines and GPUs, one output file.

A Ray Data pipeline maps :class:`ScoreActor` (each actor holds one model, on one GPU where the
cluster has GPUs) over the dataset of inputs not yet in ``--out``. Actors return rows with their
input index; the driver puts them back in input order and appends them to ``--out`` as they come,
so a killed driver resumes like a one-process run. Input paths must be readable on every node
(a shared file system, or object-store mounts). Needs the optional extra: ``pip install 'realqa[ray]'``.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

from .job import ScoreJob, iter_rows
from .results import ResumableOutput, ScoreResult

__all__ = ["ScoreActor", "score_with_ray"]


class ScoreActor:
    """Holds one scorer; maps a batch ``{"index", "path"}`` to ``{"index", "row"}`` (rows as JSON)."""

    def __init__(self, job: ScoreJob):
        self.job = job
        self.scorer = job.model.load()

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        paths = [str(p) for p in batch["path"]]
        rows = [json.dumps(r.to_row(), ensure_ascii=False) for r in iter_rows(self.scorer, self.job, paths, shown=False)]
        return {"index": np.asarray(batch["index"]), "row": np.array(rows, dtype=object)}


def score_with_ray(job: ScoreJob, done: list[ScoreResult], output: ResumableOutput | None, *,
                   log: Callable[[str], None]) -> list[ScoreResult]:
    """Score ``job.inputs[len(done):]`` on Ray; rows appended to ``output`` in input order as they come."""
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray Data: pip install 'realqa[ray]'") from None
    from tqdm import tqdm

    from .media import is_video

    inputs = list(job.inputs)
    start = len(done)
    if start == len(inputs):
        return []
    names = job.check()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=job.ray.address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = job.ray.gpus_per_actor if job.ray.gpus_per_actor is not None else (1 if gpus else 0)
        actors = job.ray.actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
        if any(is_video(p) for p in inputs[start:]):
            log("note: a Ray run writes no per-frame side file for videos; each clip's row has its mean")
        log(f"ray: {actors} scorer actor(s), {per_actor} GPU each; cluster {ray.cluster_resources()}")
        dataset = ray.data.from_items([{"index": i, "path": inputs[i]} for i in range(start, len(inputs))])
        scored = dataset.map_batches(
            ScoreActor, fn_constructor_kwargs={"job": job}, batch_format="numpy",
            batch_size=job.ray.batch_size or job.model.batch_size * job.model.group_batches * 8,  # several windows a call
            num_gpus=per_actor, compute=ray.data.ActorPoolStrategy(size=actors))
        writer = output.writer(names) if output else None
        results: list[ScoreResult] = []
        waiting: dict[int, ScoreResult] = {}  # rows that came before an earlier input's: the reorder buffer
        progress = tqdm(total=len(inputs), initial=start, unit="input", disable=not job.progress or None, file=sys.stderr)
        try:
            for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
                for index, row in zip(batch["index"], batch["row"]):
                    waiting[int(index)] = ScoreResult.from_row(json.loads(row))
                while start + len(results) in waiting:
                    result = waiting.pop(start + len(results))
                    results.append(result)
                    if writer:
                        writer.write(result)
                    progress.update()
        finally:
            progress.close()
            if writer:
                writer.close()
        if len(results) != len(inputs) - start:
            raise RuntimeError(f"Ray returned {len(results)} of {len(inputs) - start} rows")
        return results
    finally:
        if started_here:
            ray.shutdown()
