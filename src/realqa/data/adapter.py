"""The adapter base: one shared pipeline from label files to a validated :class:`Dataset`.

An adapter only says how to read its dataset's rows (:meth:`Adapter.read`); every adapter then goes
through the same steps, in this order:

1. read the label files into :class:`LabelRow` records (malformed rows are excluded and reported);
2. check every score against the native range (NaN, non-numeric, out of range: excluded);
3. apply option-based exclusions (e.g. LIVEC's t1-t7), then drop repeated images (first one kept);
4. assign splits from the labels alone (official, seeded random, or all), so a split never depends
   on which image files happen to be present; compare counts with the published figures;
5. with a root: find the image folder, exclude missing and unreadable images;
6. map scores linearly onto the task range and build the samples.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Sequence

from . import images
from .attributes import infer_schema
from .problems import (
    BAD_SCORE,
    DUPLICATE,
    EXCLUDED,
    MISSING_IMAGE,
    UNREADABLE_IMAGE,
    DataError,
    RowProblem,
    ValidationReport,
)
from .records import ALL, Dataset, Sample, ScoreMapping, SplitInfo
from .splits import parse_ratios, random_split
from .tables import Row

OFFICIAL, RANDOM = "official", "random"
SPLIT_STRATEGIES = (OFFICIAL, RANDOM, ALL)
LABEL_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class Option:
    """An adapter-specific option of :func:`realqa.data.load` (``--set NAME=VALUE`` on the command line)."""

    name: str
    default: Any
    help: str
    parse: Callable[[str], Any] = str


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


@dataclass
class LabelRow:
    """One label row as an adapter read it, before validation. ``native`` maps task -> native score."""

    row: Row
    image: str
    native: dict[str, float]
    id: str = ""
    split: str | None = None
    attributes: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = posixpath.splitext(posixpath.basename(self.image.replace("\\", "/")))[0]


@dataclass
class LabelData:
    """What :meth:`Adapter.read` returns: rows, the mapping of each task, and the files' descriptions."""

    rows: list[LabelRow]
    mappings: dict[str, ScoreMapping]
    sources: list[dict]
    split_source: str = ""  # where an official split comes from ("" when the files carry none)


