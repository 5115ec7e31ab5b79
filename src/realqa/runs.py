"""``realqa score`` runs: inputs -> one results file, resumable, on one process, many ranks or Ray.

- One process: results are appended to ``--out`` in input order as they arrive (one flushed write
  per row), so a killed run loses at most the rows in flight; rerunning the same command skips the
  inputs already in the file (:class:`realqa.results.ResumableOutput`).
- ``torchrun`` / ``accelerate launch``: the inputs not yet done are shared out across the ranks
  (:func:`score_distributed`); rank 0 merges the ranks' parts into ``--out`` in input order.
- ``--backend ray``: :mod:`realqa.ray_backend` maps scorer actors over the inputs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from .results import ResumableOutput, ScoreResult

__all__ = ["run_settings", "score_run"]


def run_settings(args: argparse.Namespace) -> dict:
    """What decides a result row's content, recorded beside ``--out`` so a resume cannot mix two
    settings in one file. (Batch size, workers, device and backend change only the speed.)"""
    from .model import _resolve_dtype, default_device

    device = args.device or default_device()
    return {
        "model": _identity(args.model) if args.model else "default (tiny random model)",
        "adapter": _identity(args.adapter) if args.adapter else None,
        "task": args.task,
        "decimals": args.decimals,
        "attributes": bool(args.attributes),
        "cot": bool(args.cot),
        "dtype": str(_resolve_dtype(args.dtype, device)).removeprefix("torch."),
        "min_pixels": args.min_pixels,
        "max_pixels": args.max_pixels,
        "video_mode": args.video_mode,
        "frames": args.frames,
        "fps": args.fps,
    }


def _identity(model: str) -> str:
    """A local folder by its absolute path (the same folder named two ways is one model); a hub id as given."""
    return str(Path(model).resolve()) if os.path.exists(model) else model


def score_run(args: argparse.Namespace, inputs: Sequence[str], *, log: Callable[[str], None]) -> list[ScoreResult]:
    """Score ``inputs`` as the ``realqa score`` options say; every input's result, in input order."""
    if args.out is None:
        return _score_rows(args, list(inputs), [], None, log=log)
    output = ResumableOutput(args.out, run_settings(args))
    frames_file = _frames_file(args.out)
    if args.overwrite:
        output.remove()
        frames_file.unlink(missing_ok=True)
    output.check()
    done = output.completed(inputs)
    if done:
        log(f"resuming {args.out}: {len(done)} of {len(inputs)} inputs were already scored")
    return done + _score_rows(args, list(inputs[len(done):]), done, output, log=log)


def _score_rows(args, remaining: list[str], done: list[ScoreResult], output: ResumableOutput | None, *,
                log: Callable[[str], None]) -> list[ScoreResult]:
    """Score ``remaining`` in this process, appending each row to ``output`` as it comes."""
    if not remaining:
        return []
    from tqdm import tqdm

    from .commands import load_scorer_from_args, video_options
    from .video import FrameWriter, is_video, iter_with_videos

    scorer = load_scorer_from_args(args)
    writer = output.writer(_attribute_names(scorer, args)) if output else None
    frames = None
    if output is not None and any(map(is_video, remaining)):
        frames = FrameWriter(_frames_file(output.path), keep=[r.path for r in done if is_video(r.path)])
    results = []
    progress = tqdm(total=len(done) + len(remaining), initial=len(done), unit="input",
                    disable=args.quiet or None, file=sys.stderr)
    try:
        rows = iter_with_videos(scorer, remaining, args.task, decimals=args.decimals, video=video_options(args),
                                on_video=frames.write if frames else None, cot=args.cot, attributes=args.attributes)
        for result in rows:
            results.append(result)
            if writer:
                writer.write(result)
            progress.update()
    finally:
        progress.close()
        for file in (writer, frames):
            if file:
                file.close()
    return results


def _attribute_names(scorer, args) -> list[str]:
    return [a.name for a in scorer.attributes] if (args.attributes or args.cot) else []


def _frames_file(out: str | os.PathLike) -> Path:
    from .video import FrameWriter

    return FrameWriter.beside(out)
