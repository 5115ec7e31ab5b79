"""``realqa score --backend ray``: score on a Ray cluster, many machines and GPUs, one output file.

A Ray Data pipeline maps :class:`ScoreActor` (each actor holds one model, on one GPU where the
cluster has GPUs) over the dataset of inputs not yet in ``--out``. Actors return rows with their
input index; the driver puts them back in input order and appends them to ``--out`` as they come,
so a killed driver resumes like a one-process run. Input paths must be readable on every node
(a shared file system, or object-store mounts). Needs the optional extra: ``pip install 'realqa[ray]'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence

from .results import ResumableOutput, ScoreResult

__all__ = ["ScoreActor", "score_with_ray"]

# The ``realqa score`` options an actor needs to build its scorer and ask its questions.
ACTOR_OPTIONS = ("model", "adapter", "card", "device", "dtype", "batch_size", "min_pixels", "max_pixels",
                 "preprocessing", "quantize", "workers", "group_batches", "attention", "compile", "task", "decimals",
                 "attributes", "cot", "video_mode", "frames", "fps", "quiet")


class ScoreActor:
    """Holds one scorer; maps a batch ``{"index", "path"}`` to ``{"index", "row"}`` (rows as JSON)."""

    def __init__(self, options: dict):
        from .commands import load_scorer_from_args

        self.args = argparse.Namespace(**options)
        self.scorer = load_scorer_from_args(self.args)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from .commands import score_inputs

        paths = [str(p) for p in batch["path"]]
        rows = [json.dumps(r.to_row(), ensure_ascii=False)
                for r in score_inputs(self.scorer, self.args, paths, None, shown=False)]
        return {"index": np.asarray(batch["index"]), "row": np.array(rows, dtype=object)}


def score_with_ray(args: argparse.Namespace, inputs: Sequence[str], done: list[ScoreResult],
                   output: ResumableOutput | None, *, log: Callable[[str], None]) -> list[ScoreResult]:
    """Score ``inputs[len(done):]`` on Ray; rows appended to ``output`` in input order as they come."""
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray Data: pip install 'realqa[ray]'") from None
    from tqdm import tqdm

    from .video import is_video

    start = len(done)
    if start == len(inputs):
        return []
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        per_actor = args.ray_gpus_per_actor if args.ray_gpus_per_actor is not None else (1 if gpus else 0)
        actors = args.ray_actors or (max(1, int(gpus // per_actor)) if per_actor else 1)
        if any(is_video(p) for p in inputs[start:]):
            log("note: a Ray run writes no per-frame side file for videos; each clip's row has its mean")
        log(f"ray: {actors} scorer actor(s), {per_actor} GPU each; cluster {ray.cluster_resources()}")
        options = {name: getattr(args, name) for name in ACTOR_OPTIONS}
        dataset = ray.data.from_items([{"index": i, "path": inputs[i]} for i in range(start, len(inputs))])
        scored = dataset.map_batches(
            ScoreActor, fn_constructor_kwargs={"options": options}, batch_format="numpy",
            batch_size=args.ray_batch_size or args.batch_size * args.group_batches * 8,  # several windows a call
            num_gpus=per_actor, compute=ray.data.ActorPoolStrategy(size=actors))
        writer = output.writer(_attribute_names(args)) if output else None
        results: list[ScoreResult] = []
        waiting: dict[int, ScoreResult] = {}  # rows that came before an earlier input's: the reorder buffer
        progress = tqdm(total=len(inputs), initial=start, unit="input", disable=args.quiet or None, file=sys.stderr)
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


def _attribute_names(args) -> list[str]:
    """The CSV attribute columns: those of the model's card, as the actors ask them."""
    if not (args.attributes or args.cot):
        return []
    from .model import read_card

    card = read_card(args.adapter) or read_card(args.model)
    return [name for name in card.attributes if name in card.tasks] if card else []
