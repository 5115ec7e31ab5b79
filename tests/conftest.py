"""Shared fixtures: the tiny random model, and a copy of it taught the answer format.

Both are saved to disk and loaded through ``from_pretrained``, the path a real checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from realqa.engine import Scorer
from realqa.model import build_tiny_model, load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PHOTOS = sorted((ROOT / "examples" / "photos").glob("*.jpg"))
SHARED_DATA = ROOT.parent / "shared" / "data"
# Small images keep the tiny model fast: 16 visual tokens per image after the 2x2 merge.
SMALL_PIXELS = {"min_pixels": 28 * 28 * 16, "max_pixels": 28 * 28 * 16}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def brightness_image(level: float, size=(112, 112)) -> Image.Image:
    """A textured image whose mean brightness is ``level`` (0..1)."""
    rng = np.random.default_rng(int(level * 1000))
    noise = rng.normal(0, 12, (size[1], size[0], 3))
    pixels = np.clip(level * 255 + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


@pytest.fixture(scope="session")
def format_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model after a short teacher-forced fit on "The quality score of this image is d.dd.".

    The score to learn is brightness mapped to 1..5, so answers are well-formed numbers that
    depend on the image: enough to exercise parsing, NCM and batching on real outputs.
    """
    loaded = load_model(tiny_model_dir, device="cpu")
    scorer = Scorer(loaded, **SMALL_PIXELS)
    task = scorer.task("quality")
    tokenizer = loaded.tokenizer
    levels = np.linspace(0.05, 0.95, 12)
    items, targets = [], []
    for i, level in enumerate(levels):
        item = scorer.examples.build(brightness_image(level), f"img{i}", scorer.prompt_ids(task))
        answer = task.score_format.format(1 + 4 * level) + task.answer_suffix
        answer_ids = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        item.input_ids = item.input_ids + answer_ids
        items.append(item)
        targets.append(len(answer_ids))
    batch = scorer.collate(items)  # equal lengths: no padding
    labels = torch.full_like(batch["input_ids"], -100)
    for row, n in enumerate(targets):
        labels[row, -n:] = batch["input_ids"][row, -n:]
    model = loaded.model
    model.train()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    out = tmp_path_factory.mktemp("format-model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    loaded.image_processor.save_pretrained(out)
    loaded.card.save(out)
    return out


@pytest.fixture(scope="session")
def format_scorer(format_model_dir) -> Scorer:
    return Scorer(load_model(format_model_dir, device="cpu"), batch_size=16, **SMALL_PIXELS)
