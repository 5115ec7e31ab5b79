"""Split names and the seeded random split.

Split names are canonical: ``train``, ``validation``, ``test`` (and ``all`` for a dataset used
whole, e.g. for zero-shot evaluation). The random split is reproducible from its seed alone: the
group keys are sorted, then shuffled by Python's ``random.Random(seed)``, then cut by the ratios.
"""

from __future__ import annotations

import functools
import math
import random
import re
from pathlib import Path
from typing import Sequence

from .records import TEST, TRAIN, VALIDATION

_ALIASES = {
    "train": TRAIN, "training": TRAIN,
    "val": VALIDATION, "valid": VALIDATION, "validation": VALIDATION, "dev": VALIDATION,
    "test": TEST, "testing": TEST,
}


def canonical_split(name: str) -> str | None:
    """'training' -> 'train', 'val' -> 'validation', ...; None for an unknown name."""
    return _ALIASES.get(str(name).strip().lower())


@functools.lru_cache(maxsize=256)  # asked once per row, answered once per file
def split_from_file_name(path: str | Path) -> str | None:
    """The split a file announces: a split word in its name ('ava_test.csv', 'train-00000-of-00001.parquet')
    or a folder named after a split ('train/metadata.jsonl')."""
    path = Path(path)
    found = {canonical_split(token) for token in re.split(r"[^a-z]+", path.stem.lower())} - {None}
    if len(found) == 1:
        return found.pop()
    return canonical_split(path.parent.name)


def split_names(count: int) -> tuple[str, ...]:
    if count == 2:
        return (TRAIN, TEST)
    if count == 3:
        return (TRAIN, VALIDATION, TEST)
    raise ValueError(f"a random split takes 2 ratios (train, test) or 3 (train, validation, test), got {count}")


def random_split(groups: Sequence[str], ratios: Sequence[float], seed: int) -> list[str]:
    """The split of each item, given each item's group key (items of one group stay together)."""
    names = split_names(len(ratios))
    if any(r <= 0 for r in ratios) or not math.isclose(sum(ratios), 1.0, abs_tol=1e-6):
        raise ValueError(f"split ratios must be positive and sum to 1, got {tuple(ratios)}")
    keys = sorted(set(groups))
    random.Random(seed).shuffle(keys)
    assigned, start, cumulative = {}, 0, 0.0
    for name, ratio in zip(names, ratios):
        cumulative += ratio
        end = round(cumulative * len(keys))
        assigned.update(dict.fromkeys(keys[start:end], name))
        start = end
    return [assigned[group] for group in groups]


def parse_ratios(text: str) -> tuple[float, ...]:
    """'0.8,0.2' or '80/20' -> (0.8, 0.2)."""
    parts = [p for p in re.split(r"[,/: ]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"split ratios must be numbers like 0.8,0.2, got {text!r}") from None
    total = sum(values)
    if total <= 0:
        raise ValueError(f"split ratios must be positive, got {text!r}")
    return tuple(v / total for v in values)