class Adapter:
    """Base of all dataset adapters; subclasses set the class attributes and implement :meth:`read`."""

    name: str = ""
    title: str = ""
    task: str = "quality"
    media: str = "image"
    description: str = ""
    folder_names: tuple[str, ...] = ()  # how the dataset's folder is usually named (for bench --data-root)
    label_names: tuple[str, ...] = ()  # label file names searched under the root, in order of preference
    image_dirs: tuple[str, ...] = ()  # preferred image folders under the root, in order
    default_split: str = ALL
    default_ratios: tuple[float, ...] = (0.8, 0.2)
    default_seed: int = 0
    group_by: str | None = None  # info key whose samples stay in one split (e.g. the reference image)
    options: tuple[Option, ...] = ()

    # ------------------------------------------------------------ what a subclass provides

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        raise NotImplementedError

    def excluded(self, label: LabelRow, opts: dict) -> str | None:
        """Why an option excludes this row (reported, never silent), or None."""
        return None

    def published_counts(self, opts: dict) -> dict[str, int]:
        """Published image counts ('total' and/or per split) to compare with what the files hold."""
        return {}

    def dataset_name(self, opts: dict, files: list[Path]) -> str:
        return self.name

    def split_default(self, data: LabelData) -> str:
        """The split strategy used when none is asked for."""
        return self.default_split

    # ------------------------------------------------------------ the pipeline

    def load(
        self,
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
        """Read, validate and split the dataset. See :func:`realqa.data.load` for the arguments."""
        opts = self.parse_options(options)
        root_path = Path(root) if root is not None else None
        files = self._label_files(root_path, labels)
        name = self.dataset_name(opts, files)
        report = ValidationReport(name, [str(f) for f in files])
        data = self.read(files, report, opts)
        rows = self._check_scores(data, report)
        rows = self._apply_exclusions(rows, opts, report)
        rows = self._drop_duplicates(rows, report)
        split_info = self._assign_splits(rows, data, split or self.split_default(data), seed, ratios)
        self._compare_published(rows, opts, split_info, report)
        located, folder = self._locate(rows, root_path, image_dir, check_decode, report)
        samples = [
            Sample(
                id=label.id,
                image=path,
                scores={task: data.mappings[task].to_task(value) for task, value in label.native.items()},
                native=dict(label.native),
                split=label.split,
                dataset=name,
                attributes=label.attributes,
                info=label.info,
            )
            for label, path in located
        ]
        if not samples:
            raise DataError(f"{name}: no usable samples remain; {report.summary()}")
        dataset = Dataset(
            name=name,
            mappings=data.mappings,
            samples=samples,
            split=split_info,
            media=self.media,
            root=str(root_path.resolve()) if root_path else None,
            image_folder=folder,
            label_files=data.sources,
            attribute_schema=infer_schema(s.attributes for s in samples),
            notes=list(report.notes),
            report=report,
        )
        report.samples = len(samples)
        report.split_counts = dataset.split_counts()
        return dataset

    def parse_options(self, options: dict) -> dict:
        """Defaults filled in; strings (from the command line) parsed; unknown names refused."""
        known = {option.name: option for option in self.options}
        unknown = sorted(set(options) - set(known))
        if unknown:
            offered = "; ".join(f"{o.name} ({o.help})" for o in self.options) or "none"
            raise ValueError(f"{self.name}: unknown option(s) {', '.join(unknown)}; its options: {offered}")
        parsed = {}
        for name, option in known.items():
            value = options.get(name, option.default)
            if isinstance(value, str) and option.parse is not str:
                try:
                    value = option.parse(value)
                except ValueError as err:
                    raise ValueError(f"{self.name}: option {name}: {err}") from None
            parsed[name] = value
        return parsed

    def find_label_files(self, root: Path) -> list[Path]:
        """The first of :attr:`label_names` found under ``root`` (a few levels deep), case ignored."""
        found = find_files(root, self.label_names)
        if not found:
            raise DataError(f"{root}: no {self.title} label file found (looked for {', '.join(self.label_names)} "
                            f"up to {LABEL_SEARCH_DEPTH} folder levels down); pass the label file explicitly")
        return found[:1]

    # ------------------------------------------------------------ steps

    def _label_files(self, root: Path | None, labels) -> list[Path]:
        if labels is not None:
            files = [Path(labels)] if isinstance(labels, (str, os.PathLike)) else [Path(p) for p in labels]
            for path in files:
                if not path.is_file():
                    raise DataError(f"{path}: label file not found")
            return files
        if root is None:
            raise ValueError(f"{self.name}: give the dataset root or the label file(s)")
        if not root.is_dir():
            raise DataError(f"{root}: the dataset root is not a folder")
        return self.find_label_files(root)

    def _check_scores(self, data: LabelData, report: ValidationReport) -> list[LabelRow]:
        """Exclude scores outside the native range; a range most rows miss is a wrong assumption: fatal."""
        kept = []
        outside: dict[str, list[float]] = {}
        for label in data.rows:
            problems = []
            for task, value in label.native.items():
                lo, hi = data.mappings[task].native_bounds
                if not lo - 1e-9 <= value <= hi + 1e-9:
                    outside.setdefault(task, []).append(value)
                    problems.append(f"{task} score {value:g} is outside the native range [{lo:g}, {hi:g}]")
            if problems:
                report.exclude(BAD_SCORE, label.row.file, label.row.position, "; ".join(problems), label.image)
            else:
                kept.append(label)
        for task, values in outside.items():
            if len(values) * 2 > len(data.rows):
                lo, hi = data.mappings[task].native_bounds
                raise DataError(
                    f"{', '.join(report.label_files)}: {len(values)} of {len(data.rows)} {task} scores fall outside "
                    f"the native range [{lo:g}, {hi:g}] (they span {min(values):g} to {max(values):g}); "
                    "is this the right label file, and the right native range?"
                )
        return kept

    def _apply_exclusions(self, rows: list[LabelRow], opts: dict, report: ValidationReport) -> list[LabelRow]:
        kept = []
        for label in rows:
            reason = self.excluded(label, opts)
            if reason:
                report.exclude(EXCLUDED, label.row.file, label.row.position, reason, label.image)
            else:
                kept.append(label)
        return kept

    def _drop_duplicates(self, rows: list[LabelRow], report: ValidationReport) -> list[LabelRow]:
        first: dict[str, LabelRow] = {}
        kept = []
        for label in rows:
            key = label.id.lower()
            if key in first:
                earlier = first[key].row
                report.exclude(DUPLICATE, label.row.file, label.row.position,
                               f"image {label.image!r} already labelled at {earlier.where()}; the first is kept",
                               label.image)
                continue
            first[key] = label
            kept.append(label)
        return kept

    def _assign_splits(self, rows: list[LabelRow], data: LabelData, strategy: str, seed, ratios) -> SplitInfo:
        if strategy not in SPLIT_STRATEGIES:
            raise ValueError(f"split must be one of {', '.join(SPLIT_STRATEGIES)}, got {strategy!r}")
        if strategy == OFFICIAL:
            if not data.split_source or any(label.split is None for label in rows):
                raise DataError(
                    f"{', '.join(s['path'] for s in data.sources)}: carries no official {self.title} split; "
                    "use a label file that has one, or choose the split rule 'random' or 'all' (split=, --split)"
                )
            return SplitInfo(OFFICIAL, f"official split from {data.split_source}")
        if strategy == ALL:
            for label in rows:
                label.split = ALL
            return SplitInfo(ALL, "all samples in one split 'all' (whole-dataset evaluation)")
        ratios = parse_ratios(ratios) if isinstance(ratios, str) else tuple(ratios or self.default_ratios)
        seed = self.default_seed if seed is None else int(seed)
        groups = [str(label.info.get(self.group_by, label.id)) if self.group_by else label.id for label in rows]
        for label, name in zip(rows, random_split(groups, ratios, seed)):
            label.split = name
        percent = "/".join(f"{r * 100:g}" for r in ratios)
        unit = f"{self.group_by} groups" if self.group_by else "sample ids"
        return SplitInfo(RANDOM, f"random {percent} split of the sorted {unit}, shuffled by random.Random({seed})",
                         seed=seed, ratios=ratios, group_by=self.group_by)

    def _compare_published(self, rows: list[LabelRow], opts: dict, split: SplitInfo, report: ValidationReport) -> None:
        counts: dict[str, int] = {"total": len(rows)}
        for label in rows:
            counts[label.split] = counts.get(label.split, 0) + 1
        for key, expected in self.published_counts(opts).items():
            if key != "total" and split.strategy != OFFICIAL:
                continue
            if counts.get(key, 0) != expected:
                where = "in total" if key == "total" else f"in split {key!r}"
                report.note(f"the label files hold {counts.get(key, 0)} valid rows {where}; "
                            f"the published {self.title} figure is {expected}")

    def _locate(self, rows, root: Path | None, image_dir, check_decode, report) -> tuple[list, str | None]:
        """(label row, image path) for every usable row; the folder used is recorded in the report."""
        if root is None:
            report.image_folder = "not checked (no dataset root given)"
            return [(label, label.image.replace("\\", "/")) for label in rows], None
        found = images.resolve(root, [label.image for label in rows], self.image_dirs, image_dir)
        if not any(found.files):
            example = rows[0].image if rows else "?"
            raise DataError(
                f"{root}: none of the {len(rows)} files named in {', '.join(report.label_files)} were found "
                f"(searched {images.MAX_DEPTH} folder levels, e.g. for {example!r}); is this the {self.title} root?"
            )
        report.image_folder = found.describe()
        found_count = sum(path is not None for path in found.files)
        if found_count * 2 < len(rows):
            report.note(f"only {found_count} of the {len(rows)} labelled files were found under {root}; "
                        "is the dataset complete?")
        if found.case_only:
            examples = ", ".join(f"{label} -> {path}" for label, path in found.case_only[:3])
            report.note(f"{len(found.case_only)} file name(s) matched only when case is ignored, e.g. {examples}")
        if self.media == "video":
            report.note("videos are checked for presence and a non-zero size only (no video decoder)")
        located = []
        for label, path in zip(rows, found.files):
            where = (label.row.file, label.row.position)
            if path is None:
                report.exclude(MISSING_IMAGE, *where, f"file not found: {label.image} (in {found.root / found.folder})",
                               label.image)
                continue
            problem = images.check_file(root / path, decode=check_decode)
            if problem:
                report.exclude(UNREADABLE_IMAGE, *where, f"{path}: {problem}", label.image)
                continue
            located.append((label, path))
        return located, found.folder


# ---------------------------------------------------------------- shared helpers for adapters


def path_id(image: str) -> str:
    """An id for user-made and conversation data: the image path without its extension (stems may repeat)."""
    return str(PurePosixPath(image.replace("\\", "/")).with_suffix(""))


def record_problem(report: ValidationReport, row: Row, problem: RowProblem) -> None:
    report.exclude(problem.kind, row.file, row.position, str(problem))


def describe_file(path: Path, fmt: str, rows: int) -> dict:
    """A label file as the dataset records it: where, which format, how many rows, its SHA-256."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": str(path.resolve()), "format": fmt, "rows": rows, "sha256": digest}


def find_files(root: Path, names: Iterable[str]) -> list[Path]:
    """Files under ``root`` named like ``names`` (case ignored), ordered by ``names`` then by path."""
    wanted = {name.lower(): rank for rank, name in enumerate(names)}
    found = []
    for folder, dirs, files in os.walk(root):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < LABEL_SEARCH_DEPTH else []
        found.extend((wanted[f.lower()], depth, Path(folder) / f) for f in files if f.lower() in wanted)
    return [path for _, _, path in sorted(found)]
