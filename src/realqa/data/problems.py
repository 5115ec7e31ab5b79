"""What can go wrong when reading a dataset, and the validation report that lists it.

Two kinds of problem, decided once here:

* **fatal** (:class:`DataError`, raised at once): the input cannot be read as the dataset at all —
  a label file that is missing, not text, not CSV/JSON, lacks a required column, holds no rows; a
  root where none of the labelled images exist; scores that mostly fall outside the declared range
  (a wrong range assumption, not a few bad rows); an empty dataset after validation.
* **row problems** (recorded in the :class:`ValidationReport`, the row is excluded): a malformed
  row, a missing / NaN / non-numeric / out-of-range score, a duplicate image, a missing or
  unreadable image, a row excluded by an option. Every one names the file, the row and the problem.

Notes (kept rows, e.g. a file name matched only case-insensitively) are listed too.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Problem kinds, also the keys of the report's counts.
MALFORMED_ROW = "malformed_row"
BAD_SCORE = "bad_score"
DUPLICATE = "duplicate"
MISSING_IMAGE = "missing_image"
UNREADABLE_IMAGE = "unreadable_image"
EXCLUDED = "excluded"


class DataError(ValueError):
    """A fatal problem with a dataset's files; the message names the file and what was found."""


class RowProblem(ValueError):
    """A problem with one row; the caller records it and excludes the row."""

    def __init__(self, message: str, kind: str = BAD_SCORE):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Problem:
    """One excluded row: where it is and why it was excluded."""

    kind: str
    file: str
    row: str  # "line 12" for text files, "record 3" for JSON arrays
    message: str
    image: str = ""

    def __str__(self) -> str:
        return f"{self.file}: {self.row}: {self.message}"


@dataclass
class ValidationReport:
    """Everything preparing a dataset found: files read, rows kept and excluded, image folder used."""

    dataset: str
    label_files: list[str] = field(default_factory=list)
    rows_read: int = 0
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    image_folder: str | None = None
    samples: int = 0
    split_counts: dict[str, int] = field(default_factory=dict)

    def exclude(self, kind: str, file: str, row: str, message: str, image: str = "") -> None:
        self.problems.append(Problem(kind, str(file), row, message, image))

    def note(self, message: str) -> None:
        self.notes.append(message)

    def counts(self) -> dict[str, int]:
        return dict(Counter(problem.kind for problem in self.problems))

    def summary(self, max_listed: int = 10) -> str:
        """A few lines for the console: counts, then the first problems (all are in the files)."""
        lines = [
            f"{self.dataset}: {self.rows_read} label rows read, {self.samples} samples kept, "
            f"{len(self.problems)} rows excluded"
        ]
        if self.split_counts:
            lines.append("  splits: " + ", ".join(f"{name} {count}" for name, count in self.split_counts.items()))
        if self.image_folder is not None:
            lines.append(f"  images: {self.image_folder}")
        for kind, count in sorted(self.counts().items()):
            lines.append(f"  excluded, {kind}: {count}")
        lines.extend(f"  note: {note}" for note in self.notes)
        for problem in self.problems[:max_listed]:
            lines.append(f"  - {problem}")
        if 0 < max_listed < len(self.problems):
            lines.append(f"  ... and {len(self.problems) - max_listed} more (see the report file)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["excluded_counts"] = self.counts()
        return data

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """Write ``report.json`` (machine-readable) and ``report.txt`` (every problem, one per line)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, text_path = folder / "report.json", folder / "report.txt"
        json_path.write_text(json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        lines = [self.summary(max_listed=0), ""] + [f"[{p.kind}] {p}" for p in self.problems]
        text_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return json_path, text_path
