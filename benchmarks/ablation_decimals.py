"""The paper's precision ablation on the tiny model: train at 0/1/2/3 decimals, compare held-out accuracy.

Trains the tiny random-initialised Qwen2-VL model with ``realqa.train`` (full fine-tuning, same
data, steps and seed for every precision) on the learnable brightness toy set, then scores the
held-out images and prints SRCC/PLCC of the greedy score and of the NCM expected value.

    python benchmarks/ablation_decimals.py [--seeds 0 1 2] [--epochs 20] [--train 96 --test 32]

No claim about which precision wins is built in: the table is what the runs give.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]  # the toy set generator lives with the tests

from realqa.data.manifest import read_manifest  # noqa: E402
from realqa.engine import load_scorer  # noqa: E402
from realqa.metrics import evaluate  # noqa: E402
from realqa.model import build_tiny_model  # noqa: E402
from realqa.train import load_config, train  # noqa: E402
from toy_data import write_toy_dataset  # noqa: E402

PIXELS = 28 * 28 * 16  # 16 visual tokens per image keeps CPU runs short


def run(decimals: int, seed: int, args, work: Path, base: Path, manifests) -> dict:
    out = work / f"d{decimals}-s{seed}"
    overrides = [f"model={base}", f"output_dir={out}", f"train=[{manifests[0]}]", "finetuning=full",
                 f"learning_rate={args.lr}", f"epochs={args.epochs}", "per_device_batch_size=8",
                 "gradient_accumulation_steps=1", "save_steps=100000", "gradient_checkpointing=false",
                 "progress_bar=false", "logging_steps=100000", f"decimals={decimals}", f"seed={seed}",
                 f"min_pixels={PIXELS}", f"max_pixels={PIXELS}"]
    started = time.time()
    train(load_config(None, overrides), log=lambda message: None)
    wall = time.time() - started
    test = read_manifest(manifests[1])
    scorer = load_scorer(str(out), device="cpu", batch_size=16, min_pixels=PIXELS, max_pixels=PIXELS)
    results = scorer.score([str(test.image_path(s)) for s in test.samples])
    labels = [s.scores["quality"] for s in test.samples]
    greedy = evaluate([r.score for r in results], labels)
    ncm = evaluate([r.ncm for r in results], labels)
    return {"wall": wall, "srcc": greedy.srcc, "plcc": greedy.plcc, "failed": greedy.n_failed,
            "ncm_srcc": ncm.srcc, "ncm_plcc": ncm.plcc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--test", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "base")
        manifests = write_toy_dataset(work / "toy", n_train=args.train, n_test=args.test)
        rows = {d: [run(d, seed, args, work, base, manifests) for seed in args.seeds] for d in (0, 1, 2, 3)}

    def cell(values) -> str:
        values = list(values)
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    print(f"\nPrecision ablation, tiny model, toy brightness set ({args.train} train / {args.test} held-out images), "
          f"full fine-tuning, {args.epochs} epochs, seeds {args.seeds}; mean ± std over seeds\n")
    print("| decimals | SRCC (greedy) | PLCC (greedy) | SRCC (NCM) | PLCC (NCM) | parse failures | train wall s/run |")
    print("|---|---|---|---|---|---|---|")
    for decimals, runs in rows.items():
        print(f"| {decimals} | {cell(r['srcc'] for r in runs)} | {cell(r['plcc'] for r in runs)} | "
              f"{cell(r['ncm_srcc'] for r in runs)} | {cell(r['ncm_plcc'] for r in runs)} | "
              f"{sum(r['failed'] for r in runs)} | {statistics.mean(r['wall'] for r in runs):.1f} |")


if __name__ == "__main__":
    main()
