"""Result rows: what scoring returns, and how rows are written and read back.

One row per input, in input order; an input that failed is a row with ``error`` set. A row is
:data:`ROW_FIELDS` plus the attributes asked, if any. A results file is ``.csv`` (attributes flat:
a column for each value and one for its status), ``.jsonl`` or ``.parquet`` (attributes nested
under ``attributes``, as :meth:`ScoreResult.to_row` gives them). :func:`read_results` is the one
reader of such files: resume, ``realqa eval``, ``realqa report`` and the torchrun part files all
read through it; it also reads bench prediction files (``image`` for ``path``; ``label`` and the
like come back as the row's other columns).

Parquet: a Parquet file cannot be appended row by row, and a killed writer leaves no footer. So
the rows of ``FILE.parquet`` stream to its journal ``FILE.parquet.rows.jsonl`` (JSONL, one flushed
row at a time, torn-row rules as for JSONL), and when the writer closes ``FILE.parquet`` is written
whole from the journal (a temporary file, then ``os.replace``) and the journal removed. Appending
to a finished file first copies its rows into a new journal, so while a journal exists it holds
every row: the rows of ``FILE.parquet`` are its journal's when there is one, else the Parquet
file's. A ``kill -9`` at any moment therefore loses at most the row being written.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import IO, Iterable, NamedTuple, Sequence

from .compat import require

STATUS_ERROR = "error"
# A CSV cell starting with one of these is read as a formula by spreadsheet programs (CSV injection):
# such text is written with a leading ' (OWASP's advice), which every realqa reader takes off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
ROW_FIELDS = ("path", "task", "score", "ncm", "ncm_std", "status", "text", "error")
ATTRIBUTE_STATUS_SUFFIX = "_status"
SUFFIXES = (".csv", ".jsonl", ".parquet")
JOURNAL_SUFFIX = ".rows.jsonl"  # FILE.parquet's rows while a run writes it
# Bench prediction files name the input ``image``; every other reader of result rows says ``path``.
PATH_ALIAS = "image"


@dataclass(frozen=True)
class ScoreResult:
    """The score of one input.

    ``score`` is the number the model wrote (None when it wrote none or the input failed);
    ``ncm`` is the expected score from the digit probabilities at the same positions, ``ncm_std`` the
    standard deviation of that score under the same probabilities (the model's uncertainty);
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
    ncm_std: float | None = None

    @classmethod
    def failed(cls, path: str, task: str, error: str) -> "ScoreResult":
        return cls(path=path, task=task, score=None, ncm=None, status=STATUS_ERROR, text="", error=error)

    def with_attributes(self, attributes: dict) -> "ScoreResult":
        return replace(self, attributes=attributes)

    def to_row(self) -> dict:
        """The row as written to JSONL: the fields in ``ROW_FIELDS`` order, then nested attributes if any."""
        values = asdict(self)
        row = {key: values[key] for key in ROW_FIELDS}
        if values["attributes"] is not None:
            row["attributes"] = values["attributes"]
        return row

    @classmethod
    def from_row(cls, row: dict) -> "ScoreResult":
        """The result a row holds: as :meth:`to_row` wrote it (JSONL, Parquet), or a CSV row (strings;
        an attribute's text is not kept in CSV). Columns a file may lack: ``task`` (empty), ``ncm``
        and ``ncm_std`` (None; files written before ``ncm_std`` existed) and ``status`` (``ok`` when
        there is a score, else ``no_score``); ``image`` stands for ``path`` (bench prediction files).
        Columns outside a result row are :func:`other_columns`."""
        path = row.get("path", row.get(PATH_ALIAS))
        if path is None:
            raise ValueError(f"no 'path' (or '{PATH_ALIAS}') column; columns: {', '.join(row)}")
        score = _value(row.get("score"))
        status = row.get("status") or ("ok" if score is not None else "no_score")
        return cls(path=str(path), task=str(row.get("task") or ""), score=score, ncm=number_cell(row.get("ncm"), "ncm"),
                   status=str(status), text=str(row.get("text") or ""), error=row.get("error") or None,
                   attributes=_attributes_of(row), ncm_std=number_cell(row.get("ncm_std"), "ncm_std"))

    def to_flat_row(self) -> dict:
        """One column per attribute value and one for its status, for CSV."""
        row = {key: value for key, value in self.to_row().items() if key != "attributes"}
        for name, entry in (self.attributes or {}).items():
            row[name] = entry["value"]
            row[name + ATTRIBUTE_STATUS_SUFFIX] = entry["status"]
        return row


def _attributes_of(row: dict) -> dict | None:
    """Nested (``attributes``, as JSONL and Parquet keep them) or ``name``/``name_status`` columns (CSV)."""
    nested = row.get("attributes")
    if isinstance(nested, dict):
        # A Parquet struct has every attribute's field in every row: None where a row had no such entry.
        return {name: entry for name, entry in nested.items() if entry is not None} or None
    return {name: {"value": _value(row[name]), "status": row[name + ATTRIBUTE_STATUS_SUFFIX], "text": ""}
            for name in _flat_attribute_names(row)
            if row[name + ATTRIBUTE_STATUS_SUFFIX] not in (None, "")} or None  # empty: the row has no such entry


def _flat_attribute_names(row: dict) -> list[str]:
    return [c[: -len(ATTRIBUTE_STATUS_SUFFIX)] for c in row
            if c.endswith(ATTRIBUTE_STATUS_SUFFIX) and c[: -len(ATTRIBUTE_STATUS_SUFFIX)] in row]


def other_columns(row: dict) -> dict:
    """The columns of a row that are not part of a result row: a bench prediction file's ``label``,
    ``id``..., a torchrun part file's ``index``."""
    taken = {*ROW_FIELDS, "attributes"}
    if "path" not in row:
        taken.add(PATH_ALIAS)
    if not isinstance(row.get("attributes"), dict):
        taken.update(c for name in _flat_attribute_names(row) for c in (name, name + ATTRIBUTE_STATUS_SUFFIX))
    return {key: value for key, value in row.items() if key not in taken}


def _value(value) -> float | str | None:
    """A score cell: a number, a categorical answer (a word), or empty."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def number_cell(value, column: str) -> float | None:
    """A number cell (``column`` names it in the error); empty or non-finite reads as None (no number)."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{column} {value!r} is not a number") from None
    return number if math.isfinite(number) else None


