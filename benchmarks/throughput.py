"""Scoring throughput: the naive per-image ``generate`` baseline vs realqa's engine, same run, same images.

    PYTHONPATH=src python3 benchmarks/throughput.py                      # GPU: Qwen2-VL-2B and -7B architectures
    PYTHONPATH=src python3 benchmarks/throughput.py --tiny --images 48   # CPU: the tiny test model

The models are the real Qwen2-VL-2B / -7B architectures (configs written out below from the
published config.json values) with random weights in bf16 (speed does not depend on weight values),
built straight on the GPU. The images are real JPEGs: copies of ../shared/data/photos resized to
784x504 (28x18 merged patches = 504 visual tokens each; ``--size``), decoded from disk in every run.

(a) baseline: for each image, the full prompt (no forced answer prefix) through ``model.generate``,
    greedy, ``--baseline-new-tokens`` new tokens (a whole answer "The quality score of this image is
    3.47." + end = 14 tokens in Qwen2's tokenizer; random weights never stop early, so it is fixed);
    images decoded and preprocessed in line, as the official predict script does.
(b) engine: ``Scorer.score`` on the image files: workers decode ahead, the prefix is forced, 5 tokens
    decoded, batches of ``--batch-sizes``.

Prints images/s, ms/image and peak GPU memory per row, then where an engine batch spends its time
(preprocess on one core / vision tower / language-model prefill / decode, ms per image, measured in
a separate pass with the GPU synchronised around each part). Only APIs of transformers >= 5.17.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from realqa.chat import render_prompt  # noqa: E402
from realqa.engine import Scorer, compile_language_model, load_scorer, set_attention  # noqa: E402
from realqa.model import MAX_PIXELS, MIN_PIXELS, ModelCard, ScoringModel, build_tiny_model, build_tiny_tokenizer  # noqa: E402
from realqa.numeric import digit_token_ids  # noqa: E402
from realqa.prefetch import default_workers  # noqa: E402

# From Qwen/Qwen2-VL-2B-Instruct and Qwen/Qwen2-VL-7B-Instruct config.json. Both share the vision
# tower (32 blocks, width 1280, 16 heads, MLP ratio 4); its merger projects to the LM width.
ARCHITECTURES = {
    "2b": {"text": {"hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
                    "intermediate_size": 8960, "vocab_size": 151936}, "tie_word_embeddings": True},
    "7b": {"text": {"hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                    "intermediate_size": 18944, "vocab_size": 152064}, "tie_word_embeddings": False},
}
VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "patch_size": 14, "spatial_merge_size": 2,
          "temporal_patch_size": 2, "in_channels": 3, "hidden_act": "quick_gelu"}


def build_architecture(name: str, device: str, dtype: torch.dtype, layers: int | None = None) -> ScoringModel:
    """A random-weight Qwen2-VL of the named size on ``device``. The tokenizer is the tiny test one (its
    ids are valid in the real vocabulary; the prompt is ~10% of the sequence, the image the rest)."""
    from transformers import AutoModelForImageTextToText, Qwen2VLConfig
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    spec = ARCHITECTURES[name]
    tokenizer = build_tiny_tokenizer()
    token = tokenizer.convert_tokens_to_ids
    text = {**spec["text"], "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "hidden_act": "silu",
            "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]},
            "eos_token_id": token("<|im_end|>"), "pad_token_id": token("<|endoftext|>"), "bos_token_id": None}
    vision = {**VISION, "hidden_size": spec["text"]["hidden_size"]}
    if layers:  # a smoke test of the real widths on a CPU
        text["num_hidden_layers"], vision["depth"] = layers, layers
    config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=spec["tie_word_embeddings"],
                           image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
                           vision_start_token_id=token("<|vision_start|>"), vision_end_token_id=token("<|vision_end|>"))
    config._attn_implementation = "sdpa"
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # random weights made in the target dtype, directly on the device
    try:
        with torch.device(device):
            model = AutoModelForImageTextToText.from_config(config)
    finally:
        torch.set_default_dtype(default)
    model.eval()
    model.generation_config.eos_token_id = token("<|im_end|>")
    model.generation_config.pad_token_id = token("<|endoftext|>")
    processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    return ScoringModel(model, tokenizer, processor, ModelCard(), digit_token_ids(tokenizer), f"qwen2-vl-{name}-random")


def photo_copies(count: int, size: str, folder: Path) -> list[str]:
    """``count`` JPEG files: the shared photos resized to ``size`` (WxH, or 'none' to keep them), cycled."""
    from PIL import Image

    source = ROOT.parent / "shared" / "data" / "photos"
    originals = sorted(source.glob("*.jpg")) or sorted((ROOT / "examples" / "photos").glob("*.jpg"))
    made = []
    for photo in originals:
        image = Image.open(photo).convert("RGB")
        if size != "none":
            w, h = (int(v) for v in size.lower().split("x"))
            image = image.resize((w, h) if image.width >= image.height else (h, w), Image.BICUBIC)
        path = folder / f"{photo.stem}.jpg"
        image.save(path, quality=90)
        made.append(str(path))
    return [made[i % len(made)] for i in range(count)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


# ---------------------------------------------------------------- (a) the naive baseline


@torch.inference_mode()
def run_baseline(loaded: ScoringModel, scorer: Scorer, images: list[str], new_tokens: int) -> float:
    """Per image: decode, preprocess, full prompt (no forced prefix), ``generate``. Returns seconds."""
    task = scorer.task("quality")
    prompt = loaded.tokenizer.encode(render_prompt(loaded.tokenizer, task), add_special_tokens=False)
    device = loaded.device
    started = time.perf_counter()
    for i, path in enumerate(images):
        example = scorer.examples.build(path, path, prompt)
        batch = scorer.collate([example])
        out = loaded.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        assert out.shape[1] == batch["input_ids"].shape[1] + new_tokens
        loaded.tokenizer.decode(out[0, batch["input_ids"].shape[1]:])
    synchronize(device)
    return time.perf_counter() - started


# ---------------------------------------------------------------- (b) the engine, and where its time goes


def run_engine(scorer: Scorer, images: list[str], batch_size: int) -> float:
    started = time.perf_counter()
    results = scorer.score(images, batch_size=batch_size)
    synchronize(scorer.loaded.device)
    assert len(results) == len(images) and not any(r.status == "error" for r in results)
    return time.perf_counter() - started


def breakdown(scorer: Scorer, images: list[str], batch_size: int) -> dict[str, float]:
    """ms per image: preprocess (one core, in line), vision tower, LM prefill, decode; GPU synchronised."""
    loaded = scorer.loaded
    device = loaded.device
    model = loaded.model
    visual = getattr(getattr(model, "model", None), "visual", None) or model.visual
    spent = {"preprocess": 0.0, "vision": 0.0, "prefill": 0.0, "decode": 0.0}
    clock: dict[str, float] = {}
    calls = {"n": 0}

    def vision_pre(module, args):
        synchronize(device)
        clock["vision"] = time.perf_counter()

    def vision_post(module, args, output):
        synchronize(device)
        spent["vision"] += time.perf_counter() - clock["vision"]

    def model_pre(module, args, kwargs):
        synchronize(device)
        clock["call"] = time.perf_counter()

    def model_post(module, args, kwargs, output):
        synchronize(device)
        part = "prefill" if calls["n"] == 0 else "decode"  # the first forward of a batch is its prefill
        spent[part] += time.perf_counter() - clock["call"]
        calls["n"] += 1

    answer = scorer._answer

    def counted(*args, **kwargs):
        calls["n"] = 0
        return answer(*args, **kwargs)

    build = scorer.examples.build

    def timed_build(*args, **kwargs):
        started = time.perf_counter()
        try:
            return build(*args, **kwargs)
        finally:
            spent["preprocess"] += time.perf_counter() - started

    hooks = [visual.register_forward_pre_hook(vision_pre), visual.register_forward_hook(vision_post),
             model.register_forward_pre_hook(model_pre, with_kwargs=True),
             model.register_forward_hook(model_post, with_kwargs=True)]
    workers = scorer.workers
    scorer._answer, scorer.examples.build, scorer.workers = counted, timed_build, 0
    try:
        scorer.score(images, batch_size=batch_size)
    finally:
        for hook in hooks:
            hook.remove()
        del scorer._answer, scorer.examples.build
        scorer.workers = workers
    spent["prefill"] -= spent["vision"]  # the vision tower runs inside the prefill forward
    return {part: 1000 * seconds / len(images) for part, seconds in spent.items()}


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny random test model on the CPU (fp32)")
    parser.add_argument("--models", nargs="+", default=["2b", "7b"], choices=sorted(ARCHITECTURES))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--images", type=int, default=256, help="images per engine run")
    parser.add_argument("--baseline-images", type=int, default=16, help="images for the (slow) baseline")
    parser.add_argument("--baseline-new-tokens", type=int, default=14)
    parser.add_argument("--breakdown-batches", type=int, default=2, help="batches timed part by part")
    parser.add_argument("--size", default="784x504", help="JPEG size WxH (504 visual tokens), or 'none'")
    parser.add_argument("--workers", type=int, help="engine preprocessing processes (default: realqa's)")
    parser.add_argument("--attention", default="auto", help="auto, sdpa, flash_attention_2, eager")
    parser.add_argument("--compile", action="store_true", help="torch.compile the language model (engine and baseline)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--layers", type=int, help="override both towers' depth (a quick check of the real widths)")
    args = parser.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    device = torch.device(args.device or ("cpu" if args.tiny or not torch.cuda.is_available() else "cuda"))
    workers = args.workers if args.workers is not None else default_workers(device)
    work = Path(tempfile.mkdtemp(prefix="realqa-throughput-"))
    images = photo_copies(args.images, args.size, work)
    if device.type == "cuda":
        card = torch.cuda.get_device_name(device)
    else:
        card = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    import transformers

    print(f"# {date.today()}  {card}  torch {torch.__version__}  transformers {transformers.__version__}  "
          f"workers {workers}  images {args.size} JPEG")
    rows, parts = [], []
    for name in (["tiny"] if args.tiny else args.models):
        if name == "tiny":
            loaded = load_scorer(str(build_tiny_model(work / "tiny")), device=str(device)).loaded
        else:
            loaded = build_architecture(name, str(device), torch.bfloat16 if device.type == "cuda" else torch.float32,
                                        args.layers)
        attention = set_attention(loaded, args.attention)
        params = sum(p.numel() for p in loaded.model.parameters())
        if args.compile:
            compile_language_model(loaded)
        scorer = Scorer(loaded, workers=workers)
        example = scorer.examples.build(images[0], images[0], scorer.prompt_ids(scorer.task("quality")))
        visual = example.input_ids.count(loaded.model.config.image_token_id)
        print(f"# {name}: {params / 1e6:,.1f} M parameters, {loaded.dtype}, attention {attention}"
              f"{', compiled LM' if args.compile else ''}; per image {visual} visual "
              f"+ {len(example.input_ids) - visual} text tokens")

        base_images = images[: args.baseline_images]
        run_baseline(loaded, scorer, base_images[:1], args.baseline_new_tokens)  # warm-up
        peak_reset(device)
        seconds = run_baseline(loaded, scorer, base_images, args.baseline_new_tokens)
        baseline_rate = len(base_images) / seconds
        rows.append((name, f"generate, {args.baseline_new_tokens} tokens", 1, len(base_images), baseline_rate,
                     1000 / baseline_rate, peak_gib(device), 1.0))
        for batch_size in args.batch_sizes:
            run_engine(scorer, images[:batch_size], batch_size)  # warm-up: kernels and allocator for this size
            peak_reset(device)
            seconds = run_engine(scorer, images, batch_size)
            rate = len(images) / seconds
            rows.append((name, "realqa engine", batch_size, len(images), rate, 1000 / rate, peak_gib(device),
                         rate / baseline_rate))
            timed = breakdown(scorer, images[: batch_size * args.breakdown_batches], batch_size)
            parts.append((name, batch_size, timed))
            print(f"  {name} batch {batch_size}: {rate:.1f} images/s", flush=True)
        del scorer, loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print("| model | path | batch | images | images/s | ms/image | peak GPU GiB | vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for name, path, batch, count, rate, ms, peak, gain in rows:
        memory = f"{peak:.1f}" if peak is not None else "-"
        print(f"| {name} | {path} | {batch} | {count} | {rate:.2f} | {ms:.1f} | {memory} | {gain:.1f}x |")
    print()
    print("Where an engine batch spends its time (ms per image; separate pass, synchronised; preprocess on one core, "
          f"which {workers} worker processes overlap with the model):")
    print()
    print("| model | batch | preprocess (1 core) | vision tower | LM prefill | decode | model total |")
    print("|---|---|---|---|---|---|---|")
    for name, batch, t in parts:
        total = t["vision"] + t["prefill"] + t["decode"]
        print(
            f"| {name} | {batch} | {t['preprocess']:.1f} | {t['vision']:.1f} | {t['prefill']:.1f} | {t['decode']:.1f} "
            f"| {total:.1f} |"
        )


if __name__ == "__main__":
    main()
