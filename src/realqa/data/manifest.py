"""Frozen split manifests: one JSONL file per split, one Sample per line, metadata beside it.

``test.jsonl`` holds the samples; ``test.meta.json`` holds the dataset's metadata (tasks and
mappings, root, image folder, split rule and seed, label files with their SHA-256) and the
manifest's own sample count and SHA-256, so a changed manifest is noticed when read back.
Reading a manifest gives back exactly the Dataset (restricted to that split) that was written.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from .problems import DataError
from .records import Dataset, Sample

FORMAT = "realqa-manifest"
VERSION = 1


def meta_path(manifest: str | os.PathLike) -> Path:
    """``prepared/koniq10k/test.jsonl`` -> ``prepared/koniq10k/test.meta.json``."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.name.removesuffix(".jsonl") + ".meta.json")


def write_manifest(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Write all of ``dataset``'s samples to ``path`` (JSONL) and its metadata beside it."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"{path}: a manifest is a .jsonl file")
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(sample.to_dict(), ensure_ascii=False) + "\n" for sample in dataset.samples)
    path.write_text(text, encoding="utf-8")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "samples": len(dataset.samples),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "split_counts": dataset.split_counts(),
        "dataset": dataset.metadata(),
    }
    meta_path(path).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def write_manifests(dataset: Dataset, folder: str | os.PathLike) -> dict[str, Path]:
    """One manifest per split: ``folder/<split>.jsonl``. Returns split -> path."""
    folder = Path(folder)
    return {split: write_manifest(dataset.subset(split), folder / f"{split}.jsonl") for split in dataset.split_counts()}


def read_manifest(path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Dataset:
    """Read a manifest written by :func:`write_manifest`; ``root`` replaces the recorded dataset root."""
    path = Path(path)
    meta_file = meta_path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    if not meta_file.is_file():
        raise DataError(f"{path}: its metadata file {meta_file.name} is missing; "
                        "manifests are written with it by `realqa data prepare`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{meta_file}: invalid JSON at line {err.lineno} ({err.msg})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{meta_file}: not a {FORMAT} version {VERSION} metadata file")
    text = path.read_text(encoding="utf-8")
    samples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            samples.append(Sample.from_dict(json.loads(line)))
        except (json.JSONDecodeError, ValueError, TypeError) as err:
            raise DataError(f"{path}: line {number}: not a sample ({err})") from None
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if len(samples) != meta.get("samples") or digest != meta.get("sha256"):
        warnings.warn(f"{path} changed since it was written: {len(samples)} samples (recorded {meta.get('samples')}), "
                      f"SHA-256 {'differs' if digest != meta.get('sha256') else 'matches'}", stacklevel=2)
    dataset = Dataset.from_metadata(meta["dataset"], samples)
    if root is not None:
        dataset.root = str(Path(root).resolve())
    return dataset