# ---------------------------------------------------------------- writing


class ResultWriter:
    """Streams rows to a .csv, .jsonl or .parquet file as they arrive, each row flushed as it is written.

    CSV files get a column per name in ``attributes`` (and its status); JSONL and Parquet rows nest
    them. ``append=True`` continues an existing file (see :class:`ResumableOutput`); a CSV file's
    header must then name the same columns. A Parquet file's rows go to its journal and the file is
    written when the writer closes (see the module's notes).
    """

    def __init__(self, path: str | Path, attributes: Iterable[str] = (), *, append: bool = False):
        self.path = Path(path)
        _check_suffix(self.path)
        self._parquet = _is_parquet(self.path)
        self._csv = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path
        if self._parquet:
            file = journal_path(self.path)
            if append:
                _start_journal(self.path)
        columns = list(ROW_FIELDS) + [c for name in attributes for c in (name, name + ATTRIBUTE_STATUS_SUFFIX)]
        csv_file = self.path.suffix.lower() == ".csv"
        if append and csv_file and self.path.is_file() and self.path.stat().st_size:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != columns:
                raise ValueError(f"{self.path}: its columns ({', '.join(header)}) are not this run's "
                                 f"({', '.join(columns)}); pass --overwrite to start again, or write to another file")
        self._file: IO[str] = open(file, "a" if append else "w", newline="", encoding="utf-8")
        if csv_file:
            self._csv = csv.DictWriter(self._file, fieldnames=columns)
            if self._file.tell() == 0:
                self._csv.writeheader()
                self._file.flush()

    def write(self, result: ScoreResult) -> None:
        if self._csv is None:
            self._file.write(json.dumps(result.to_row(), ensure_ascii=False) + "\n")
        else:
            self._csv.writerow(spreadsheet_safe(result.to_flat_row()))
        self._file.flush()

    def close(self) -> None:
        if self._file.closed:
            return
        self._file.close()
        if self._parquet:
            _finish_parquet(self.path)

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def spreadsheet_safe(row: dict) -> dict:
    """A row for a CSV file: empty for None, text that a spreadsheet would run as a formula quoted."""
    return {key: "" if value is None else ("'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS)
                                           else value) for key, value in row.items()}


