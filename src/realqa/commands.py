"""Command line: ``realqa serve`` and ``realqa report``, and the video options of ``realqa score``."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .model import QUANTIZE
from .preprocessing import PROFILES
from .serve import MiB, ServeLimits


def add_commands(subparsers) -> None:
    """Add ``serve`` and ``report`` to an ``argparse`` subparsers object."""
    defaults = ServeLimits()
    serve = subparsers.add_parser("serve", help="HTTP scoring service (POST /score, GET /health, docs at /docs)")
    add_scorer_arguments(serve)
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
    limits.add_argument("--max-connections", type=int, default=64, help="open connections before 503s")
    serve.set_defaults(run=_serve)

    report = subparsers.add_parser("report", help="HTML report of a scores file: ranking, thumbnails, plots, metrics")
    report.add_argument("scores", help="our .csv/.jsonl results or bench predictions")
    report.add_argument("--out", required=True, help="the HTML file to write (plots go beside it as PNG)")
    report.add_argument("--labels", help="a realqa manifest, or a CSV/JSONL with an image column and a label column; "
                                         "matched by path, then file name")
    report.add_argument("--label-column", help="label column of --labels (default: the first of mos, MOS, score, label)")
    report.add_argument("--title", help="page title")
    report.add_argument("--image-root", help="folder relative image paths start from (default: here, else the scores file's folder)")
    report.add_argument("--thumb-size", type=int, default=160, help="thumbnail size in pixels")
    report.add_argument("--max-thumbnails", type=int, default=1000, help="thumbnails for the best N rows only")
    report.set_defaults(run=_report)


def add_scorer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model folder or hub id (default: the bundled demo model; see README)")
    parser.add_argument("--adapter", help="PEFT LoRA adapter folder")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    parser.add_argument("--min-pixels", type=int, help="image processor lower pixel bound (default: the model card's, else 200704)")
    parser.add_argument("--max-pixels", type=int, help="image processor upper pixel bound (default: the model card's, else 401408)")
    parser.add_argument("--quantize", choices=QUANTIZE,
                        help="load the weights in 8 or 4 bits with bitsandbytes (CUDA; for cards too small for bf16)")
    parser.add_argument("--preprocessing", choices=sorted(PROFILES),
                        help="image pipeline before the image processor (default: the model card's; llamafactory for "
                             "a checkpoint without a realqa card, as the official RealQA models were trained)")
    parser.add_argument("--card", help="a realqa_card.json to use instead of the checkpoint's own (questions, ranges, "
                                       "preprocessing); `realqa data card` writes one from conversation files")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """``--video-mode``, ``--frames``, ``--fps``: how video files are sampled and scored."""
    from .video import MODES

    group = parser.add_argument_group("videos")
    group.add_argument("--video-mode", choices=MODES, default="frames",
                       help="frames: score sampled frames, the mean is the clip's score; video: one Qwen2-VL video input")
    group.add_argument("--frames", type=int, default=8, help="frames sampled per video, uniformly (default: 8; the cap with --fps)")
    group.add_argument("--fps", type=float, help="sample about this many frames per second instead, at most --frames")


def video_options(args: argparse.Namespace) -> dict:
    """The ``video`` options of :func:`realqa.video.iter_with_videos` from :func:`add_video_arguments`."""
    from .video import FrameSampling

    return {"mode": args.video_mode, "sampling": FrameSampling(frames=args.frames, fps=args.fps)}


def default_model() -> str:
    """The demo model bundled with the package (see ``realqa.models``); says which model scores."""
    from .models import demo_model_path

    folder = demo_model_path()
    print(f"note: no --model given; using the bundled demo model ({folder.name}): a small model trained on synthetic "
          "technical distortions that ranks noise, blur, downscaling and exposure only roughly (see its card); pass "
          "--model for a RealQA checkpoint", file=sys.stderr)
    return str(folder)


def add_throughput_arguments(parser: argparse.ArgumentParser) -> None:
    """``--workers``, ``--group-batches``, ``--attention``: speed only, never the results."""
    from .engine import ATTENTION

    group = parser.add_argument_group("throughput")
    group.add_argument("--workers", type=int,
                       help="processes decoding and preprocessing images ahead of the model; 0: in this process "
                            "(default: up to 8 on a GPU, 0 on a CPU)")
    group.add_argument("--group-batches", type=int, default=4,
                       help="sort images by size within windows of this many batches, so batches pad little "
                            "(results stay in input order; 1: no sorting; default: %(default)s)")
    group.add_argument("--attention", choices=ATTENTION, default="auto",
                       help="attention kernels (default auto: flash_attention_2 where installed on CUDA, else sdpa)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the language model (the first batches wait for the compilation)")


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and the Ray options of ``realqa score``."""
    group = parser.add_argument_group("many machines")
    group.add_argument("--backend", choices=("local", "ray"), default="local",
                       help="local: this process (or the ranks of torchrun); ray: actors on a Ray cluster "
                            "(pip install 'realqa[ray]')")
    group.add_argument("--ray-address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    group.add_argument("--ray-actors", type=int, help="scorer actors, one model each (default: one per GPU, else 1)")
    group.add_argument("--ray-gpus-per-actor", type=float,
                       help="GPUs each actor reserves (default: 1 when the cluster has GPUs, else 0)")
    group.add_argument("--ray-batch-size", type=int,
                       help="inputs per actor call (default: 8 grouping windows, batch size x group batches x 8)")


def load_scorer_from_args(args):
    """The scorer the ``--model/--adapter/--device/--dtype/--batch-size/--min-pixels/--max-pixels`` options
    (and, where the command has them, ``--workers/--group-batches/--attention``) ask for."""
    from .engine import load_scorer
    from .prefetch import default_workers

    options = {"batch_size": args.batch_size}
    if args.min_pixels:
        options["min_pixels"] = args.min_pixels
    if args.max_pixels:
        options["max_pixels"] = args.max_pixels
    if getattr(args, "group_batches", None) is not None:
        options["group_batches"] = args.group_batches
    if getattr(args, "workers", None) is not None:
        options["workers"] = args.workers
    if args.preprocessing:
        options["preprocessing"] = args.preprocessing
    scorer = load_scorer(args.model or default_model(), args.adapter, device=args.device, dtype=args.dtype,
                         quantize=getattr(args, "quantize", None), card=getattr(args, "card", None),
                         own_questions=bool(getattr(args, "conversations", None)),
                         attention=getattr(args, "attention", "auto"), compile=getattr(args, "compile", False),
                         **options)
    if getattr(args, "workers", 0) is None:
        scorer.workers = default_workers(scorer.loaded.device)
    return scorer


def _serve(args) -> int:
    from .serve import run

    limits = ServeLimits(max_images=args.max_images, max_image_bytes=int(args.max_image_mb * MiB),
                         max_request_bytes=int(args.max_request_mb * MiB), max_image_pixels=args.max_image_pixels,
                         request_timeout=args.timeout, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                         max_batch=args.batch_size)
    scorer = load_scorer_from_args(args)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"note: listening on {args.host}: other machines can reach this service", file=sys.stderr)
    print(f"realqa serve: http://{args.host}:{args.port}  (POST /score, GET /health, docs at /docs)", file=sys.stderr)
    run(scorer, limits, host=args.host, port=args.port, max_connections=args.max_connections)
    return 0


