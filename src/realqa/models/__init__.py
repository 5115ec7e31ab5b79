"""Models shipped inside the package.

``demo``: a small Qwen2-VL-architecture model trained from scratch by the project on synthetic
distortions of 18 photos (``scripts/train_demo_model.py``); the default of ``realqa score``. It rates
technical degradations only; its ``realqa_card.json`` says what it was trained on and what it cannot judge.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO = "demo"


def demo_model_path() -> Path:
    """The folder of the bundled demo model (loadable with ``realqa.load_scorer``).

    Raises FileNotFoundError when the package was built without it.
    """
    folder = Path(str(resources.files(__name__) / DEMO))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: the bundled demo model is missing; rebuild it with "
                                "`python scripts/train_demo_model.py` or pass --model")
    return folder