def csv_text(cell: str) -> str:
    """A CSV cell as it was before :func:`spreadsheet_safe` quoted it."""
    return cell[1:] if cell.startswith("'") else cell


def write_rows(results: Iterable[ScoreResult], path: str | Path) -> None:
    """Write a whole results file (every attribute the results carry gets its CSV columns)."""
    results = list(results)
    with ResultWriter(path, dict.fromkeys(name for r in results for name in (r.attributes or {}))) as writer:
        for result in results:
            writer.write(result)


def _check_suffix(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the output is a file ending in .csv, .jsonl or .parquet "
                         f"(e.g. {path / 'scores.csv'})")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: output must end in .csv, .jsonl or .parquet")
    if _is_parquet(path):
        require("pyarrow.parquet", "parquet", f"{path.name}: a .parquet results file")


def _is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


# ---------------------------------------------------------------- Parquet through a journal


def journal_path(path: str | Path) -> Path:
    """Where the rows of ``FILE.parquet`` stream while a run writes it: ``FILE.parquet.rows.jsonl``."""
    path = Path(path)
    return path.with_name(path.name + JOURNAL_SUFFIX)


def _rows_file(path: Path) -> Path:
    """The file that holds ``path``'s rows now: a Parquet file's journal while there is one."""
    if _is_parquet(path) and journal_path(path).exists():
        return journal_path(path)
    return path


def _start_journal(path: Path) -> None:
    """Before appending to ``path``: a journal holding its rows (a finished file's rows copied into one)."""
    journal = journal_path(path)
    if journal.exists() or not path.exists():
        return
    partial = journal.with_name(journal.name + ".tmp")
    with open(partial, "w", encoding="utf-8") as f:
        for row in _parquet_rows(path):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, journal)  # from here the journal holds every row


def _finish_parquet(path: Path) -> None:
    """Write ``path`` whole from its journal (temporary file, then ``os.replace``), then remove the journal."""
    parquet = require("pyarrow.parquet", "parquet", f"{path.name}: a .parquet results file")
    journal = journal_path(path)
    rows = read_rows(journal, "refuse")
    partial = path.with_name(path.name + ".tmp")
    parquet.write_table(_arrow_table(rows), partial)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)
    journal.unlink()  # killed just before: the journal still holds every row, and is read instead


def _arrow_table(rows: list[dict]):
    """Rows as an Arrow table: the row fields as columns, attributes nested (a struct per attribute).

    A column whose values are all numbers is float64, else text (a categorical task's words).
    """
    import pyarrow as pa

    columns, fields = [], []
    for name in ROW_FIELDS:
        kind, values = _arrow_leaf([row.get(name) for row in rows], numeric=name not in ("path", "task", "status",
                                                                                          "text", "error"))
        columns.append(values)
        fields.append(pa.field(name, kind))
    names = list(dict.fromkeys(name for row in rows for name in (row.get("attributes") or {})))
    if names:
        entries = {name: [(row.get("attributes") or {}).get(name) for row in rows] for name in names}
        types, converted = {}, {}
        for name, column in entries.items():
            kind, values = _arrow_leaf([None if e is None else e.get("value") for e in column], numeric=True)
            types[name] = pa.struct([("value", kind), ("status", pa.string()), ("text", pa.string())])
            converted[name] = [None if e is None else {**e, "value": v} for e, v in zip(column, values)]
        attributes = [None if not row.get("attributes") else {name: converted[name][i] for name in names}
                      for i, row in enumerate(rows)]
        kind = pa.struct([pa.field(name, types[name]) for name in names])
        columns.append(attributes)
        fields.append(pa.field("attributes", kind))
    schema = pa.schema(fields)
    return pa.Table.from_arrays([pa.array(values, type=f.type) for values, f in zip(columns, schema)], schema=schema)


