"""``realqa eval``: predictions against labels, realqa's reading and the official script's."""

from __future__ import annotations

import sys


def add_command(commands) -> None:
    evaluate = commands.add_parser(
        "eval", help="correlation metrics of predictions against labels",
        description="Score predictions against labels. The table counts every row: 'failed' are answers without a "
                    "score and errors, 'out-of-range' answers outside the task's range; neither enters a metric. "
                    "Beside it (on stderr), the official reading: the RealQA authors' evaluation script's rule "
                    "applied to the same answers (first <...>, rows it cannot read skipped), to set beside the paper.")
    evaluate.add_argument("predictions", help="our .csv/.jsonl/.parquet results, or LLaMA-Factory's generated_predictions.jsonl")
    evaluate.add_argument("--labels", help="a realqa manifest; a LLaMA-Factory conversation file (the scores its answers "
                          "state; LLaMA-Factory rows match its records by order, our rows by image); or a table (CSV, "
                          "TSV, JSON, JSONL, Parquet) with an image column, a label column and optional attribute "
                          "columns; our rows take the label whose image path ends like theirs over the most folders "
                          "(the file name at least); a tie, or a label two rows would take, is an error. In a table, "
                          "an image labelled twice is an error unless the rows agree in every column")
    evaluate.add_argument("--label-column", help="label column of --labels (default: the first of mos, MOS, score, "
                          "label; a table with AVA's vote counts score2..score11 gives their vote-weighted mean)")
    evaluate.add_argument("--image-column", help="image column of --labels (default: the first of path, image, "
                          "image_name, img_name, image_id, 'Image name', dis_img_path)")
    evaluate.add_argument("--label-range", metavar="LO,HI",
                          help="the scale a labels table is on (e.g. 0,100; LO above HI: lower is better): its labels "
                          "are mapped linearly onto the predictions' range, as 'realqa data prepare' maps a dataset's "
                          "scale. Without it, labels outside that range leave RMSE and std~err not comparable (n/c)")
    evaluate.add_argument("--media-dir", help="where relative image paths of a conversation --labels file start "
                          "(LLaMA-Factory's media_dir; default: that file's folder)")
    evaluate.add_argument("--field", default="score", choices=("score", "ncm"), help="value to evaluate (default: score)")
    evaluate.add_argument("--task", default="quality",
                          help="the manifest score (or conversation task) that labels the predictions, and the range "
                          "of a row that states none (a LLaMA-Factory row without one, our row without a task) "
                          "(default: quality, 1-5)")
    evaluate.set_defaults(run=_eval)


def _eval(args) -> int:
    from ..data.generic import parse_range
    from ..evaluation import (
        evaluate_predictions,
        format_official,
        format_table,
        read_labels,
        read_predictions,
        rescale_labels,
    )

    if args.label_range and not args.labels:
        raise ValueError("--label-range states the scale of a --labels table; pass --labels FILE")
    predictions = read_predictions(args.predictions, field=args.field, task=args.task)
    labels = None
    if args.labels:
        labels = read_labels(args.labels, args.label_column, args.task, args.media_dir, args.image_column)
        if args.label_range:
            labels = rescale_labels(labels, parse_range(args.label_range), predictions, args.task)
    rows = evaluate_predictions(predictions, labels, args.predictions, args.task)
    print(format_table(rows))
    if labels is not None and labels.mapping is not None:
        print(f"labels mapped (--label-range {args.label_range}): {labels.mapping.describe()}", file=sys.stderr)
    for row in rows:
        if row.metrics.get("not_comparable"):
            print(f"note: {row.target}: RMSE and std~err not comparable (n/c): {row.metrics['not_comparable']}",
                  file=sys.stderr)
    if rows[0].metrics["n_evaluated"] >= 5 and not rows[0].metrics["logistic_converged"]:
        print("note: the 4-parameter logistic fit did not converge; PLCC4 is undefined", file=sys.stderr)
    # stderr keeps stdout the table alone, for scripts that read it
    if rows[0].official is not None:
        print(format_official(rows[0].official), file=sys.stderr)
    else:
        print("official reading: not available (the predictions keep no answer text)", file=sys.stderr)
    return 0
