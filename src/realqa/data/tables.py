"""The one reader for label files: CSV-like text (with or without header), JSON, JSONL, parquet.

Each data row becomes a :class:`Row` that knows its file and position ("line 12", "record 3"), so
every later problem can name where it came from. Structural faults of the file are fatal
(:class:`DataError`); a row with the wrong number of fields is recorded and excluded.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..compat import require
from .problems import MALFORMED_ROW, DataError, RowProblem, ValidationReport

WHITESPACE = "whitespace"  # delimiter value for files split on runs of blanks (AVA.txt, TID2013 mos_with_names.txt)
RECORD_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Row:
    """One data row: its values by column name, and where it is."""

    file: str
    position: str
    values: Mapping[str, Any]

    def where(self) -> str:
        return f"{self.file}: {self.position}"

    def get(self, column: str, default: Any = None) -> Any:
        return self.values.get(column, default)

    def text(self, column: str) -> str:
        """The value as a stripped, non-empty string."""
        value = self.values.get(column)
        text = "" if value is None else str(value).strip()
        if not text:
            raise RowProblem(f"column {column!r} is empty", MALFORMED_ROW)
        return text

    def number(self, column: str) -> float:
        """The value as a finite float; empty, non-numeric, NaN and infinite values are row problems."""
        value = self.values.get(column)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise RowProblem(f"column {column!r} is empty")
        if isinstance(value, bool):
            raise RowProblem(f"column {column!r}: {value!r} is not a number")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise RowProblem(f"column {column!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            raise RowProblem(f"column {column!r}: {value!r} is not a finite number")
        return number


@dataclass
class Table:
    """A label file's column names and its well-formed rows."""

    path: Path
    columns: list[str]
    rows: list[Row]

    def require(self, columns: Iterable[str], purpose: str = "") -> None:
        missing = [name for name in columns if name not in self.columns]
        if missing:
            what = f" for {purpose}" if purpose else ""
            raise DataError(
                f"{self.path}: missing column(s) {', '.join(map(repr, missing))}{what}; "
                f"columns found: {', '.join(map(repr, self.columns)) or 'none'}"
            )


def read_header(path: str | Path, delimiter: str = ",") -> list[str]:
    """The column names of a text table (first non-blank row), without reading the rest."""
    with _open_text(path) as handle:
        for _, fields in _split_lines(handle, path, delimiter):
            if any(field.strip() for field in fields):
                return _unique_names(fields)
    return []


def read_table(
    path: str | Path,
    report: ValidationReport,
    *,
    names: Sequence[str] | None = None,
    delimiter: str = ",",
) -> Table:
    """Read a text table; ``names`` are the columns of a headerless file.

    Quoted fields (commas inside quotes) follow the csv module. Blank lines are skipped and
    counted in a note; rows with the wrong number of fields are excluded and reported.
    """
    path = Path(path)
    rows: list[Row] = []
    columns: list[str] | None = list(names) if names is not None else None
    blank = 0
    with _open_text(path) as handle:
        for line, fields in _split_lines(handle, path, delimiter):
            if not any(field.strip() for field in fields):
                blank += 1
                continue
            fields = [field.strip() for field in fields]
            if columns is None:
                columns = _unique_names(fields, path, report)
                continue
            report.rows_read += 1
            if len(fields) != len(columns):
                expected = (
                    f"expected {len(columns)} ({', '.join(columns)})" if names else f"the header has {len(columns)}"
                )
                report.exclude(MALFORMED_ROW, str(path), f"line {line}", f"row has {len(fields)} fields; {expected}")
                continue
            rows.append(Row(str(path), f"line {line}", dict(zip(columns, fields))))
    if columns is None:
        raise DataError(f"{path}: the file is empty")
    if blank:
        report.note(f"{path}: {blank} blank line(s) skipped")
    return Table(path, columns, rows)


def read_records(path: str | Path, report: ValidationReport) -> Table:
    """Read JSON (an array of objects), JSONL (one object per line) or parquet into rows."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        items = _jsonl_items(path, report)
    elif suffix == ".json":
        items = _json_items(path)
    elif suffix == ".parquet":
        items = _parquet_items(path)
    else:
        raise DataError(f"{path}: unsupported record file type {suffix!r}; use .json, .jsonl or .parquet")
    rows, columns = [], {}
    for position, item in items:
        report.rows_read += 1
        if not isinstance(item, dict):
            report.exclude(MALFORMED_ROW, str(path), position, f"expected a JSON object, found {type(item).__name__}")
            continue
        columns.update(dict.fromkeys(item))
        rows.append(Row(str(path), position, item))
    return Table(path, list(columns), rows)


def read_any(path: str | Path, report: ValidationReport, **text_options) -> Table:
    """Read a label file of any supported type, chosen by its extension."""
    suffix = Path(path).suffix.lower()
    if suffix in RECORD_SUFFIXES:
        return read_records(path, report)
    if suffix == ".tsv":
        text_options.setdefault("delimiter", "\t")
    return read_table(path, report, **text_options)


# ---------------------------------------------------------------- helpers


def _open_text(path: str | Path):
    try:
        # utf-8-sig: files saved by spreadsheet programs start with a byte-order mark.
        return open(path, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def _split_lines(handle, path, delimiter: str):
    """Yield (first line number of the row, fields); csv and decoding faults are fatal."""
    try:
        if delimiter == WHITESPACE:
            for number, line in enumerate(handle, 1):
                yield number, line.split()
            return
        # skipinitialspace: DOVER's label files separate fields with ", ".
        reader = csv.reader(handle, delimiter=delimiter, skipinitialspace=True)
        previous = 0
        for fields in reader:
            yield previous + 1, fields
            previous = reader.line_num
    except csv.Error as err:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({err})") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _unique_names(fields: list[str], path=None, report: ValidationReport | None = None) -> list[str]:
    """Column names with repeats renamed ``name.1``, ``name.2`` (as pandas does), noted in the report."""
    names, seen = [], {}
    for index, raw in enumerate(fields, 1):
        name = raw.strip()
        if name in seen:
            seen[name] += 1
            renamed = f"{name}.{seen[name]}"
            if report is not None:
                report.note(f"{path}: column {index} repeats the name {name!r}; it is read as {renamed!r} "
                            f"and {name!r} means the first one")
            name = renamed
        else:
            seen[name] = 0
        names.append(name)
    return names


def _jsonl_items(path: Path, report: ValidationReport):
    with _open_text(path) as handle:
        try:
            lines = list(enumerate(handle, 1))
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    for number, line in lines:
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as err:
            report.rows_read += 1
            report.exclude(
                MALFORMED_ROW, str(path), f"line {number}", f"invalid JSON ({err.msg} at column {err.colno})"
            )


def _json_items(path: Path):
    with _open_text(path) as handle:
        try:
            data = json.load(handle)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not isinstance(data, list):
        keys = ", ".join(list(data)[:8]) if isinstance(data, dict) else type(data).__name__
        raise DataError(f"{path}: expected a JSON array of objects, found {type(data).__name__} ({keys})")
    return ((f"record {index}", item) for index, item in enumerate(data, 1))


def _parquet_items(path: Path):
    parquet = require("pyarrow.parquet", "parquet", f"{path}: reading parquet")
    try:
        records = parquet.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises its own error types for damaged files
        raise DataError(f"{path}: cannot read parquet ({err})") from None
    return ((f"record {index}", item) for index, item in enumerate(records, 1))