def _arrow_leaf(values: list, *, numeric: bool):
    """(Arrow type, values): float64 when every value is a number and ``numeric``, else strings."""
    import pyarrow as pa

    present = [v for v in values if v is not None]
    if numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return pa.float64(), [None if v is None else float(v) for v in values]
    return pa.string(), [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values]


def _parquet_rows(path: Path) -> list[dict]:
    parquet = require("pyarrow.parquet", "parquet", f"{path.name}: a .parquet results file")
    try:
        return parquet.read_table(path).to_pylist()
    except Exception as err:  # pyarrow raises its own error types for damaged files
        raise ValueError(f"{path}: cannot read it as Parquet ({err})") from None


# ---------------------------------------------------------------- reading


class ResultRows(NamedTuple):
    """A results file read back: its rows as results, each row's other columns (:func:`other_columns`),
    and the file's column names (a CSV header; JSONL and Parquet: every key any row has)."""

    results: list[ScoreResult]
    others: list[dict]
    columns: list[str]


def read_results(path: str | Path, *, complete_only: bool = False, repair: bool = False) -> ResultRows:
    """The rows of a realqa results file (.csv, .jsonl, .parquet; a torchrun part file; bench predictions).

    CSV cells are read as :func:`spreadsheet_safe` wrote them. A row a killed run left torn (only
    the last can be) is an error naming it, unless ``complete_only`` (resuming: it is left out,
    and ``repair=True`` cuts it off the file, see :func:`read_complete_rows`).
    """
    path = Path(path)
    torn = ("cut" if repair else "skip") if complete_only else "refuse"
    return results_of(path, read_rows(path, torn))


