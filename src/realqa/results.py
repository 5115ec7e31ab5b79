"""Result rows: what scoring returns, and how rows are written and read back.

One row per input, in input order; an input that failed is a row with ``error`` set.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence

from .numeric import PARSE_OK, PARSE_OUT_OF_RANGE, ScoreFormat, parse_score
from .tasks import DEFAULT_TASKS

STATUS_ERROR = "error"
# A CSV cell starting with one of these is read as a formula by spreadsheet programs (CSV injection):
# such text is written with a leading ' (OWASP's advice), which every realqa reader takes off again.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")
ROW_FIELDS = ("path", "task", "score", "ncm", "ncm_std", "status", "text", "error")
ATTRIBUTE_STATUS_SUFFIX = "_status"


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
        """The result a written row holds: a JSONL row as written, or a CSV row (strings; an
        attribute's text is not kept in CSV)."""
        attributes = row.get("attributes")
        if attributes is None:
            names = [c[: -len(ATTRIBUTE_STATUS_SUFFIX)] for c in row if c.endswith(ATTRIBUTE_STATUS_SUFFIX)]
            attributes = {n: {"value": _value(row.get(n)), "status": row[n + ATTRIBUTE_STATUS_SUFFIX], "text": ""}
                          for n in names if n in row} or None
        return cls(path=str(row["path"]), task=str(row["task"]), score=_value(row.get("score")),
                   ncm=_number(row.get("ncm")), status=str(row["status"]), text=row.get("text") or "",
                   error=row.get("error") or None, attributes=attributes,
                   ncm_std=_number(row.get("ncm_std")))

    def to_flat_row(self) -> dict:
        """One column per attribute value and one for its status, for CSV."""
        row = {key: value for key, value in self.to_row().items() if key != "attributes"}
        for name, entry in (self.attributes or {}).items():
            row[name] = entry["value"]
            row[name + ATTRIBUTE_STATUS_SUFFIX] = entry["status"]
        return row


class ResultWriter:
    """Streams rows to a .csv or .jsonl file as they arrive, each row flushed as it is written.

    CSV files get a column per name in ``attributes`` (and its status); JSONL rows nest them.
    ``append=True`` continues an existing file (see :class:`ResumableOutput`); a CSV file's header
    must then name the same columns.
    """

    def __init__(self, path: str | Path, attributes: Iterable[str] = (), *, append: bool = False):
        self.path = Path(path)
        _check_suffix(self.path)
        self._jsonl = self.path.suffix.lower() == ".jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        columns = list(ROW_FIELDS) + [c for name in attributes for c in (name, name + ATTRIBUTE_STATUS_SUFFIX)]
        if append and not self._jsonl and self.path.is_file() and self.path.stat().st_size:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            if header != columns:
                raise ValueError(f"{self.path}: its columns ({', '.join(header)}) are not this run's "
                                 f"({', '.join(columns)}); pass --overwrite to start again, or write to another file")
        self._file: IO[str] = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self._csv = None if self._jsonl else csv.DictWriter(self._file, fieldnames=columns)
        if self._csv is not None and self._file.tell() == 0:
            self._csv.writeheader()
            self._file.flush()

    def write(self, result: ScoreResult) -> None:
        if self._jsonl:
            self._file.write(json.dumps(result.to_row(), ensure_ascii=False) + "\n")
        else:
            self._csv.writerow(spreadsheet_safe(result.to_flat_row()))
        self._file.flush()

    def close(self) -> None:
        self._file.close()

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


def _check_suffix(path: Path) -> None:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; the output is a file ending in .csv or .jsonl (e.g. {path / 'scores.csv'})")
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: output must end in .csv or .jsonl")


# ---------------------------------------------------------------- resuming a killed run

RUN_FILE_SUFFIX = ".run.json"  # beside the results file: the settings its rows were made with


def read_complete_rows(path: str | Path, *, repair: bool = False) -> list[dict]:
    """The whole rows of a results file a killed run may have left, in file order.

    A run writes and flushes one row at a time, so a kill can leave at most the last row torn
    (no line end, unterminated quote, bad JSON); it is not returned, and ``repair=True`` cuts it
    off the file so appending continues after the last whole row. Anything malformed before the
    last row raises ``ValueError``: that file was not left by a killed run.
    """
    path = Path(path)
    _check_suffix(path)
    data = path.read_bytes()
    text = data.decode("utf-8", errors="surrogateescape")  # a torn multi-byte character stays in the tail
    reader = _complete_csv if path.suffix.lower() == ".csv" else _complete_jsonl
    rows, end = reader(path, text)
    if repair and end < len(text):
        with open(path, "r+b") as f:
            f.truncate(len(text[:end].encode("utf-8", errors="surrogateescape")))
            f.flush()
            os.fsync(f.fileno())
    return rows


def _complete_jsonl(path: Path, text: str) -> tuple[list[dict], int]:
    rows, end = [], 0
    lines = text.split("\n")
    for number, line in enumerate(lines[:-1], 1):  # the last piece has no line end: torn, or empty
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:  # a row and its line end are written together: not torn
            raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg}); the file was not "
                             "left so by a killed run") from None
        if not isinstance(row, dict) or "path" not in row:
            raise ValueError(f"{path}: line {number} is not a result row")
        rows.append(row)
        end += len(line) + 1
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
    last row is cut off); those inputs are skipped and the rest appended.
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

    def remove(self) -> None:
        """Start again (``--overwrite``): the results file and its run file go."""
        for file in (self.path, self.run_file):
            file.unlink(missing_ok=True)

    def check(self) -> None:
        """Refuse an existing file made with other settings, or by something that was not such a run."""
        if not self.path.exists():
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
        if not self.path.exists():
            return []
        rows = read_complete_rows(self.path, repair=repair)
        if len(rows) > len(inputs):
            raise ValueError(f"{self.path} holds {len(rows)} rows but this run has {len(inputs)} inputs; "
                             "pass --overwrite to start again, or write to another file")
        for number, (row, expected) in enumerate(zip(rows, inputs), 1):
            if row["path"] != expected:
                raise ValueError(f"{self.path}: row {number} is {row['path']!r} but input {number} is {expected!r}: "
                                 "the inputs changed since the file was written; pass --overwrite to start again, "
                                 "or write to another file")
        return [ScoreResult.from_row(row) for row in rows]

    def begin(self) -> None:
        """Create the (empty) file and its run file, unless they exist."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists() or not self.run_file.is_file():
            self.run_file.write_text(json.dumps({"settings": self.settings}, indent=2) + "\n", encoding="utf-8")
            self.path.touch()

    def writer(self, attributes: Iterable[str] = ()) -> ResultWriter:
        """Append to the file (created with its run file when new)."""
        self.begin()
        return ResultWriter(self.path, attributes, append=True)


# ---------------------------------------------------------------- reading predictions for evaluation

SOURCE_REALQA, SOURCE_LLAMAFACTORY = "realqa", "llamafactory"


@dataclass(frozen=True)
class Prediction:
    """One evaluable row.

    ``pred`` is the value evaluated: None when the answer held no score, the input failed, or the
    value lies outside the task's range (``status`` ``out_of_range``; ``read`` keeps the number so it
    can be reported, but it is never scored). ``text`` is the answer as the file keeps it (None when
    the file keeps none) and ``label_text`` a LLaMA-Factory row's label answer, for the official
    reading. LLaMA-Factory rows (``source``) carry no image: ``key`` is their 0-based row number.
    """

    key: str
    pred: float | None
    label: float | None
    status: str
    attributes: dict = field(default_factory=dict)  # name -> predicted value (None when it failed)
    attribute_status: dict = field(default_factory=dict)  # name -> its parse status
    text: str | None = None
    label_text: str | None = None
    read: float | None = None
    source: str = SOURCE_REALQA


def read_predictions(path: str | Path, *, fmt: ScoreFormat | None = None, field: str = "score",
                     task: str | None = None) -> list[Prediction]:
    """Read our CSV/JSONL results or LLaMA-Factory's ``generated_predictions.jsonl``.

    LLaMA-Factory rows (``predict``/``label`` answer texts) are parsed with the official answer
    forms; a ``predict`` that does not parse is kept as a failed row, never dropped. Their range is
    the row's own (the label answer and the prompt's "from X to Y", read as
    :func:`realqa.conversations.read_answer` reads a conversation), else ``fmt``'s, else ``task``'s
    default: LLaMA-Factory checks nothing, and one answer of 33333333 on a 1-5 scale would
    otherwise swamp the RMSE. Our rows keep the status scoring gave them.
    ``field`` picks the value column of our files: ``score`` (greedy) or ``ncm``; an out-of-range
    row is left out of either.
    """
    path = Path(path)
    rows = list(_read_rows(path))
    if rows and "predict" in rows[0]:
        fallback = _fallback_range(fmt, task)
        return [_llamafactory_row(i, row, fallback, path) for i, row in enumerate(rows)]
    predictions = []
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{path}: row {i + 1} has no {field!r} column (columns: {', '.join(row)})")
        value = _number(row.get(field))
        status = row.get("status") or ("ok" if value is not None else "no_score")
        pred = None if status == PARSE_OUT_OF_RANGE else value
        label = _number(row.get("label", row.get("mos")))
        values, statuses = _predicted_attributes(row)
        text = row.get("text")
        predictions.append(Prediction(str(row.get("path", i)), pred, label, status, values, statuses,
                                      text=None if text is None else str(text), read=value))
    return predictions


def _predicted_attributes(row: dict) -> tuple[dict, dict]:
    """Attribute predictions of one of our rows and their statuses: nested (JSONL) or
    ``name``/``name_status`` columns (CSV). A value whose status is not ``ok`` is None."""
    if isinstance(row.get("attributes"), dict):
        entries = {name: (entry.get("value"), entry.get("status")) for name, entry in row["attributes"].items()}
    else:
        names = [c[: -len(ATTRIBUTE_STATUS_SUFFIX)] for c in row if c.endswith(ATTRIBUTE_STATUS_SUFFIX)]
        entries = {name: (row.get(name) or None, row.get(name + ATTRIBUTE_STATUS_SUFFIX)) for name in names if name in row}
    values = {name: value if status == PARSE_OK else None for name, (value, status) in entries.items()}
    return values, {name: status for name, (_, status) in entries.items()}


def _fallback_range(fmt: ScoreFormat | None, task: str | None) -> tuple[float, float] | None:
    if fmt is not None:
        return fmt.low, fmt.high
    spec = DEFAULT_TASKS.get(task) if task else None
    return (spec.low, spec.high) if spec is not None and spec.is_score else None


def _row_range(prompt: str, label_text: str, fallback: tuple[float, float] | None) -> tuple[float, float] | None:
    """The range a LLaMA-Factory row states (its label answer's task, its prompt's "from X to Y"), else ``fallback``."""
    from .conversations import ConversationError, read_answer
    from .tasks import SCORE

    if label_text:
        try:
            answer = read_answer(prompt, label_text)
        except ConversationError:
            return fallback
        if answer["kind"] == SCORE:
            return answer["low"], answer["high"]
    return fallback


def _llamafactory_row(i: int, row: dict, fallback: tuple[float, float] | None, path: Path) -> Prediction:
    predict = str(row["predict"])
    label_text = row.get("label")
    label_text = None if label_text in (None, "") else str(label_text)
    label = parse_score(label_text).value if label_text is not None else None
    if label_text is not None and label is None:
        raise ValueError(f"{path}: row {i + 1}: the label {label_text!r} holds no score")
    predicted = parse_score(predict)
    status, pred = predicted.status, predicted.value
    bounds = _row_range(str(row.get("prompt") or ""), label_text or "", fallback)
    if pred is not None and bounds is not None and not bounds[0] <= pred <= bounds[1]:
        status, pred = PARSE_OUT_OF_RANGE, None
    return Prediction(str(i), pred, label, status, text=predict, label_text=label_text, read=predicted.value,
                      source=SOURCE_LLAMAFACTORY)


def _read_rows(path: Path) -> Iterator[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                yield {key: csv_text(value) if isinstance(value, str) else value for key, value in row.items()}
        return
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {line_no} is not valid JSON ({err.msg})") from None


def _value(value) -> float | str | None:
    """A score cell: a number, a categorical answer (a word), or empty."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def write_rows(results: Iterable[ScoreResult], path: str | Path) -> None:
    with ResultWriter(path) as writer:
        for result in results:
            writer.write(result)
