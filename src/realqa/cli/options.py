"""The flags every scoring command shares, and the typed options they become.

Each ``add_*`` function declares a group of flags once; the matching function turns the parsed
flags into the :mod:`realqa.job` dataclass the library takes. Nothing below the command line sees
``argparse``.
"""

from __future__ import annotations

import argparse

from ..job import ModelOptions, RayOptions, VideoOptions


def add_model_arguments(parser: argparse.ArgumentParser, *, throughput: bool = True) -> None:
    """The model, its card and preprocessing, the device, and (``throughput``) the speed flags."""
    from ..engine import ATTENTION
    from ..model import QUANTIZE
    from ..preprocessing import PROFILES

    parser.add_argument("--model", help="model folder or hub id, owner/name[/subfolder] (default: the bundled demo model)")
    parser.add_argument("--adapter", help="PEFT LoRA adapter: folder or hub id, owner/name[/subfolder]")
    parser.add_argument("--card", help="a realqa_card.json to use instead of the checkpoint's own (questions, ranges, "
                                       "preprocessing); `realqa data card` writes one from conversation files")
    parser.add_argument("--device", help="cuda, cuda:1, cpu ... (default: cuda when available)")
    parser.add_argument("--dtype", help="bf16, fp16 or fp32 (default: bf16 on GPU, fp32 on CPU)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per model batch")
    parser.add_argument("--min-pixels", type=int, help="image processor lower pixel bound (default: the model card's, else 200704)")
    parser.add_argument("--max-pixels", type=int, help="image processor upper pixel bound (default: the model card's, else 401408)")
    parser.add_argument("--preprocessing", choices=sorted(PROFILES),
                        help="image pipeline before the image processor (default: the model card's; llamafactory for "
                             "a checkpoint without a realqa card, as the official RealQA models were trained)")
    parser.add_argument("--quantize", choices=QUANTIZE,
                        help="load the weights in 8 or 4 bits with bitsandbytes (CUDA; for cards too small for bf16)")
    if not throughput:
        return
    group = parser.add_argument_group("throughput (never changes a result)")
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
    group.add_argument("--compile-vision", action="store_true",
                       help="torch.compile the vision tower's rotary embedding and MLPs, its unfused elementwise work "
                            "(GPU; the first batch of each image size waits for the compilation)")


def model_options(args: argparse.Namespace) -> ModelOptions:
    """The :class:`ModelOptions` that :func:`add_model_arguments`' flags describe."""
    return ModelOptions(
        model=args.model, adapter=args.adapter, card=args.card, dtype=args.dtype, quantize=args.quantize,
        preprocessing=args.preprocessing, min_pixels=args.min_pixels, max_pixels=args.max_pixels, device=args.device,
        batch_size=args.batch_size, workers=getattr(args, "workers", None),
        group_batches=getattr(args, "group_batches", 4), attention=getattr(args, "attention", "auto"),
        compile=getattr(args, "compile", False), compile_vision=getattr(args, "compile_vision", False))


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--image-column`` and ``--split``: where the images are in Parquet tables, tar shards and datasets."""
    group = parser.add_argument_group("tables, shards and datasets")
    group.add_argument("--image-column",
                       help="the column of image bytes or paths in Parquet tables and Hugging Face datasets, or the "
                            "member extension in WebDataset shards (e.g. jpg) (default: the one image column, or the one "
                            "path column; the one image member)")
    group.add_argument("--split", help="the split of a Hugging Face dataset (default: its only split)")


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """``--video-mode``, ``--frames``, ``--fps``: how video files are sampled and scored."""
    from ..video import MODES

    group = parser.add_argument_group("videos")
    group.add_argument("--video-mode", choices=MODES, default="frames",
                       help="frames: score sampled frames, the mean is the clip's score; video: one Qwen2-VL video input")
    group.add_argument("--frames", type=int, default=8, help="frames sampled per video, uniformly (default: 8; the cap with --fps)")
    group.add_argument("--fps", type=float, help="sample about this many frames per second instead, at most --frames")


def video_options(args: argparse.Namespace) -> VideoOptions:
    return VideoOptions(mode=args.video_mode, frames=args.frames, fps=args.fps)


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


def ray_options(args: argparse.Namespace) -> RayOptions:
    return RayOptions(address=args.ray_address, actors=args.ray_actors, gpus_per_actor=args.ray_gpus_per_actor,
                      batch_size=args.ray_batch_size)