def results_of(path: Path, rows: list[dict]) -> ResultRows:
    """:func:`read_results` of rows already read from ``path`` (its format sniffed first, e.g. by ``eval``)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if rows and ("score" not in columns or not {"path", PATH_ALIAS} & set(columns)):
        raise ValueError(f"{path}: not a realqa results file: it needs a 'path' (or '{PATH_ALIAS}') and a 'score' "
                         f"column; it has {', '.join(columns)}")
    results = []
    for number, row in enumerate(rows, 1):
        try:
            results.append(ScoreResult.from_row(row))
        except ValueError as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
    return ResultRows(results, [other_columns(row) for row in rows], columns)


def read_complete_rows(path: str | Path, *, repair: bool = False) -> list[dict]:
    """The whole rows of a results file a killed run may have left, in file order, as cells.

    A run writes and flushes one row at a time, so a kill can leave at most the last row torn
    (no line end, unterminated quote, bad JSON); it is not returned, and ``repair=True`` cuts it
    off the file so appending continues after the last whole row. Anything malformed before the
    last row raises ``ValueError``: that file was not left by a killed run. For ``FILE.parquet``
    these are its journal's rows while there is one, else the file's.
    """
    return read_rows(Path(path), "cut" if repair else "skip")


def rows_exist(path: str | Path) -> bool:
    """Whether ``path`` holds rows (for ``FILE.parquet``: it or its journal exists)."""
    return _rows_file(Path(path)).exists()


def read_rows(path: str | Path, torn: str = "refuse") -> list[dict]:
    """The rows of a results file as cells (CSV: strings, the :func:`spreadsheet_safe` quote taken off).

    ``torn`` says what becomes of a torn last row (see :func:`read_complete_rows`): ``skip``,
    ``cut`` (skipped and cut off the file) or ``refuse`` (an error naming it; a last line that only
    lacks its line end is taken whole: a file written by hand may lack it).
    """
    path = Path(path)
    _check_suffix(path)
    file = _rows_file(path)
    if not file.is_file():
        raise ValueError(f"{path}: no such file")
    if file == path and _is_parquet(path):
        return _parquet_rows(path)  # written whole: there is no torn Parquet file
    text = file.read_bytes().decode("utf-8", errors="surrogateescape")  # a torn multi-byte character stays in the tail
    reader = _complete_csv if file.suffix.lower() == ".csv" else _complete_jsonl
    rows, end = reader(file, text)
    if torn == "refuse" and text[end:].strip():
        try:
            rows, whole = reader(file, text + "\n")  # the last line end may be all that is missing
        except ValueError:
            whole = end
        if whole <= len(text):
            raise ValueError(f"{file}: the row at line {text[:end].count(chr(10)) + 1} is incomplete: a run was killed "
                             "while writing it, or is still writing; rerun the scoring command to finish the file")
    if torn == "cut" and end < len(text):
        with open(file, "r+b") as f:
            f.truncate(len(text[:end].encode("utf-8", errors="surrogateescape")))
            f.flush()
            os.fsync(f.fileno())
    return rows


def _complete_jsonl(path: Path, text: str) -> tuple[list[dict], int]:
    rows, end = [], 0
    lines = text.split("\n")
    for number, line in enumerate(lines[:-1], 1):  # the last piece has no line end: torn, or empty
        end += len(line) + 1
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:  # a row and its line end are written together: not torn
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}); the file was not "
                             "left so by a killed run") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a row (a JSON object)")
        rows.append(row)
    return rows, end


def _complete_csv(path: Path, text: str) -> tuple[list[dict], int]:
    consumed = []  # the lines the csv reader has taken, to know where each record ends

    def lines():
        for line in io.StringIO(text, newline=""):
            consumed.append(line)
            yield line

    reader = csv.reader(lines(), strict=True)
    header, rows, end = None, [], 0
    try:
        for record in reader:
            taken = "".join(consumed)
            if not taken.endswith("\n"):
                break  # the record runs into the end of the file: torn
            consumed.clear()
            if header is None:
                header, end = record, len(taken)
                continue
            if len(record) != len(header):
                if end + len(taken) == len(text):
                    break  # a torn last record that happens to end a line
                raise ValueError(f"{path}: row {len(rows) + 1} has {len(record)} fields, the header {len(header)}")
            rows.append(dict(zip(header, map(csv_text, record))))
            end += len(taken)
    except csv.Error:
        pass  # end of the file inside a quoted field: the last record is torn
    return rows, end


# ---------------------------------------------------------------- resuming a killed run

RUN_FILE_SUFFIX = ".run.json"  # beside the results file: the settings its rows were made with


def _change(key: str, then, now) -> str:
    """One difference between two runs' settings; for per-file digests, the files that changed."""
    if isinstance(then, dict) and isinstance(now, dict):
        files = sorted(name for name in set(then) | set(now) if then.get(name) != now.get(name))
        return f"{key}: {', '.join(files)} changed (other weights, adapter or card)"
    return f"{key}: {then!r} then, {now!r} now"


