"""The records every adapter produces: :class:`Sample` (one labelled image) and :class:`Dataset`.

A sample's ``scores`` are on the task range (quality 1-5, aesthetics 1-10); ``native`` keeps the
dataset's own MOS. The dataset records the linear :class:`ScoreMapping` between the two, so that
predictions can be reported on the native scale too (:meth:`Dataset.to_native`).
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

from ..numeric import map_range
from ..tasks import DEFAULT_TASKS
from .attributes import AttributeSpec
from .problems import ValidationReport

TRAIN, VALIDATION, TEST, ALL = "train", "validation", "test", "all"


@dataclass(frozen=True)
class Sample:
    """One labelled image (or video).

    ``image`` is relative to the dataset root (POSIX separators) or absolute; ``id`` is stable
    across label-file formats of the same dataset (the file name without extension, usually).
    """

    id: str
    image: str
    scores: dict[str, float]
    native: dict[str, float]
    split: str
    dataset: str
    attributes: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Sample":
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - names), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"not a realqa sample (unknown keys: {', '.join(unknown) or 'none'}; "
                             f"missing keys: {', '.join(missing) or 'none'})")
        return cls(**data)


@dataclass(frozen=True)
class ScoreMapping:
    """The linear map from a dataset's native scale onto a task's range.

    ``native`` is (worst, best) in the dataset's units, so (100, 0) describes a lower-is-better
    scale; ``target`` is the task's (low, high). ``quantity`` says what the native number is.
    """

    task: str
    native: tuple[float, float]
    target: tuple[float, float]
    quantity: str = "MOS"

    @classmethod
    def onto_task(cls, task: str, native: tuple[float, float], quantity: str = "MOS") -> "ScoreMapping":
        spec = DEFAULT_TASKS[task]
        return cls(task, (float(native[0]), float(native[1])), (float(spec.low), float(spec.high)), quantity)

    @property
    def higher_is_better(self) -> bool:
        return self.native[1] > self.native[0]

    @property
    def native_bounds(self) -> tuple[float, float]:
        return min(self.native), max(self.native)

    def to_task(self, value: float) -> float:
        return float(map_range(value, self.native, self.target))

    def to_native(self, value: float) -> float:
        return float(map_range(value, self.target, self.native))

    def describe(self) -> str:
        direction = "higher is better" if self.higher_is_better else "lower is better"
        lo, hi = self.native_bounds
        return (f"{self.quantity} on [{lo:g}, {hi:g}] ({direction}) -> {self.task} "
                f"[{self.target[0]:g}, {self.target[1]:g}], linear")

    def to_dict(self) -> dict:
        return {**asdict(self), "description": self.describe()}

    @classmethod
    def from_dict(cls, data: dict) -> "ScoreMapping":
        return cls(data["task"], tuple(data["native"]), tuple(data["target"]), data.get("quantity", "MOS"))


@dataclass(frozen=True)
class SplitInfo:
    """How samples were assigned to splits: ``official``, ``files``, ``column``, ``random`` or ``all``."""

    strategy: str
    description: str
    seed: int | None = None
    ratios: tuple[float, ...] | None = None
    group_by: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SplitInfo":
        ratios = data.get("ratios")
        return cls(data["strategy"], data["description"], data.get("seed"),
                   tuple(ratios) if ratios is not None else None, data.get("group_by"))


@dataclass
class Dataset:
    """Samples plus what is needed to use and report them: tasks and mappings, root, splits, sources.

    The first mapping's task is the dataset's main task.
    """

    name: str
    mappings: dict[str, ScoreMapping]
    samples: list[Sample]
    split: SplitInfo
    media: str = "image"
    root: str | None = None
    image_folder: str | None = None
    label_files: list[dict] = field(default_factory=list)
    attribute_schema: list[AttributeSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    report: ValidationReport | None = field(default=None, compare=False, repr=False)

    # ------------------------------------------------------------ tasks and scales

    @property
    def tasks(self) -> list[str]:
        return list(self.mappings)

    @property
    def task(self) -> str:
        return self.tasks[0]

    def mapping(self, task: str | None = None) -> ScoreMapping:
        task = task or self.task
        if task not in self.mappings:
            raise ValueError(f"dataset {self.name!r} has no {task!r} scores; it has {', '.join(self.tasks)}")
        return self.mappings[task]

    def to_native(self, value: float | None, task: str | None = None) -> float | None:
        """A task-range value (e.g. a prediction) on the dataset's own scale; None stays None."""
        return None if value is None else self.mapping(task).to_native(value)

    def to_task(self, value: float | None, task: str | None = None) -> float | None:
        return None if value is None else self.mapping(task).to_task(value)

    # ------------------------------------------------------------ samples and splits

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def split_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for sample in self.samples:
            counts[sample.split] = counts.get(sample.split, 0) + 1
        order = [TRAIN, VALIDATION, TEST, ALL]
        return dict(sorted(counts.items(), key=lambda item: (order.index(item[0]) if item[0] in order else 4, item[0])))

    def subset(self, split: str) -> "Dataset":
        """The samples of one split, with the same metadata."""
        if split not in self.split_counts():
            raise ValueError(f"dataset {self.name!r} has no split {split!r}; "
                             f"it has {', '.join(self.split_counts()) or 'no samples'}")
        return replace(self, samples=[s for s in self.samples if s.split == split])

    def image_path(self, sample: Sample) -> Path:
        """Where the sample's file is: the root joined with a relative path, or the absolute path."""
        path = Path(sample.image)
        if path.is_absolute() or self.root is None:
            return path
        return Path(self.root) / path

    # ------------------------------------------------------------ persistence (see manifest.py)

    def metadata(self) -> dict:
        """Everything but the samples, as JSON-ready data."""
        return {
            "name": self.name,
            "tasks": self.tasks,
            "mappings": {task: mapping.to_dict() for task, mapping in self.mappings.items()},
            "split": self.split.to_dict(),
            "media": self.media,
            "root": self.root,
            "image_folder": self.image_folder,
            "label_files": self.label_files,
            "attribute_schema": [spec.to_dict() for spec in self.attribute_schema],
            "notes": self.notes,
        }

    @classmethod
    def from_metadata(cls, meta: dict, samples: list[Sample]) -> "Dataset":
        return cls(
            name=meta["name"],
            mappings={task: ScoreMapping.from_dict(m) for task, m in meta["mappings"].items()},
            samples=samples,
            split=SplitInfo.from_dict(meta["split"]),
            media=meta.get("media", "image"),
            root=meta.get("root"),
            image_folder=meta.get("image_folder"),
            label_files=list(meta.get("label_files", [])),
            attribute_schema=[AttributeSpec.from_dict(a) for a in meta.get("attribute_schema", [])],
            notes=list(meta.get("notes", [])),
        )
