"""``realqa serve`` and ``realqa report``."""

from __future__ import annotations

import sys

from ..serve import MiB, ServeLimits
from .options import add_model_arguments, model_options


def add_commands(subparsers) -> None:
    """Add ``serve`` and ``report`` to an ``argparse`` subparsers object."""
    defaults = ServeLimits()
    serve = subparsers.add_parser("serve", help="HTTP scoring service (POST /score, GET /health, docs at /docs)")
    add_model_arguments(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    limits = serve.add_argument_group("limits")
    limits.add_argument("--max-images", type=int, default=defaults.max_images, help="images per request")
    limits.add_argument("--max-image-mb", type=float, default=defaults.max_image_bytes / MiB, help="MiB per upload")
    limits.add_argument("--max-request-mb", type=float, default=defaults.max_request_bytes / MiB, help="MiB per request body")
    limits.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels, help="pixels per image")
    limits.add_argument("--timeout", type=float, default=defaults.request_timeout,
                        help="seconds per request, upload included (default: %(default)s)")
    limits.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                        help="how long an image waits for others to share its model batch (default: %(default)s)")
    limits.add_argument("--max-queue", type=int, default=defaults.max_queue, help="images queued before 503s")
    limits.add_argument("--max-queue-mb", type=float, default=defaults.max_queue_bytes / MiB,
                        help="memory budget: MiB of uploads admitted and not yet answered before 503s (images wait "
                             "compressed and are decoded one at a time for their model batch; default: %(default)s)")
    limits.add_argument("--max-connections", type=int, default=defaults.max_connections,
                        help="requests in progress (and open connections); beyond it stalled uploads and connections "
                             "are closed to make room, else JSON 503s (default: %(default)s)")
    limits.add_argument("--idle-timeout", type=float, default=defaults.idle_timeout,
                        help="seconds an upload may send nothing before a 408 (default: %(default)s)")
    limits.add_argument("--header-timeout", type=float, default=defaults.header_timeout,
                        help="seconds a new connection has to send its request headers (default: %(default)s)")
    serve.set_defaults(run=_serve)

    report = subparsers.add_parser("report", help="HTML report of a scores file: ranking, thumbnails, plots, metrics")
    report.add_argument("scores", help="our .csv/.jsonl/.parquet results or bench predictions")
    report.add_argument("--out", required=True, help="the HTML file to write (plots go beside it as PNG)")
    report.add_argument("--labels", help="a realqa manifest, or a table (CSV, TSV, JSON, JSONL, Parquet) with an image "
                                         "column and a label column; matched as `realqa eval` matches them")
    report.add_argument("--label-column", help="label column of --labels (default: the first of mos, MOS, score, label)")
    report.add_argument("--image-column", help="image column of --labels (default: as `realqa eval`)")
    report.add_argument("--title", help="page title")
    report.add_argument("--image-root", help="folder relative image paths start from (default: here, else the scores file's folder)")
    report.add_argument("--thumb-size", type=int, default=160, help="thumbnail size in pixels")
    report.add_argument("--max-thumbnails", type=int, default=1000, help="thumbnails for the best N rows only")
    report.set_defaults(run=_report)


def _serve(args) -> int:
    from dataclasses import replace

    from ..serve import require_serve_extra, run

    require_serve_extra()  # before the model loads: one line naming the extra to install
    limits = ServeLimits(max_images=args.max_images, max_image_bytes=int(args.max_image_mb * MiB),
                         max_request_bytes=int(args.max_request_mb * MiB), max_image_pixels=args.max_image_pixels,
                         request_timeout=args.timeout, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_queue_bytes=int(args.max_queue_mb * MiB), max_connections=args.max_connections,
                         idle_timeout=args.idle_timeout, header_timeout=args.header_timeout, max_batch=args.batch_size)
    # Model batches never exceed one preparation chunk, so worker processes would not help; in line,
    # the scorer takes each image as it decodes it, one decoded image at a time.
    scorer = replace(model_options(args), workers=0).load()
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: other machines can reach this service", file=sys.stderr)
    print(f"realqa serve: http://{args.host}:{args.port}  (POST /score, GET /health, docs at /docs)", file=sys.stderr)
    run(scorer, limits, host=args.host, port=args.port)
    return 0


def _report(args) -> int:
    from ..report import build_report

    labels = None
    if args.labels:
        from ..evaluation import read_labels

        labels = read_labels(args.labels, args.label_column, image_column=args.image_column)
    files = build_report(args.scores, args.out, labels=labels, title=args.title, image_root=args.image_root,
                         thumb_size=args.thumb_size, max_thumbnails=args.max_thumbnails)
    print(f"report: {files.html}")
    print(f"plots: {files.histogram}" + (f", {files.scatter}" if files.scatter else ""))
    if files.evaluation is not None:
        ev = files.evaluation
        print(f"SRCC {ev.srcc:.4f}  PLCC {ev.plcc:.4f}  ({ev.n_evaluated} of {ev.n_total} labelled rows scored)")
    return 0
