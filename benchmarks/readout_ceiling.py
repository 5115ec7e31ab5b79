"""How far the demo model's vision tower can go: readouts fitted on its features, scored on the held-out split.

    python benchmarks/readout_ceiling.py --synth demo-work/synth [--model M] [--every 2] [--threads 2]

The language model is one way to read the tower; a regression fitted directly on what the tower hands it
is another. If no such readout ranks the held-out canvases near a target, training the language model
longer cannot reach it either: the tower has to see more. Per canvas, the tower's merger outputs (what the
language model reads) are pooled into 256 numbers: mean, standard deviation and maximum over the fragment
tokens, mean over the global view's. Readouts, each fitted on every ``--every``-th training canvas with a
quality label and scored on every held-out canvas against the visibility labels:

- ridge regression, strength chosen by photo-grouped cross-validation (``classical_baseline.fit_ridge``);
- gradient-boosted trees (scikit-learn's ``HistGradientBoostingRegressor``, a non-linear readout);
- the same trees on the tower's numbers plus the classical baseline's 51 image statistics, and on those
  statistics alone (how much the tower adds to hand-made features, and they to it).

The trees need scikit-learn (``pip install scikit-learn``; not a realqa dependency): without it only the
ridge row is printed. A probe of the data and the tower, not of realqa's scoring path.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import classical_baseline as baseline  # noqa: E402  (beside this script)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from realqa.data.manifest import read_manifest  # noqa: E402
from realqa.metrics import evaluate  # noqa: E402
from realqa.preprocessing import FRAGMENT_CANVAS  # noqa: E402

TYPES = ("overexposure", "underexposure", "gaussian_blur", "motion_blur", "downscale", "noise", "jpeg")
CANVAS_PIXELS = FRAGMENT_CANVAS[0] * FRAGMENT_CANVAS[1]  # the set stores canvases the processor keeps as they are


def tower(model: str):
    """The vision tower and image processor of a model folder (the bundled demo model by default)."""
    from transformers import AutoImageProcessor, AutoModelForImageTextToText

    loaded = AutoModelForImageTextToText.from_pretrained(model)
    return loaded.model.visual.eval(), AutoImageProcessor.from_pretrained(model)


def pooled_features(visual, processor, dataset, samples, batch: int = 16) -> np.ndarray:
    """Per canvas: mean, std and max over the fragment tokens (the canvas's right half) and the mean over the
    global view's tokens (its left half) of the merger outputs."""
    rows = []
    for start in range(0, len(samples), batch):
        chunk = samples[start:start + batch]
        images = [Image.open(dataset.image_path(s)).convert("RGB") for s in chunk]
        inputs = processor(images=images, return_tensors="pt",
                           size={"shortest_edge": CANVAS_PIXELS, "longest_edge": CANVAS_PIXELS})
        with torch.no_grad():
            tokens = visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"]).pooler_output
        grid_rows, grid_columns = (int(n) // 2 for n in inputs["image_grid_thw"][0, 1:])
        per_canvas = tokens.reshape(len(chunk), grid_rows, grid_columns, -1)
        whole, fragments = (per_canvas[:, :, : grid_columns // 2].flatten(1, 2),
                            per_canvas[:, :, grid_columns // 2:].flatten(1, 2))
        rows.append(torch.cat([fragments.mean(1), fragments.std(1), fragments.amax(1), whole.mean(1)], 1).numpy())
    return np.concatenate(rows)


def per_type(predicted, labels, kinds) -> dict[str, float]:
    """SRCC overall and per distortion type (that type's canvases plus the clean ones), as the demo benchmark."""
    figures = {"all": evaluate(list(predicted), list(labels)).srcc}
    for name in TYPES:
        index = [i for i, k in enumerate(kinds) if k in ((), (name,))]
        figures[name] = evaluate([predicted[i] for i in index], [labels[i] for i in index]).srcc
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synth", required=True, help="the model's synthetic set (train.jsonl and test.jsonl)")
    parser.add_argument("--model", help="model folder (default: the bundled demo model)")
    parser.add_argument("--every", type=int, default=2, help="fit on every N-th training canvas")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--workers", type=int, default=1, help="processes computing the classical statistics")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from realqa.models import demo_model_path

    started = time.time()
    visual, processor = tower(args.model or str(demo_model_path()))
    train, test = read_manifest(Path(args.synth) / "train.jsonl"), read_manifest(Path(args.synth) / "test.jsonl")
    fitted = [s for s in train.samples if "quality" in s.scores][:: args.every]
    x, y = pooled_features(visual, processor, train, fitted), np.array([s.scores["quality"] for s in fitted])
    photos = [s.info["photo"] for s in fitted]
    test_x = pooled_features(visual, processor, test, test.samples)
    test_y = [s.scores["quality"] for s in test.samples]
    kinds = [tuple(d["type"] for d in s.info["distortions"]) for s in test.samples]
    print(f"tower features: {len(fitted)} training canvases of {len(set(photos))} sources, {len(test_y)} held-out "
          f"canvases, {x.shape[1]} numbers each ({time.time() - started:.0f} s)", file=sys.stderr)

    readouts = {"ridge on the tower's features": baseline.fit_ridge(x, y, photos).predict(test_x)}
    try:
        from sklearn.ensemble import HistGradientBoostingRegressor
    except ImportError:
        print("gradient-boosted readouts skipped: pip install scikit-learn", file=sys.stderr)
    else:
        def trees(train_x, held_x):
            model = HistGradientBoostingRegressor(max_iter=400, learning_rate=0.05, random_state=0)
            return model.fit(train_x, y).predict(held_x)

        statistics = baseline.feature_matrix([str(train.image_path(s)) for s in fitted], args.workers)
        test_statistics = baseline.feature_matrix([str(test.image_path(s)) for s in test.samples], args.workers)
        readouts["gradient-boosted trees on the tower's features"] = trees(x, test_x)
        readouts["trees on the tower's features + 51 image statistics"] = trees(np.hstack([x, statistics]),
                                                                               np.hstack([test_x, test_statistics]))
        readouts["trees on the 51 image statistics alone"] = trees(statistics, test_statistics)

    print("| readout (held-out SRCC) | all | " + " | ".join(TYPES) + " |")
    print("|---|---|" + "---|" * len(TYPES))
    for name, predicted in readouts.items():
        figures = per_type(list(predicted), test_y, kinds)
        print(f"| {name} | {figures['all']:.3f} | " + " | ".join(f"{figures[t]:.2f}" for t in TYPES) + " |")
    print(f"({time.time() - started:.0f} s in all)", file=sys.stderr)


if __name__ == "__main__":
    main()