class ResumableOutput:
    """A results file that survives ``kill -9``: rerunning the same command continues it.

    Rows go in input order, one flushed write each. ``FILE.run.json`` beside it records the
    settings the rows were made with; a rerun with other settings is refused rather than mixing
    rows made two ways. On resume the file must hold whole rows for a prefix of the inputs (a torn
    last row is cut off); those inputs are skipped and the rest appended. ``FILE.parquet`` resumes
    from its journal (see the module's notes).
    """

    def __init__(self, path: str | Path, settings: dict):
        self.path = Path(path)
        _check_suffix(self.path)
        self.run_file = self.path.with_name(self.path.name + RUN_FILE_SUFFIX)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from the run file

    @contextlib.contextmanager
    def lock(self):
        """Hold ``FILE.lock`` while this run writes: a second run on the same file is refused at once.

        An OS file lock (``filelock``): the system releases it when its process ends, so a killed
        run never leaves the file locked (the empty lock file may stay; it is harmless).
        """
        from filelock import FileLock, Timeout

        lock_path = self.path.with_name(self.path.name + ".lock")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise ValueError(f"{self.path} is being written by another realqa run (it holds {lock_path.name}); "
                             "wait for it to finish, or write to another file") from None
        try:
            yield
        finally:
            lock.release()

    def exists(self) -> bool:
        return rows_exist(self.path)

    def remove(self) -> None:
        """Start again (``--overwrite``): the results file (and a Parquet file's journal, and the temporary file
        a run killed while writing it left) and its run file go."""
        for file in (self.path, journal_path(self.path), self.path.with_name(self.path.name + ".tmp"), self.run_file):
            file.unlink(missing_ok=True)

    def check(self) -> None:
        """Refuse an existing file made with other settings, or by something that was not such a run."""
        if not self.exists():
            return
        if not self.run_file.is_file():
            raise ValueError(f"{self.path} exists and has no {self.run_file.name} saying how it was made, so it "
                             "cannot be resumed; pass --overwrite to replace it, or write to another file")
        try:
            recorded = json.loads(self.run_file.read_text(encoding="utf-8"))["settings"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{self.run_file}: unreadable ({err}); pass --overwrite to start again") from None
        differ = sorted(k for k in set(recorded) | set(self.settings) if recorded.get(k) != self.settings.get(k))
        if differ:
            changes = "; ".join(_change(k, recorded.get(k), self.settings.get(k)) for k in differ)
            raise ValueError(f"{self.path} was written with other settings ({changes}); rerun with the same options "
                             "to resume, pass --overwrite to start again, or write to another file")

    def completed(self, inputs: Sequence[str], *, repair: bool = True) -> list[ScoreResult]:
        """The results already in the file, after checking they are the first inputs, in order."""
        if not self.exists():
            return []
        results = read_results(self.path, complete_only=True, repair=repair).results
        if len(results) > len(inputs):
            raise ValueError(f"{self.path} holds {len(results)} rows but this run has {len(inputs)} inputs; "
                             "pass --overwrite to start again, or write to another file")
        for number, (result, expected) in enumerate(zip(results, inputs), 1):
            if result.path != expected:
                raise ValueError(f"{self.path}: row {number} is {result.path!r} but input {number} is {expected!r}: "
                                 "the inputs changed since the file was written; pass --overwrite to start again, "
                                 "or write to another file")
        if len(results) == len(inputs):
            self.finish()
        return results

    def finish(self) -> None:
        """Every row is in: write a Parquet file its journal still holds (a run killed after its last row but
        before writing the file leaves that; nothing else will). Other formats are complete as they are."""
        if _is_parquet(self.path) and journal_path(self.path).exists():
            _finish_parquet(self.path)

    def begin(self) -> None:
        """Create the (empty) file and its run file, unless they exist."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.exists() or not self.run_file.is_file():
            self.run_file.write_text(json.dumps({"settings": self.settings}, indent=2) + "\n", encoding="utf-8")
            if not self.exists():
                (journal_path(self.path) if _is_parquet(self.path) else self.path).touch()

    def writer(self, attributes: Iterable[str] = ()) -> ResultWriter:
        """Append to the file (created with its run file when new)."""
        self.begin()
        return ResultWriter(self.path, attributes, append=True)
