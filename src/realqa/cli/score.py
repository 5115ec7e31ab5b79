"""``realqa score``: flags -> a :class:`~realqa.job.ScoreJob` -> the runner -> a ranked table."""

from __future__ import annotations

import sys
from dataclasses import replace

from ..job import ScoreJob, TaskOptions
from .options import (
    add_backend_arguments,
    add_model_arguments,
    add_source_arguments,
    add_video_arguments,
    model_options,
    ray_options,
    video_options,
)


def add_command(commands) -> None:
    score = commands.add_parser("score", help="score images, folders or manifests")
    score.add_argument("paths", nargs="+", help="image files, folders (searched recursively), manifests (.txt/.csv/.jsonl), "
                       "WebDataset tar shards (brace patterns: shard-{000..127}.tar), Parquet files or folders, saved "
                       "Hugging Face datasets (save_to_disk folders) or hub datasets (hf://datasets/owner/name)")
    add_source_arguments(score)
    score.add_argument("--task", default="quality", help="task to score (default: quality)")
    score.add_argument("--decimals", type=int, help="decimals in the answer (default: the model card's)")
    score.add_argument("--attributes", action="store_true",
                       help="also ask every fine-grained attribute the model knows (one column each)")
    score.add_argument("--cot", action="store_true",
                       help="chain of thought: reason over the attributes, then give the score in <...>")
    score.add_argument("--out", help="write rows to FILE.csv, FILE.jsonl or FILE.parquet (one row per input, in input order), each as "
                       "it comes; rerunning the same command resumes a killed run")
    score.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    score.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    add_model_arguments(score)
    add_backend_arguments(score)
    add_video_arguments(score)
    score.set_defaults(run=_score)


def score_job(args, inputs) -> ScoreJob:
    """The job the flags describe (every value checked here, before anything is loaded or written)."""
    return ScoreJob(inputs, model=model_options(args),
                    ask=TaskOptions(task=args.task, decimals=args.decimals, attributes=args.attributes, cot=args.cot),
                    video=video_options(args), out=args.out, overwrite=args.overwrite, backend=args.backend,
                    ray=ray_options(args), progress=not args.quiet, image_column=args.image_column, split=args.split)


def _score(args) -> int:
    from ..conversations import is_conversation_file
    from ..media import collect_inputs
    from ..results import STATUS_ERROR
    from ..runner import run

    conversation_files = [p for p in args.paths if is_conversation_file(p)]
    if conversation_files:
        raise ValueError(f"{conversation_files[0]} is a LLaMA-Factory conversation file, not images: `realqa bench "
                         "--conversations FILE --media-dir DIR` scores each example with its own question (one "
                         "prediction row each); `realqa data card FILE --out DIR` then `--card DIR` asks its question "
                         "of any images")
    job = score_job(args, ())  # the flags first: a bad value is refused before the folders are even read
    # With Ray, tar shards and Parquet tables stay whole: Ray Data's readers list them on the cluster.
    inputs = collect_inputs(args.paths, image_column=args.image_column, split=args.split, unlisted=args.backend == "ray")
    if not inputs:
        raise ValueError("no inputs found in " + ", ".join(args.paths))
    results = run(replace(job, inputs=tuple(inputs)), log=lambda message: print(message, file=sys.stderr))
    if results is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    attribute_names = list(dict.fromkeys(name for r in results for name in (r.attributes or {})))
    if not args.quiet:
        _print_ranking(results, attribute_names)
    errors = sum(r.status == STATUS_ERROR for r in results)
    unparsed = sum(r.score is None and r.status != STATUS_ERROR for r in results)
    summary = f"{len(results)} inputs: {len(results) - errors - unparsed} scored, {unparsed} without a parsable score, {errors} errors"
    print(summary + (f"; rows in {args.out}" if args.out else ""), file=sys.stderr)
    # Every input failed to be read (a mistyped folder, a wrong mount): a script must see it without reading rows.
    return 1 if errors == len(results) else 0


def _print_ranking(results, attribute_names=()) -> None:
    """Scored rows best first (equal scores by their NCM, the finer value), then rows without a score
    (unparsed answers and errors). ``+-`` is the NCM's standard deviation (``ncm_std``)."""
    scored = sorted((r for r in results if isinstance(r.score, (int, float))),
                    key=lambda r: (-r.score, -(r.ncm if r.ncm is not None else float("-inf"))))
    rest = [r for r in results if not isinstance(r.score, (int, float))]
    width = min(60, max((len(r.path) for r in results), default=4))
    print(f"{'rank':>4}  {'score':>6}  {'ncm':>6}  {'+-':>5}  {'path':<{width}}  "
          + "".join(f"{n[:12]:<13}" for n in attribute_names) + "note")
    for rank, r in enumerate(scored, 1):
        ncm = f"{r.ncm:6.3f}" if r.ncm is not None else f"{'':>6}"
        spread = f"{r.ncm_std:5.2f}" if r.ncm_std is not None else f"{'':>5}"
        note = "" if r.status == "ok" else r.status
        cells = "".join(f"{_attribute_cell(r, n):<13}" for n in attribute_names)
        print(f"{rank:>4}  {r.score:6.2f}  {ncm}  {spread}  {_shorten(r.path, width):<{width}}  {cells}{note}")
    for r in rest:
        note = r.error or f"{r.status}: {r.text!r}"
        print(f"{'-':>4}  {'-':>6}  {'':>6}  {'':>5}  {_shorten(r.path, width):<{width}}  {note}")


def _attribute_cell(result, name: str) -> str:
    entry = (result.attributes or {}).get(name)
    if entry is None:
        return "-"
    value = "?" if entry["value"] is None else str(entry["value"])
    return (value if entry["status"] == "ok" else f"{value}({entry['status']})")[:12]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
