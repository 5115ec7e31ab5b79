"""Finding a dataset's images under a root folder, whatever layout it shipped in, and checking them.

Label files name images in different ways ("10004473376.jpg", "KonIQ-10k/1024x768/10004473376.jpg",
"Video/A001.mp4"). We index the files under the root once and try each candidate base folder with
the label path and its shorter tails; the base that finds the most images wins (ties: the one
matching more of the label path, then the adapter's preferred order). One base serves the whole
dataset, so two resolutions of the same images (1024x768 and 512x384) are never mixed. Names that
match only when case is ignored are accepted and reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from PIL import Image

from ..media import VIDEO_EXTENSIONS, MediaError, load_image
from .problems import DataError

MAX_DEPTH = 4  # folder levels searched below the root
DISCOVERY_SAMPLE = 200  # labels used to discover candidate folders (evaluation then uses all labels)


@dataclass
class Resolution:
    """The outcome of matching label paths to files under a root."""

    root: Path
    folder: str  # chosen base, relative to the root ("" = the root itself)
    files: list[str | None]  # per label: the file's path relative to the root (POSIX), or None
    case_only: list[tuple[str, str]] = field(default_factory=list)  # (label path, file) matched ignoring case
    candidates: dict[str, int] = field(default_factory=dict)  # base -> labels it finds

    def describe(self) -> str:
        found = sum(f is not None for f in self.files)
        where = self.root / self.folder if self.folder else self.root
        text = f"{where} ({found} of {len(self.files)} found)"
        others = [
            f"{name or '.'} ({count})" for name, count in self.candidates.items() if name != self.folder and count
        ]
        return text + (f"; other candidate folders: {', '.join(others)}" if others else "")


def resolve(
    root: str | Path, labels: Sequence[str], preferred: Sequence[str] = (), forced: str | None = None
) -> Resolution:
    """Match each label path to a file under ``root``; see the module docstring for the rule."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: the dataset root is not a folder")
    index, folders = _index(root)
    tails = [_tails(label) for label in labels]
    if forced is not None:
        if forced.strip("/").lower() not in folders:
            raise DataError(f"{root / forced}: the image folder given does not exist")
        bases = [folders[forced.strip("/").lower()]]
    else:
        # Preferred folders under their real spelling ("images" for a preferred "Images"); absent ones drop out.
        present = [folders[p.strip("/").lower()] for p in preferred if p.strip("/").lower() in folders]
        bases = _candidate_bases(index, tails, present)
    scored = {base: _score(index, tails, base) for base in bases}
    rank = {base: position for position, base in enumerate(bases)}
    best = min(bases, key=lambda b: (-scored[b][0], -scored[b][1], rank[b]))
    resolution = Resolution(root, best, [], candidates={b: scored[b][0] for b in bases})
    for label, label_tails in zip(labels, tails):
        match = _match(index, label_tails, best)
        if match is None:
            resolution.files.append(None)
            continue
        path, exact = match
        resolution.files.append(path)
        if not exact:
            resolution.case_only.append((label, path))
    return resolution


def check_file(path: str | Path, decode: bool = False) -> str | None:
    """Why ``path`` cannot be used, or None. Images: header read (full decode with ``decode``); videos: size only."""
    try:
        size = os.stat(path).st_size
    except OSError as err:
        return f"cannot read file ({err.strerror or err})"
    if size == 0:
        return "file is empty (0 bytes)"
    if Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        return None
    if decode:
        try:
            load_image(path)
        except MediaError as err:
            return err.problem
        return None
    try:
        with Image.open(path) as image:
            image.size  # parsed from the header; nothing is decoded
    except Exception as err:  # PIL reports bad headers with many exception types
        return f"not a readable image ({type(err).__name__}: {err})"
    return None


# ---------------------------------------------------------------- helpers


def _index(root: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Files: lower-cased relative path -> real relative paths (POSIX); folders: lower-cased -> real."""
    files: dict[str, list[str]] = {}
    folders: dict[str, str] = {}
    for folder, dirs, names in os.walk(root):
        rel = Path(folder).relative_to(root)
        depth = len(rel.parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < MAX_DEPTH else []
        real = rel.as_posix() if depth else ""
        folders[real.lower()] = real
        for name in names:
            path = (rel / name).as_posix()
            files.setdefault(path.lower(), []).append(path)
    return files, folders


def _tails(label: str) -> list[str]:
    """'a/b/c.jpg' -> ['a/b/c.jpg', 'b/c.jpg', 'c.jpg']: the label path and its shorter endings."""
    parts = [p for p in PurePosixPath(label.replace("\\", "/")).parts if p not in ("/", ".")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


def _join(base: str, tail: str) -> str:
    return f"{base}/{tail}" if base else tail


def _match(index: dict[str, list[str]], tails: list[str], base: str) -> tuple[str, bool] | None:
    """(file, exact case) for the longest tail found under ``base``."""
    for tail in tails:
        wanted = _join(base, tail)
        found = index.get(wanted.lower())
        if not found:
            continue
        if wanted in found:
            return wanted, True
        if len(found) == 1:
            return found[0], False
    return None


def _score(index, tails: list[list[str]], base: str) -> tuple[int, int]:
    """(labels found, path components matched): more of the label path matched is the better base."""
    found = components = 0
    for label_tails in tails:
        for tail in label_tails:
            if _join(base, tail).lower() in index:
                found += 1
                components += tail.count("/") + 1
                break
    return found, components


def _candidate_bases(index, tails: list[list[str]], preferred: Sequence[str]) -> list[str]:
    """The adapter's preferred folders, the root, then folders where sampled label files actually are."""
    by_name: dict[str, list[str]] = {}
    for paths in index.values():
        for path in paths:
            by_name.setdefault(path.rsplit("/", 1)[-1].lower(), []).append(path)
    step = max(1, len(tails) // DISCOVERY_SAMPLE)
    discovered = set()
    for label_tails in tails[::step]:
        if not label_tails:
            continue
        for path in by_name.get(label_tails[-1].lower(), []):
            lowered = path.lower()
            for tail in label_tails:
                tail = tail.lower()
                if lowered == tail or lowered.endswith("/" + tail):
                    discovered.add(path[: len(path) - len(tail)].rstrip("/"))
                    break
    ordered = list(preferred) + [""]
    extra = sorted(discovered - set(ordered), key=lambda b: (b.count("/"), b))
    return list(dict.fromkeys(ordered + extra))
