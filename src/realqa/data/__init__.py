"""Datasets: one adapter per dataset behind a registry, validated samples, frozen split manifests.

    >>> from realqa import data
    >>> data.names()                                                      # doctest: +SKIP
    >>> ds = data.load("koniq10k", root="/datasets/koniq10k")              # doctest: +SKIP
    >>> print(ds.report.summary())                                        # doctest: +SKIP
    >>> data.write_manifests(ds, "prepared/koniq10k")                     # doctest: +SKIP
    >>> test = data.read_manifest("prepared/koniq10k/test.jsonl")          # doctest: +SKIP

Every adapter goes through the same pipeline (see :mod:`realqa.data.adapter`); problems are
either fatal (:class:`DataError`) or listed row by row in the dataset's validation report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from .adapter import Adapter, Option
from .aesthetics import AVA, TAD66K
from .attributes import AttributeSpec
from .generic import Generic
from .iqa import SPAQ, TID2013, KADID10k, KonIQ10k, LIVEChallenge
from .llamafactory import LlamaFactory, export_sharegpt
from .manifest import read_manifest, write_manifest, write_manifests
from .problems import DataError, Problem, ValidationReport
from .realqa import RealQA
from .records import Dataset, Sample, ScoreMapping, SplitInfo
from .video import LIVEVQC, KoNViD1k

_ADAPTERS: dict[str, Adapter] = {
    adapter.name: adapter
    for adapter in (
        KonIQ10k(), SPAQ(), LIVEChallenge(), KADID10k(), TID2013(),
        AVA(), TAD66K(), RealQA(), KoNViD1k(), LIVEVQC(), Generic(), LlamaFactory(),
    )
}


def names() -> list[str]:
    """The registered dataset names."""
    return list(_ADAPTERS)


def get_adapter(name: str) -> Adapter:
    """The adapter for ``name``; its folder names (e.g. 'KonIQ-10k') are accepted too, case ignored."""
    wanted = name.strip().lower()
    for adapter in _ADAPTERS.values():
        if wanted == adapter.name or wanted in (alias.lower() for alias in adapter.folder_names):
            return adapter
    raise ValueError(f"unknown dataset {name!r}; known: {', '.join(_ADAPTERS)}")


def load(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    labels: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    split: str | None = None,
    seed: int | None = None,
    ratios: Sequence[float] | str | None = None,
    image_dir: str | None = None,
    check_decode: bool = False,
    **options,
) -> Dataset:
    """Read, validate and split a dataset.

    ``root``: the dataset folder; its label file is found inside and its images are checked
    (without it, only the labels are read). ``labels``: label file(s) to use instead of searching.
    ``split``: 'official' (the dataset's own split), 'random' (seeded; ``seed``, ``ratios``) or
    'all'; default: the dataset's convention. ``image_dir``: force the image folder under root.
    ``check_decode``: fully decode each image instead of reading its header. Other keyword options
    are the adapter's own (``get_adapter(name).options``). The validation report is ``.report``.
    """
    return get_adapter(name).load(root, labels=labels, split=split, seed=seed, ratios=ratios,
                                  image_dir=image_dir, check_decode=check_decode, **options)


def prepare(name: str, root: str | os.PathLike | None, out: str | os.PathLike, **load_options) -> tuple[Dataset, dict]:
    """Load ``name`` and freeze it: ``out/<dataset>/<split>.jsonl`` manifests plus ``report.json``/``report.txt``.

    Returns the dataset and {split: manifest path}.
    """
    dataset = load(name, root, **load_options)
    folder = Path(out) / dataset.name
    paths = write_manifests(dataset, folder)
    dataset.report.write(folder)
    return dataset, paths


def import_sharegpt(files: str | os.PathLike | Sequence[str | os.PathLike], *, media_dir=None, **options) -> Dataset:
    """LLaMA-Factory sharegpt files as a Dataset; ``media_dir`` (where relative image paths start) checks images."""
    return get_adapter("llamafactory").load(media_dir, labels=files, **options)


__all__ = [
    "Adapter",
    "AttributeSpec",
    "DataError",
    "Dataset",
    "Option",
    "Problem",
    "Sample",
    "ScoreMapping",
    "SplitInfo",
    "ValidationReport",
    "export_sharegpt",
    "get_adapter",
    "import_sharegpt",
    "load",
    "names",
    "prepare",
    "read_manifest",
    "write_manifest",
    "write_manifests",
]
