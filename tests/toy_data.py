"""A learnable toy dataset: textured images whose mean brightness is the quality score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from realqa.data.manifest import write_manifest
from realqa.data.records import Dataset, Sample, ScoreMapping, SplitInfo


def brightness_image(level: float, size=(112, 112)) -> Image.Image:
    """A textured image whose mean brightness is ``level`` (0..1)."""
    rng = np.random.default_rng(int(level * 1000))
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    pixels = np.clip(level * 255 + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def write_toy_dataset(folder: Path, n_train: int = 48, n_test: int = 16, seed: int = 0) -> tuple[Path, Path]:
    """Images in ``folder/images``, manifests ``folder/train.jsonl`` and ``folder/test.jsonl``.

    Brightness levels are drawn at random; score = 1 + 4 * brightness (quality range 1..5).
    """
    rng = np.random.default_rng(seed)
    levels = rng.uniform(0.05, 0.95, n_train + n_test)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i, level in enumerate(levels):
        name = f"images/toy_{i:03d}.png"
        brightness_image(float(level), size=(56, 56)).save(folder / name)
        score = 1 + 4 * float(level)
        split = "train" if i < n_train else "test"
        samples.append(Sample(id=f"toy_{i:03d}", image=name, scores={"quality": score}, native={"quality": score},
                              split=split, dataset="toy"))
    dataset = Dataset(name="toy", mappings={"quality": ScoreMapping.onto_task("quality", (1, 5))}, samples=samples,
                      split=SplitInfo("random", "toy split by index"), root=str(folder))
    return (write_manifest(dataset.subset("train"), folder / "train.jsonl"),
            write_manifest(dataset.subset("test"), folder / "test.jsonl"))


def exposure_of(level: float) -> str:
    return "dark" if level < 0.35 else "bright" if level > 0.65 else "normal"


def write_attribute_toy_dataset(folder: Path, n_train: int = 64, n_test: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Brightness decides ``exposure`` (dark/normal/bright), blur decides ``clarity`` (blurry/sharp),
    and quality = 1 + 3 * brightness + sharp: every label is determined by the image."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n_train + n_test):
        level = float(rng.uniform(0.05, 0.95))
        sharp = bool(rng.random() < 0.5)
        image = brightness_image(level, size=(112, 112))
        if not sharp:
            image = image.filter(ImageFilter.GaussianBlur(3))
        name = f"images/attr_{i:03d}.png"
        image.save(folder / name)
        score = 1 + 3 * level + sharp
        attributes = {"exposure": exposure_of(level), "clarity": "sharp" if sharp else "blurry"}
        samples.append(Sample(id=f"attr_{i:03d}", image=name, scores={"quality": score}, native={"quality": score},
                              split="train" if i < n_train else "test", dataset="toy-attributes",
                              attributes=attributes))
    from realqa.data.attributes import infer_schema

    dataset = Dataset(name="toy-attributes", mappings={"quality": ScoreMapping.onto_task("quality", (1, 5))},
                      samples=samples, split=SplitInfo("random", "by index"), root=str(folder),
                      attribute_schema=infer_schema(s.attributes for s in samples))
    return (write_manifest(dataset.subset("train"), folder / "train.jsonl"),
            write_manifest(dataset.subset("test"), folder / "test.jsonl"))
