"""Result rows: what scoring returns, and how rows are written and read back.

One row per input, in input order; an input that failed is a row with ``error`` set.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Iterable, Iterator

from .numeric import ScoreFormat, parse_score

STATUS_ERROR = "error"
ROW_FIELDS = ("path", "task", "score", "ncm", "status", "text", "error")
ATTRIBUTE_STATUS_SUFFIX = "_status"


@dataclass(frozen=True)
class ScoreResult:
    """The score of one input.

    ``score`` is the number the model wrote (None when it wrote none or the input failed);
    ``ncm`` is the expected score from the digit probabilities at the same positions;
    ``status`` is a parse status from :mod:`realqa.numeric` / :mod:`realqa.tasks` or ``"error"``
    (for a categorical task ``score`` holds the word it answered).
    ``attributes`` maps each fine-grained attribute asked (or stated in chain-of-thought reasoning)
    to ``{"value", "status", "text"}``; a missing or out-of-schema value is flagged in its status.
    """

    path: str
    task: str
    score: float | str | None
    ncm: float | None
    status: str
    text: str
    error: str | None = None
    attributes: dict | None = None

    @classmethod
    def failed(cls, path: str, task: str, error: str) -> "ScoreResult":
        return cls(path=path, task=task, score=None, ncm=None, status=STATUS_ERROR, text="", error=error)

    def with_attributes(self, attributes: dict) -> "ScoreResult":
        return replace(self, attributes=attributes)

    def to_row(self) -> dict:
        row = asdict(self)
        if row["attributes"] is None:
            del row["attributes"]
        return row

    def to_flat_row(self) -> dict:
        """One column per attribute value and one for its status, for CSV."""
        row = {key: value for key, value in self.to_row().items() if key != "attributes"}
        for name, entry in (self.attributes or {}).items():
            row[name] = entry["value"]
            row[name + ATTRIBUTE_STATUS_SUFFIX] = entry["status"]
        return row


class ResultWriter:
    """Streams rows to a .csv or .jsonl file as they arrive.

    CSV files get a column per name in ``attributes`` (and its status); JSONL rows nest them.
    """

    def __init__(self, path: str | Path, attributes: Iterable[str] = ()):
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".csv", ".jsonl"):
            raise ValueError(f"{self.path}: output must end in .csv or .jsonl")
        self._jsonl = suffix == ".jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(self.path, "w", newline="", encoding="utf-8")
        columns = list(ROW_FIELDS) + [c for name in attributes for c in (name, name + ATTRIBUTE_STATUS_SUFFIX)]
        self._csv = None if self._jsonl else csv.DictWriter(self._file, fieldnames=columns)
        if self._csv is not None:
            self._csv.writeheader()

    def write(self, result: ScoreResult) -> None:
        if self._jsonl:
            self._file.write(json.dumps(result.to_row(), ensure_ascii=False) + "\n")
        else:
            row = result.to_flat_row()
            self._csv.writerow({key: "" if value is None else value for key, value in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- reading predictions for evaluation


@dataclass(frozen=True)
class Prediction:
    """One evaluable row: the predicted value (None when it failed) and the label, if the file has one."""

    key: str
    pred: float | None
    label: float | None
    status: str
    attributes: dict = field(default_factory=dict)  # name -> predicted value (None when it failed)


def read_predictions(path: str | Path, *, fmt: ScoreFormat | None = None, field: str = "score") -> list[Prediction]:
    """Read our CSV/JSONL results or LLaMA-Factory's ``generated_predictions.jsonl``.

    LLaMA-Factory rows (``predict``/``label`` answer texts) are parsed with the official
    answer forms; a ``predict`` that does not parse is kept as a failed row, never dropped.
    ``field`` picks the value column of our files: ``score`` (greedy) or ``ncm``.
    """
    path = Path(path)
    rows = list(_read_rows(path))
    if rows and "predict" in rows[0]:
        return [_llamafactory_row(i, row, fmt, path) for i, row in enumerate(rows)]
    predictions = []
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{path}: row {i + 1} has no {field!r} column (columns: {', '.join(row)})")
        pred = _number(row.get(field))
        status = row.get("status") or ("ok" if pred is not None else "no_score")
        label = _number(row.get("label", row.get("mos")))
        predictions.append(Prediction(str(row.get("path", i)), pred, label, status, _predicted_attributes(row)))
    return predictions


def _predicted_attributes(row: dict) -> dict:
    """Attribute predictions of one of our rows: nested (JSONL) or ``name``/``name_status`` columns (CSV)."""
    if isinstance(row.get("attributes"), dict):
        return {name: entry.get("value") if entry.get("status") == "ok" else None
                for name, entry in row["attributes"].items()}
    names = [c[: -len(ATTRIBUTE_STATUS_SUFFIX)] for c in row if c.endswith(ATTRIBUTE_STATUS_SUFFIX)]
    return {name: (row.get(name) or None) if row.get(name + ATTRIBUTE_STATUS_SUFFIX) == "ok" else None
            for name in names if name in row}


def _llamafactory_row(i: int, row: dict, fmt: ScoreFormat | None, path: Path) -> Prediction:
    predicted = parse_score(str(row["predict"]), fmt)
    label_text = row.get("label")
    label = parse_score(str(label_text), fmt).value if label_text not in (None, "") else None
    if label_text not in (None, "") and label is None:
        raise ValueError(f"{path}: row {i + 1}: the label {label_text!r} holds no score")
    return Prediction(str(i), predicted.value, label, predicted.status)


def _read_rows(path: Path) -> Iterator[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
        return
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def write_rows(results: Iterable[ScoreResult], path: str | Path) -> None:
    with ResultWriter(path) as writer:
        for result in results:
            writer.write(result)
