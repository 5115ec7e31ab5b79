"""Shared fixtures: the tiny random model, and a copy of it trained on the toy brightness task.

Both are saved to disk and loaded through ``from_pretrained``, the path a real checkpoint takes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from realqa.engine import Scorer
from realqa.model import build_tiny_model, load_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PHOTOS = sorted((ROOT / "examples" / "photos").glob("*.jpg"))
SHARED_DATA = ROOT.parent / "shared" / "data"
# Small images keep the tiny model fast: 16 visual tokens per image after the 2x2 merge.
SMALL_PIXELS = {"min_pixels": 28 * 28 * 16, "max_pixels": 28 * 28 * 16}
# Fixtures that train a model before the first test that uses them: such tests are marked slow.
TRAINED_FIXTURES = frozenset({"format_model_dir", "attribute_model"})


def pytest_collection_modifyitems(config, items):
    """``slow`` (deselected by ``make test-fast``) also on every test that needs a trained model."""
    for item in items:
        if TRAINED_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> tuple[Path, Path]:
    """(train manifest, test manifest) of the learnable brightness -> quality toy set."""
    from toy_data import write_toy_dataset

    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="session")
def format_model_dir(tiny_model_dir, toy_dataset, tmp_path_factory) -> Path:
    """The tiny model fully fine-tuned with ``realqa.train`` on the toy set.

    Its answers are well-formed numbers that depend on the image: enough to exercise parsing,
    NCM and batching on real model outputs.
    """
    from realqa.train import load_config, train

    out = tmp_path_factory.mktemp("format-model")
    overrides = [f"model={tiny_model_dir}", f"output_dir={out}", f"train=[{toy_dataset[0]}]", "finetuning=full",
                 "learning_rate=3e-3", "epochs=20", "per_device_batch_size=8", "gradient_accumulation_steps=1",
                 "save_steps=100000", "gradient_checkpointing=false", *(f"{k}={v}" for k, v in SMALL_PIXELS.items())]
    train(load_config(None, overrides), log=lambda message: None)
    return out


@pytest.fixture(scope="session")
def format_scorer(format_model_dir) -> Scorer:
    return Scorer(load_model(format_model_dir, device="cpu"), batch_size=16, **SMALL_PIXELS)
