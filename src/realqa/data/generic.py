"""A user's own labels: a CSV/TSV/JSON/JSONL/parquet file with an image column and score columns.

    realqa data prepare generic --labels my.csv --root photos/ --out prepared/ \\
        --image-column file --score-column quality=MOS --native-range 0,100
"""

from __future__ import annotations

from pathlib import Path

from ..tasks import DEFAULT_TASKS
from .adapter import OFFICIAL, Adapter, LabelData, LabelRow, Option, describe_file, path_id, record_problem
from .attributes import coerce_value
from .problems import MALFORMED_ROW, DataError, RowProblem, ValidationReport
from .records import ALL, ScoreMapping
from .splits import canonical_split
from .tables import WHITESPACE, read_any

_DELIMITERS = {",": ",", ";": ";", "tab": "\t", "\\t": "\t", "\t": "\t", "whitespace": WHITESPACE}


def parse_pairs(value, what: str) -> dict[str, str]:
    """'quality=MOS' / ['quality=MOS', 'aesthetics=aes'] / {'quality': 'MOS'} -> {'quality': 'MOS'}."""
    if isinstance(value, dict):
        return dict(value)
    items = [value] if isinstance(value, str) else list(value)
    pairs = {}
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(";"))):
            key, sep, rest = part.partition("=")
            if not sep or not key.strip() or not rest.strip():
                raise ValueError(f"{what} must look like task=value, got {part!r}")
            pairs[key.strip()] = rest.strip()
    return pairs


def parse_range(value) -> tuple[float, float]:
    """'0,100' or (0, 100) -> (0.0, 100.0); a first value above the second means lower is better."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"a range must be two numbers lo,hi, got {value!r}") from None
    if lo == hi:
        raise ValueError(f"a range needs two different ends, got {value!r}")
    return lo, hi


def parse_list(value) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())


def check_task(name: str) -> str:
    if name not in DEFAULT_TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(DEFAULT_TASKS)}")
    return name


class Generic(Adapter):
    name = "generic"
    title = "generic label file"
    description = "your own CSV/JSONL: --image-column, --score-column task=column, --native-range lo,hi"
    options = (
        Option("image_column", None, "column naming the image file (required)"),
        Option("score_columns", None, "task=column, e.g. quality=MOS; several allowed (required)"),
        Option("native_range", None, "lo,hi of the scores, or task=lo,hi (lo>hi: lower is better); "
                                     "default: the task range"),
        Option("id_column", None, "column with a stable id (default: the image path without extension)"),
        Option("split_column", None, "column with each row's split (train/validation/test)"),
        Option("attribute_columns", (), "comma-separated columns kept as attributes", parse_list),
        Option("delimiter", None, "text delimiter: ',', ';', 'tab' or 'whitespace' (default: tab for .tsv, else ',')"),
        Option("dataset_name", None, "dataset name (default: the label file's name)"),
    )

    def find_label_files(self, root: Path) -> list[Path]:
        raise DataError("the generic adapter needs its label file (labels=FILE, --labels FILE)")

    def dataset_name(self, opts: dict, files: list[Path]) -> str:
        return opts["dataset_name"] or files[0].stem

    def split_default(self, data: LabelData) -> str:
        return OFFICIAL if data.split_source else ALL

    def read(self, files: list[Path], report: ValidationReport, opts: dict) -> LabelData:
        if not opts["image_column"] or not opts["score_columns"]:
            raise ValueError("generic: image_column and score_columns are required "
                             "(--image-column NAME --score-column quality=COLUMN)")
        score_columns = {
            check_task(task): column for task, column in parse_pairs(opts["score_columns"], "score_columns").items()
        }
        ranges = self._native_ranges(opts["native_range"], score_columns)
        text_options = {"delimiter": _DELIMITERS.get(opts["delimiter"], opts["delimiter"])} if opts["delimiter"] else {}
        wanted = [opts["image_column"], *score_columns.values(),
                  *filter(None, (opts["id_column"], opts["split_column"])), *opts["attribute_columns"]]
        rows, sources = [], []
        for path in files:
            table = read_any(path, report, **text_options)
            table.require(wanted)
            for row in table.rows:
                try:
                    image = row.text(opts["image_column"])
                    rows.append(LabelRow(
                        row, image, {task: row.number(column) for task, column in score_columns.items()},
                        id=row.text(opts["id_column"]) if opts["id_column"] else path_id(image),
                        split=self._split(row, opts["split_column"]),
                        attributes={c: coerce_value(row.get(c)) for c in opts["attribute_columns"]},
                    ))
                except RowProblem as problem:
                    record_problem(report, row, problem)
            sources.append(describe_file(path, "generic", len(table.rows)))
        mappings = {task: ScoreMapping.onto_task(task, ranges[task], f"column {column!r}")
                    for task, column in score_columns.items()}
        split_source = f"column {opts['split_column']!r}" if opts["split_column"] else ""
        return LabelData(rows, mappings, sources, split_source)

    @staticmethod
    def _native_ranges(value, score_columns: dict[str, str]) -> dict[str, tuple[float, float]]:
        """Each task's native range: the task range, unless 'lo,hi' (all tasks) or 'task=lo,hi' says otherwise."""
        ranges = {task: (DEFAULT_TASKS[task].low, DEFAULT_TASKS[task].high) for task in score_columns}
        if value is None:
            return ranges
        if isinstance(value, dict):
            return {**ranges, **{check_task(task): parse_range(r) for task, r in value.items()}}
        if not isinstance(value, str) and not all(isinstance(v, str) for v in value):
            return dict.fromkeys(ranges, parse_range(value))  # numbers: one range for every task
        for text in [value] if isinstance(value, str) else value:
            for part in filter(None, (p.strip() for p in text.split(";"))):
                task, has_task, numbers = part.rpartition("=")
                if has_task:
                    ranges[check_task(task.strip())] = parse_range(numbers)
                else:
                    ranges = dict.fromkeys(ranges, parse_range(part))
        return ranges

    @staticmethod
    def _split(row, column: str | None) -> str | None:
        if not column:
            return None
        value = row.text(column)
        name = canonical_split(value)
        if name is None:
            raise RowProblem(
                f"column {column!r}: unknown split {value!r} (use train, validation or test)", MALFORMED_ROW
            )
        return name
