"""One GPU check, one command, one table (at most ~8 minutes on one H100/H200):

    PYTHONPATH=src python benchmarks/gpu_check.py            # GPU: Qwen2-VL-2B and -7B architectures, bf16
    PYTHONPATH=src python benchmarks/gpu_check.py --tiny     # CPU: the tiny test model (tests/test_gpu_check.py)

Needs only torch, transformers, peft, accelerate, pillow, numpy and scipy (no flash-attn,
bitsandbytes, vLLM, Ray or PyAV). The models are random-weight Qwen2-VL-2B / -7B architectures
built on the GPU from the public config numbers (:mod:`throughput`'s ``build_architecture``); the
images are JPEG files of mixed sizes (the shared photos resized to several shapes, decoded from
disk in every run). The table's parts:

* ``e2e``: per model, the same images through (a) a naive loop: per image, the full prompt through
  ``generate`` (14 new tokens, images prepared in line); (b) batched ``generate`` with the engine's
  forced answer prefix ("The quality score of this image is ", 5 new tokens); (c) the engine
  (``Scorer.score``) at several batch sizes. ``result``: how many answers (b) and (c) share.
* ``memory``: peak allocated and reserved GPU memory of the 7B engine at batch 8, and whether it
  fits a 24 GB card (reserved + ~1 GiB of CUDA context under 24 GB = 22.35 GiB).
* ``vision``: the vision tower alone on 8 mixed images, per attention implementation, with its
  inputs computed by transformers from the grids or precomputed as the engine does, and with the
  engine's optional compilation of the rotary embedding and MLPs (``compile_vision_tower``);
  ``result``: the largest difference from the first row's output.
* ``train``: one LoRA step of the 7B at the recipe's settings (configs/realqa_lora.yaml: rank 128 on
  every linear layer, vision tower included, batch 2, gradient checkpointing, bf16 autocast, AdamW),
  the second of two steps timed, the peak memory of both.
* ``torchrun``: ``realqa score`` in two torchrun ranks sharing the one GPU (a 4-layer model of the
  2B's widths saved to disk, batch 1) against the same command in one process: rows equal?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

from throughput import build_architecture, peak_reset, photo_copies, run_baseline, synchronize  # noqa: E402

from realqa.batching import collate  # noqa: E402
from realqa.compat import accepts_token_types  # noqa: E402
from realqa.engine import Scorer, compile_vision_tower, load_scorer, set_attention  # noqa: E402
from realqa.model import ModelCard, ScoringModel, build_tiny_model  # noqa: E402
from realqa.prefetch import HostBuffers, default_workers  # noqa: E402

GIB = 2**30
FITS_24GB = 22.35  # GiB a 24 GB card leaves after ~1 GiB of CUDA context and allocator slack
# (a) to (c) see images of these shapes (WxH; "none": the photo as it is), cycled.
SHAPES = ("784x504", "1024x768", "448x448", "300x200", "1600x400", "none")

ROWS: list[dict] = []
PIXELS: dict[str, int] = {}  # the image processor's bounds (--tiny: small images; else the model card's)
TINY_PIXELS = {"min_pixels": 28 * 28 * 16, "max_pixels": 28 * 28 * 64}


def row(part: str, model: str, what: str, *, batch="", items="", seconds=None, memory=None, result="") -> dict:
    entry = {"part": part, "model": model, "what": what, "batch": batch, "items": items, "seconds": seconds,
             "memory": memory, "result": result}
    ROWS.append(entry)
    print(f"  [{part}] {model} {what}: {_cells(entry)[4:]}", file=sys.stderr, flush=True)
    return entry


def _cells(entry: dict) -> list[str]:
    seconds, items = entry["seconds"], entry["items"]
    per = f"{1000 * seconds / items:.1f}" if seconds is not None and items else "-"
    rate = f"{items / seconds:.2f}" if seconds and items else "-"
    alloc, reserved = entry["memory"] or (None, None)
    return [entry["part"], entry["model"], entry["what"], str(entry["batch"]), str(entry["items"]),
            f"{seconds:.2f}" if seconds is not None else "-", per, rate,
            f"{alloc:.2f}" if alloc is not None else "-", f"{reserved:.2f}" if reserved is not None else "-",
            entry["result"]]


def print_table(header: str) -> None:
    print(header)
    print()
    print("| part | model | what | batch | items | s | ms/item | items/s | peak alloc GiB | peak reserved GiB "
          "| result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for entry in ROWS:
        print("| " + " | ".join(_cells(entry)) + " |")


def peaks(device: torch.device) -> tuple[float, float] | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB


def mixed_jpegs(count: int, folder: Path) -> list[str]:
    """``count`` JPEG files cycling through :data:`SHAPES` (each shape's photos in its own folder)."""
    per_shape = []
    for shape in SHAPES:
        sub = folder / shape
        sub.mkdir(parents=True, exist_ok=True)
        per_shape.append(photo_copies(-(-count // len(SHAPES)), shape, sub))
    mixed = [paths[i] for i in range(len(per_shape[0])) for paths in per_shape]
    return mixed[:count]


def timed(function, device: torch.device):
    synchronize(device)
    started = time.perf_counter()
    value = function()
    synchronize(device)
    return time.perf_counter() - started, value


# ---------------------------------------------------------------- e2e: naive, batched generate, engine


@torch.inference_mode()
def generate_batched(scorer: Scorer, images: list[str], batch_size: int, new_tokens: int) -> list[str]:
    """``generate`` on batches of the engine's own prompt (forced answer prefix); images prepared in line."""
    from transformers import GenerationConfig

    loaded = scorer.loaded
    tokenizer = loaded.tokenizer
    prompt = scorer.prompt_ids(scorer.task("quality"))
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=loaded.pad_id)
    texts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        batch = scorer.collate([scorer.examples.build(path, path, prompt) for path in chunk])
        out = loaded.model.generate(**batch, generation_config=config)
        for new in out[:, batch["input_ids"].shape[1]:].tolist():
            if tokenizer.eos_token_id in new:
                new = new[: new.index(tokenizer.eos_token_id)]
            texts.append(tokenizer.decode(new, skip_special_tokens=True))
    return texts


def end_to_end(name: str, loaded: ScoringModel, images: list[str], args, device: torch.device) -> Scorer:
    workers = default_workers(device) if args.workers is None else args.workers
    scorer = Scorer(loaded, workers=workers, **PIXELS)
    naive = images[: args.naive_images]
    run_baseline(loaded, scorer, naive[:1], args.naive_tokens)  # warm-up
    peak_reset(device)
    seconds = run_baseline(loaded, scorer, naive, args.naive_tokens)
    row("e2e", name, f"naive: generate per image, full prompt, {args.naive_tokens} tokens", batch=1, items=len(naive),
        seconds=seconds, memory=peaks(device))

    some = images[: args.generate_images]
    new_tokens = scorer._max_new_tokens(_question(scorer))
    generate_batched(scorer, some[: args.generate_batch], args.generate_batch, new_tokens)  # warm-up
    peak_reset(device)
    seconds, generated = timed(lambda: generate_batched(scorer, some, args.generate_batch, new_tokens), device)
    row("e2e", name, f"batched generate, forced prefix, {new_tokens} tokens", batch=args.generate_batch,
        items=len(some), seconds=seconds, memory=peaks(device))

    for batch_size in args.batch_sizes:
        scorer.score(images[:batch_size], batch_size=batch_size)  # warm-up: kernels and allocator for this size
        peak_reset(device)
        seconds, results = timed(lambda: scorer.score(images, batch_size=batch_size), device)
        failed = [r for r in results if r.status == "error"]
        same = sum(r.text == text for r, text in zip(results, generated))
        row("e2e", name, "engine (Scorer.score)", batch=batch_size, items=len(images), seconds=seconds,
            memory=peaks(device), result=f"{same}/{len(generated)} answers = batched generate"
            + (f"; {len(failed)} FAILED" if failed else ""))
    return scorer


def _question(scorer: Scorer):
    from realqa.engine import Question

    return Question(scorer.task("quality"))


def memory_at_batch_8(name: str, scorer: Scorer, images: list[str], device: torch.device) -> None:
    some = images[:32]
    peak_reset(device)
    seconds, _ = timed(lambda: scorer.score(some, batch_size=8), device)
    memory = peaks(device)
    if memory is None:
        row("memory", name, "engine, batch 8", batch=8, items=len(some), seconds=seconds, result="no GPU: not measured")
        return
    fits = memory[1] <= FITS_24GB
    row("memory", name, "engine, batch 8", batch=8, items=len(some), seconds=seconds, memory=memory,
        result=f"fits a 24 GB card: {'yes' if fits else 'NO'} (reserved {memory[1]:.1f} of {FITS_24GB} GiB)")


# ---------------------------------------------------------------- the vision tower alone


@torch.inference_mode()
def vision_options(name: str, scorer: Scorer, images: list[str], args, device: torch.device) -> None:
    import importlib.util

    loaded = scorer.loaded
    visual = loaded.model.model.visual
    prompt = scorer.prompt_ids(scorer.task("quality"))
    examples = [scorer.examples.build(path, path, prompt) for path in images[:8]]
    patches = sum(e.pixel_values.shape[0] for e in examples)

    def run(precomputed: bool):
        """The tower's forward on the engine's host batch (its plan follows the attention now set)."""
        batch = scorer._host_batch(examples, scorer._plan([[]], [1]), HostBuffers(1).take())
        inputs = batch.to(device)
        extra = {}
        if precomputed:
            extra = {key.removeprefix("image_"): value for key, value in inputs.items() if key.startswith("image_")}
            extra.pop("grid_thw", None)
        return lambda: visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"], **extra).pooler_output

    options = [("sdpa", False, False), ("sdpa", True, False), ("eager", True, False)]
    if importlib.util.find_spec("flash_attn") and device.type == "cuda":
        options.append(("flash_attention_2", True, False))
    options.append(("sdpa", True, True))
    reference = None
    modeling = sys.modules[type(visual.blocks[0].attn).__module__]
    rotate = modeling.apply_rotary_pos_emb_vision
    try:
        for attention, precomputed, compiled in options:
            loaded.model.set_attn_implementation(attention)
            if compiled:
                started = time.perf_counter()
                compile_vision_tower(loaded)
                forward = run(precomputed)
                forward()  # compiles
                synchronize(device)
                compile_seconds = time.perf_counter() - started
            forward = run(precomputed)
            forward()  # warm-up
            peak_reset(device)
            seconds, output = timed(lambda: [forward() for _ in range(args.vision_repeats)][-1], device)
            if reference is None:
                reference = output.float()
            difference = (output.float() - reference).abs().max().item()
            what = f"{attention}, {'precomputed inputs' if precomputed else 'inputs from grids'}"
            what += ", compiled rotary + MLP" if compiled else ""
            result = f"max |diff| {difference:.2g}" + (f"; compile {compile_seconds:.0f} s" if compiled else "")
            row("vision", name, what, batch=len(examples), items=len(examples) * args.vision_repeats,
                seconds=seconds, memory=peaks(device), result=result + f"; {patches} patches/batch")
        if not importlib.util.find_spec("flash_attn"):
            row("vision", name, "flash_attention_2", result="skipped: flash-attn not installed")
    finally:
        modeling.apply_rotary_pos_emb_vision = rotate  # the compiled rotation was process-wide; undo it
        for module in [visual.rotary_pos_emb, *(block.mlp for block in visual.blocks)]:
            module._compiled_call_impl = None  # what nn.Module.compile set
        loaded.model.set_attn_implementation("sdpa")


# ---------------------------------------------------------------- one LoRA training step


def lora_step(name: str, loaded: ScoringModel, images: list[str], device: torch.device) -> None:
    from realqa.batching import ExampleBuilder
    from realqa.train.config import load_config
    from realqa.train.run import _prepare_model

    work = Path(tempfile.mkdtemp(prefix="realqa-gpu-check-train-"))
    config = load_config(ROOT / "configs" / "realqa_lora.yaml", [f"output_dir={work}"])
    tokenizer = loaded.tokenizer
    bounds = {"min_pixels": config.min_pixels, "max_pixels": config.max_pixels, **PIXELS}
    builder = ExampleBuilder(loaded.image_processor, loaded.model.config.image_token_id,
                             preprocessing=config.preprocessing, **bounds)
    scorer = Scorer(loaded)
    prompt = scorer.prompt_ids(scorer.task("quality"))
    answer = tokenizer.encode("3.47.", add_special_tokens=False) + [tokenizer.eos_token_id]
    examples = [builder.build(path, path, prompt + answer, [-100] * len(prompt) + answer) for path in images[:2]]
    batch = collate(examples[: config.per_device_batch_size], pad_id=loaded.pad_id,
                    image_token_id=loaded.model.config.image_token_id, padding_side="right",
                    token_types=accepts_token_types(loaded.model))
    batch = {key: value.to(device) for key, value in batch.items()}
    batch["pixel_values"] = batch["pixel_values"].to(loaded.dtype)

    model = _prepare_model(loaded, config)  # the recipe's LoRA (rank 128, every linear layer, tower too)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, fused=device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> float:
        with amp:
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    peak_reset(device)
    step()  # the first step also makes the optimizer's state
    seconds, loss = timed(step, device)
    count = sum(p.numel() for p in trainable)
    ok = loss == loss and abs(loss) != float("inf")
    row("train", name, f"LoRA r{config.lora.rank} step, batch {config.per_device_batch_size}, "
        f"grad checkpointing {'on' if config.gradient_checkpointing else 'off'}",
        batch=config.per_device_batch_size, items=1, seconds=seconds, memory=peaks(device),
        result=f"loss {loss:.3f}{'' if ok else ' NOT FINITE'}; {count / 1e6:.1f} M trainable; "
               f"{batch['input_ids'].shape[1]} tokens/row")


# ---------------------------------------------------------------- two torchrun ranks on one GPU


def torchrun_check(model_dir: Path, images: list[str], device: torch.device, work: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    common = ["score", *images, "--model", str(model_dir), "--batch-size", "1", "--quiet", "--overwrite",
              "--workers", "0"] + (["--device", "cpu"] if device.type == "cpu" else [])
    common += [option for key, value in PIXELS.items() for option in (f"--{key.replace('_', '-')}", str(value))]
    one, two = work / "one.jsonl", work / "two.jsonl"
    commands = {
        "one process": [sys.executable, "-m", "realqa.cli", *common, "--out", str(one)],
        "torchrun, 2 ranks": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                              "-m", "realqa.cli", *common, "--out", str(two)],
    }
    seconds = {}
    for label, command in commands.items():
        started = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
        seconds[label] = time.perf_counter() - started
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])[-300:]
            row("torchrun", "2b-widths, 4 layers" if device.type == "cuda" else "tiny", label, batch=1,
                items=len(images), seconds=seconds[label], result=f"FAILED (exit {done.returncode}): {tail}")
            return
    rows_one = [json.loads(line) for line in one.read_text().splitlines()]
    rows_two = [json.loads(line) for line in two.read_text().splitlines()]
    keys = ("path", "task", "score", "status", "text")
    same = sum(all(a.get(k) == b.get(k) for k in keys)
               and (a.get("ncm") is None) == (b.get("ncm") is None)
               and (a.get("ncm") is None or abs(a["ncm"] - b["ncm"]) < 1e-3)
               for a, b in zip(rows_one, rows_two))
    equal = same == len(rows_one) == len(rows_two) == len(images)
    row("torchrun", "2b-widths, 4 layers" if device.type == "cuda" else "tiny",
        "realqa score: torchrun 2 ranks on one device vs one process", batch=1, items=len(images),
        seconds=seconds["torchrun, 2 ranks"],
        result=f"{'equal' if equal else 'DIFFERENT'}: {same}/{len(images)} rows; "
               f"one process {seconds['one process']:.0f} s")


def save_model(loaded: ScoringModel, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    loaded.image_processor.save_pretrained(folder)
    ModelCard(description="random weights, for realqa's GPU check").save(folder)
    return folder


# ---------------------------------------------------------------- main


def main(argv=None) -> int:
    ROWS.clear()
    PIXELS.clear()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model on the CPU (fp32): a test")
    parser.add_argument("--models", nargs="+", default=["2b", "7b"], choices=["2b", "7b"])
    parser.add_argument("--images", type=int, default=64, help="images per engine run")
    parser.add_argument("--naive-images", type=int, default=8)
    parser.add_argument("--naive-tokens", type=int, default=14)
    parser.add_argument("--generate-images", type=int, default=32)
    parser.add_argument("--generate-batch", type=int, default=8)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--vision-repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, help="engine preprocessing processes (default: realqa's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["e2e", "memory", "vision", "train", "torchrun"])
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    if args.tiny:
        device = torch.device("cpu")
        args.models = ["tiny"]
        args.images, args.naive_images, args.generate_images = min(args.images, 8), min(args.naive_images, 2), 4
        args.generate_batch, args.batch_sizes, args.vision_repeats = 2, [2, 4], 1
        args.naive_tokens = min(args.naive_tokens, 6)
        PIXELS.update(TINY_PIXELS)
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --tiny on a CPU")
        device = torch.device("cuda")
    work = Path(tempfile.mkdtemp(prefix="realqa-gpu-check-"))
    images = mixed_jpegs(max(args.images, args.generate_images, args.naive_images, 8), work / "images")
    import transformers

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()})"
    header = (f"# realqa GPU check  {card}  torch {torch.__version__}  transformers {transformers.__version__}  "
              f"images: JPEG, shapes {', '.join(SHAPES)}")
    print(header, file=sys.stderr, flush=True)

    for name in args.models:
        if name == "tiny":
            model_dir = build_tiny_model(work / "tiny")
            loaded = load_scorer(str(model_dir), device="cpu").loaded
        else:
            torch.manual_seed(0)
            loaded = build_architecture(name, "cuda", torch.bfloat16)
        set_attention(loaded, "sdpa")
        label = name if name == "tiny" else f"qwen2-vl-{name}"
        scorer = Scorer(loaded, **PIXELS)
        if "e2e" not in args.skip:
            scorer = end_to_end(label, loaded, images[: args.images], args, device)
        if name in ("7b", "tiny") and "memory" not in args.skip:
            memory_at_batch_8(label, scorer, images, device)
        if name in ("2b", "tiny") and "vision" not in args.skip:
            vision_options(label, scorer, images, args, device)
        if name in ("7b", "tiny") and "train" not in args.skip:
            lora_step(label, loaded, images, device)
        del scorer, loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if "torchrun" not in args.skip:
        if args.tiny:
            model_dir = work / "tiny"
        else:
            torch.manual_seed(0)
            small = build_architecture("2b", "cuda", torch.bfloat16, layers=4)
            model_dir = save_model(small, work / "dist-model")
            del small
            torch.cuda.empty_cache()
        torchrun_check(model_dir, images[:8], device, work)

    print_table(header + f"  total {time.perf_counter() - started:.0f} s")
    failed = [r for r in ROWS if any(word in r["result"] for word in ("FAIL", "DIFFERENT", "NOT FINITE"))]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
