"""Several questions per image: one shared image pass vs one pass per question.

Asks the overall quality plus K fine-grained attributes of every image, either in one call
(`score(..., attributes=True)`: the image and system prompt are prefilled once, each question reuses
that KV cache) or as K + 1 separate calls (each re-encodes the image). Prints ms per image.

    python benchmarks/multi_question.py [--images 16] [--batch-size 8] [--questions 1 3 6 11]

The model is the tiny random Qwen2-VL test model (speed does not depend on weight values) at RealQA's
image resolution (256-512 visual tokens), so the image part of the prompt dominates as it does at
full size. Both paths give the same answers (tested in tests/test_attributes.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from realqa.engine import load_scorer  # noqa: E402
from realqa.model import CARD_FILE, build_tiny_model  # noqa: E402
from realqa.tasks import attribute_task  # noqa: E402

ATTRIBUTES = ["clarity", "exposure", "saturation", "noise", "color", "subject_integrity", "subject_clutter",
              "background_clutter", "level_shot", "composition"]


def photos(count: int) -> list[str]:
    shared = ROOT.parent / "shared" / "data" / "photos"
    folder = shared if shared.is_dir() else ROOT / "examples" / "photos"
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    return (files * (count // len(files) + 1))[:count]


def best_of(run, repeats: int) -> float:
    """The fastest of ``repeats`` timings: the least disturbed by other work on the machine."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        timings.append(time.perf_counter() - started)
    return min(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 3, 6, 11])
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings per cell")
    args = parser.parse_args()
    images = photos(args.images)
    print(f"{len(images)} images, batch {args.batch_size}, torch threads {torch.get_num_threads()}, "
          f"device cpu, tiny random Qwen2-VL at RealQA resolution\n")
    print("| questions per image | shared pass ms/image | separate passes ms/image | speed-up |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_model(Path(tmp) / "model")
        card = json.loads((folder / CARD_FILE).read_text())
        for name in ATTRIBUTES:
            card["tasks"][name] = attribute_task(name, values=["poor", "fair", "good"]).to_dict()
        for n_questions in args.questions:
            card["attributes"] = ATTRIBUTES[: n_questions - 1]
            (folder / CARD_FILE).write_text(json.dumps(card))
            scorer = load_scorer(str(folder), device="cpu", batch_size=args.batch_size)
            scorer.score(images[:2], attributes=n_questions > 1)  # warm-up

            def shared() -> None:
                assert len(scorer.score(images, attributes=n_questions > 1)) == len(images)

            def separate() -> None:
                for task in ["quality", *card["attributes"]]:
                    scorer.score(images, task=task)

            shared_s = best_of(shared, args.repeats)
            separate_s = best_of(separate, args.repeats)
            per = 1000 / len(images)
            print(f"| {n_questions} | {shared_s * per:.0f} | {separate_s * per:.0f} | {separate_s / shared_s:.2f}x |")


if __name__ == "__main__":
    main()
