"""Command line: ``realqa score | eval | train | data | bench | serve | report | tiny-model``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence



def main(argv: Sequence[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # weight-loading bars would drown the scoring progress bar
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as err:
        print(f"realqa {args.command}: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realqa", description="Image quality and aesthetic scoring with a multimodal LLM.")
    commands = parser.add_subparsers(dest="command", required=True)

    score = commands.add_parser("score", help="score images, folders or manifests")
    score.add_argument("paths", nargs="+", help="image files, folders (searched recursively) or manifests (.txt/.csv/.jsonl)")
    score.add_argument("--task", default="quality", help="task to score (default: quality)")
    score.add_argument("--decimals", type=int, help="decimals in the answer (default: the model card's)")
    score.add_argument("--attributes", action="store_true",
                       help="also ask every fine-grained attribute the model knows (one column each)")
    score.add_argument("--cot", action="store_true",
                       help="chain of thought: reason over the attributes, then give the score in <...>")
    score.add_argument("--out", help="write rows to FILE.csv or FILE.jsonl (one row per input, in input order), each as "
                       "it comes; rerunning the same command resumes a killed run")
    score.add_argument("--overwrite", action="store_true", help="start --out afresh instead of resuming it")
    score.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    score.set_defaults(run=_score)

    evaluate = commands.add_parser(
        "eval", help="correlation metrics of predictions against labels",
        description="Score predictions against labels. The table counts every row: 'failed' are answers without a "
                    "score and errors, 'out-of-range' answers outside the task's range; neither enters a metric. "
                    "Beside it (on stderr), the official reading: the RealQA authors' evaluation script's rule "
                    "applied to the same answers (first <...>, rows it cannot read skipped), to set beside the paper.")
    evaluate.add_argument("predictions", help="our .csv/.jsonl results, or LLaMA-Factory's generated_predictions.jsonl")
    evaluate.add_argument("--labels", help="a realqa manifest; a LLaMA-Factory conversation file (the scores its answers "
                          "state; LLaMA-Factory rows match its records by order, our rows by image); or a CSV/JSONL "
                          "with an image column, a label column and optional attribute columns; our rows match by "
                          "path, then as the file writes the image, then by file name")
    evaluate.add_argument("--label-column", help="label column of --labels (default: the first of mos, MOS, score, label)")
    evaluate.add_argument("--media-dir", help="where relative image paths of a conversation --labels file start "
                          "(LLaMA-Factory's media_dir; default: that file's folder)")
    evaluate.add_argument("--field", default="score", choices=("score", "ncm"), help="value to evaluate (default: score)")
    evaluate.add_argument("--task", default="quality",
                          help="the manifest score (or conversation task) that labels the predictions, and the range "
                          "of a LLaMA-Factory row that states none (default: quality, 1-5)")
    evaluate.set_defaults(run=_eval)

    trainer = commands.add_parser("train", help="fine-tune a Qwen2-VL model to answer with scores (LoRA or full)")
    trainer.add_argument("config", nargs="?", help="YAML config (see configs/); optional when overrides say it all")
    trainer.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys: lora.rank=64")
    trainer.add_argument("--decimals", type=int, help="target precision 0..3 (the paper's ablation); same as decimals=K")
    trainer.set_defaults(run=_train)

    from .commands import (add_backend_arguments, add_commands as add_app_commands, add_scorer_arguments,
                           add_throughput_arguments, add_video_arguments)
    from .data.commands import add_commands

    add_commands(commands)  # data list | prepare | export-llamafactory | import-llamafactory, and bench
    add_app_commands(commands)  # serve, report
    add_scorer_arguments(score)
    add_throughput_arguments(score)
    add_backend_arguments(score)
    add_video_arguments(score)

    tiny = commands.add_parser("tiny-model", help="build the tiny random Qwen2-VL test model into a folder")
    tiny.add_argument("out", help="folder to write")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--architecture", default="qwen2_vl", choices=("qwen2_vl", "qwen2_5_vl"))
    tiny.set_defaults(run=_tiny_model)
    return parser


# ---------------------------------------------------------------- score


def _score(args) -> int:
    from .media import collect_inputs
    from .results import STATUS_ERROR
    from .runs import score_run

    from .conversations import is_conversation_file

    conversation_files = [p for p in args.paths if is_conversation_file(p)]
    if conversation_files:
        raise ValueError(f"{conversation_files[0]} is a LLaMA-Factory conversation file, not images: `realqa bench "
                         "--conversations FILE --media-dir DIR` scores each example with its own question (one "
                         "prediction row each); `realqa data card FILE --out DIR` then `--card DIR` asks its question "
                         "of any images")
    inputs = collect_inputs(args.paths)
    if not inputs:
        raise ValueError("no inputs found in " + ", ".join(args.paths))
    results = score_run(args, inputs, log=lambda message: print(message, file=sys.stderr))
    if results is None:  # a rank other than 0 of a distributed run: rank 0 reports
        return 0
    attribute_names = list(dict.fromkeys(name for r in results for name in (r.attributes or {})))
    if not args.quiet:
        _print_ranking(results, attribute_names)
    errors = sum(r.status == STATUS_ERROR for r in results)
    unparsed = sum(r.score is None and r.status != STATUS_ERROR for r in results)
    summary = f"{len(results)} inputs: {len(results) - errors - unparsed} scored, {unparsed} without a parsable score, {errors} errors"
    print(summary + (f"; rows in {args.out}" if args.out else ""), file=sys.stderr)
    return 0


def _print_ranking(results, attribute_names=()) -> None:
    """Scored rows best first (equal scores by their NCM, the finer value), then rows without a score
    (unparsed answers and errors)."""
    scored = sorted((r for r in results if isinstance(r.score, (int, float))),
                    key=lambda r: (-r.score, -(r.ncm if r.ncm is not None else float("-inf"))))
    rest = [r for r in results if not isinstance(r.score, (int, float))]
    width = min(60, max((len(r.path) for r in results), default=4))
    print(f"{'rank':>4}  {'score':>6}  {'ncm':>6}  {'path':<{width}}  " + "".join(f"{n[:12]:<13}" for n in attribute_names) + "note")
    for rank, r in enumerate(scored, 1):
        ncm = f"{r.ncm:6.3f}" if r.ncm is not None else f"{'':>6}"
        note = "" if r.status == "ok" else r.status
        cells = "".join(f"{_attribute_cell(r, n):<13}" for n in attribute_names)
        print(f"{rank:>4}  {r.score:6.2f}  {ncm}  {_shorten(r.path, width):<{width}}  {cells}{note}")
    for r in rest:
        note = r.error or f"{r.status}: {r.text!r}"
        print(f"{'-':>4}  {'-':>6}  {'':>6}  {_shorten(r.path, width):<{width}}  {note}")


def _attribute_cell(result, name: str) -> str:
    entry = (result.attributes or {}).get(name)
    if entry is None:
        return "-"
    value = "?" if entry["value"] is None else str(entry["value"])
    return (value if entry["status"] == "ok" else f"{value}({entry['status']})")[:12]


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


# ---------------------------------------------------------------- eval


def _eval(args) -> int:
    from .evaluation import evaluate_predictions, format_official, format_table, read_labels
    from .results import read_predictions

    predictions = read_predictions(args.predictions, field=args.field, task=args.task)
    labels = read_labels(args.labels, args.label_column, args.task, args.media_dir) if args.labels else None
    rows = evaluate_predictions(predictions, labels, args.predictions, args.task)
    print(format_table(rows))
    if rows[0].metrics["n_evaluated"] >= 5 and not rows[0].metrics["logistic_converged"]:
        print("note: the 4-parameter logistic fit did not converge; PLCC4 is undefined", file=sys.stderr)
    # stderr keeps stdout the table alone, for scripts that read it
    if rows[0].official is not None:
        print(format_official(rows[0].official), file=sys.stderr)
    else:
        print("official reading: not available (the predictions keep no answer text)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- train


def _train(args) -> int:
    from .train import load_config, train

    config_file, overrides = args.config, list(args.overrides)
    if config_file and "=" in config_file:  # only overrides were given
        config_file, overrides = None, [config_file, *overrides]
    if args.decimals is not None:
        overrides.append(f"decimals={args.decimals}")
    config = load_config(config_file, overrides)
    result = train(config, log=lambda message: print(message, file=sys.stderr))
    print(f"trained {result.steps} steps in {result.wall_seconds:.0f} s, final train loss {result.train_loss:.4f}; "
          f"output in {result.output_dir}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- tiny model


def _tiny_model(args) -> int:
    from .model import build_tiny_model

    print(build_tiny_model(args.out, seed=args.seed, architecture=args.architecture))
    return 0


if __name__ == "__main__":
    sys.exit(main())