def _report(args) -> int:
    from .report import build_report

    labels = None
    if args.labels:
        from .evaluation import read_labels

        labels = read_labels(args.labels, args.label_column).scores
    files = build_report(args.scores, args.out, labels=labels, title=args.title, image_root=args.image_root,
                         thumb_size=args.thumb_size, max_thumbnails=args.max_thumbnails)
    print(f"report: {files.html}")
    print(f"plots: {files.histogram}" + (f", {files.scatter}" if files.scatter else ""))
    if files.evaluation is not None:
        ev = files.evaluation
        print(f"SRCC {ev.srcc:.4f}  PLCC {ev.plcc:.4f}  ({ev.n_evaluated} of {ev.n_total} labelled rows scored)")
    return 0


def score_inputs(scorer, args, inputs: Sequence[str], frames, *, shown: bool, done: int = 0):
    """The rows of ``inputs`` (images and videos, as the ``score`` options ask) in order, with a
    progress bar on stderr when ``shown``."""
    from tqdm import tqdm

    from .video import iter_with_videos

    progress = tqdm(total=done + len(inputs), initial=done, unit="input", disable=args.quiet or not shown or None,
                    file=sys.stderr)
    try:
        for result in iter_with_videos(scorer, inputs, args.task, decimals=args.decimals, video=video_options(args),
                                       on_video=frames.write if frames else None, cot=args.cot,
                                       attributes=args.attributes):
            progress.update()
            yield result
    finally:
        progress.close()
