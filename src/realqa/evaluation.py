"""Predictions against labels: the overall score and every attribute, one table row each.

Predictions are realqa results files (read by :func:`realqa.results.read_results`) or
LLaMA-Factory's ``generated_predictions.jsonl``. Labels come from a table (CSV, TSV, JSON, JSONL
or Parquet, read by :mod:`realqa.data.tables`: an image column, a label column, and optionally one
column per attribute), from a realqa manifest (scores and attributes of each sample), or from a
LLaMA-Factory conversation file (the scores its assistant answers state). Rows match by path,
then by file name; LLaMA-Factory's ``generated_predictions.jsonl`` rows, which name no image, match
the conversation file they were generated from by order. Failed predictions are counted in every
row, never dropped; answers outside the task's range are counted apart and never scored.

Beside realqa's figures, :func:`official_reading` reads the same answers the way the RealQA
authors' evaluation script does (first ``<...>``, unreadable rows skipped, raw correlations), so
the two can be set next to the paper's numbers.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

from scipy import stats

from .metrics import classification, evaluate, srcc
from .numeric import PARSE_OK, PARSE_OUT_OF_RANGE, ScoreFormat, parse_score
from .results import ScoreResult, number_cell, read_rows, results_of
from .tasks import DEFAULT_TASKS

KEY_COLUMNS = ("path", "image", "image_name", "img_name", "image_id")
LABEL_COLUMNS = ("mos", "MOS", "score", "label")


@dataclass(frozen=True)
class Labels:
    """Per image key: the main label and the attribute labels.

    From a conversation file, ``records`` holds every record in file order (LLaMA-Factory rows
    match them by position), ``aliases`` maps the other spellings of an image (as the file writes
    it, its file name when no other image shares it) to its key, and ``ambiguous`` the images
    labelled twice with different values; ``note`` says why ``scores`` may be empty.
    """

    scores: dict[str, float]
    attributes: dict[str, dict[str, object]]
    records: tuple | None = None
    aliases: dict[str, str] = field(default_factory=dict)
    ambiguous: frozenset = frozenset()
    source: str = ""
    note: str = ""

    def lookup(self, key: str) -> str | None:
        """The key these labels use for a prediction's path: as given (or the same file), then as
        the labels file writes it, then its file name."""
        name = Path(key).name
        found = None
        if key in self.scores:
            found = key
        elif _normal(key) in self.aliases:
            found = self.aliases[_normal(key)]
        elif key in self.aliases:
            found = self.aliases[key]
        elif name in self.scores:
            found = name
        elif name in self.aliases:
            found = self.aliases[name]
        if found is not None and found in self.ambiguous:
            raise ValueError(f"{self.source}: {found} is labelled twice with different scores; "
                             "it cannot label a prediction by image")
        return found


def _normal(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


@dataclass(frozen=True)
class TargetRow:
    """One line of the evaluation table; the main score's row also carries the official reading."""

    target: str
    kind: str  # score | categorical
    metrics: dict
    official: "OfficialReading | None" = None


def read_labels(path: str | Path, column: str | None = None, task: str = "quality",
                media_dir: str | Path | None = None) -> Labels:
    """Labels from a manifest, a LLaMA-Factory conversation file, or a table (CSV, TSV, JSON, JSONL, Parquet)."""
    from .conversations import is_conversation_file

    path = Path(path)
    if path.suffix == ".jsonl" and path.with_name(path.name.removesuffix(".jsonl") + ".meta.json").is_file():
        return _manifest_labels(path, task)
    if is_conversation_file(path):
        return _conversation_labels(path, task, media_dir)
    return _table_labels(path, column)


def _table_labels(path: Path, column: str | None) -> Labels:
    """An image column, a label column (``column``, else the first of :data:`LABEL_COLUMNS`), the rest attributes.

    A row the table reader cannot take (wrong number of fields, not a JSON object) is an error
    naming it: a labels file with a row missing would shift no metric visibly, only silently.
    """
    from .data.problems import ValidationReport
    from .data.tables import read_any

    report = ValidationReport(dataset=str(path))
    table = read_any(path, report)
    if report.problems:
        more = f" (and {len(report.problems) - 1} more such rows)" if len(report.problems) > 1 else ""
        raise ValueError(f"{report.problems[0]}{more}")
    if not table.rows:
        raise ValueError(f"{path}: no rows")
    key = next((c for c in KEY_COLUMNS if c in table.columns), None)
    value = column or next((c for c in LABEL_COLUMNS if c in table.columns), None)
    if key is None or value is None or value not in table.columns:
        raise ValueError(f"{path}: need an image column ({', '.join(KEY_COLUMNS)}) and a label column "
                         f"({column or ', '.join(LABEL_COLUMNS)}); found {', '.join(table.columns)}")
    scores, attributes = {}, {}
    others = [c for c in table.columns if c not in (key, value)]
    for row in table.rows:
        try:
            image, label = row.text(key), row.number(value)
        except ValueError as err:
            raise ValueError(f"{row.where()}: {err}") from None
        scores[image] = label
        attributes[image] = {c: row.get(c) for c in others if row.get(c) not in (None, "")}
    return Labels(scores, attributes, source=str(path))


def _manifest_labels(path: Path, task: str) -> Labels:
    from .data.manifest import read_manifest

    dataset = read_manifest(path)
    scores, attributes = {}, {}
    for sample in dataset.samples:
        if task not in sample.scores:
            raise ValueError(f"{path}: sample {sample.id} has no {task!r} score")
        key = str(dataset.image_path(sample))
        scores[key] = sample.scores[task]
        attributes[key] = dict(sample.attributes)
    return Labels(scores, attributes, source=str(path))


def _conversation_labels(path: Path, task: str, media_dir) -> Labels:
    """The scores a conversation file's answers state: every record in order, and per image those of
    ``task`` (or of the file's only score task); the file's other tasks label attributes."""
    from .conversations import read_conversations

    records = read_conversations([path], media_dir)
    names = list(dict.fromkeys(c.task.name for c in records if c.task.is_score))
    main = task if task in names else (names[0] if len(names) == 1 else None)
    note = "" if main is not None else (f"it holds {', '.join(names)} scores, not {task!r}; --task picks one"
                                        if names else "it holds no score answers")
    scores: dict[str, float] = {}
    attributes: dict[str, dict[str, object]] = {}
    ambiguous = set()
    for record in records:
        key = record.image_path
        if record.task.name == main:
            if key in scores and scores[key] != record.label:
                ambiguous.add(key)
            scores.setdefault(key, record.label)
        else:
            attributes.setdefault(key, {}).setdefault(record.task.name, record.label)
    for key in scores:
        attributes.setdefault(key, {})
    aliases: dict[str, str] = {}
    named: dict[str, set] = {}
    for record in records:
        if record.image_path in scores:
            aliases.setdefault(_normal(record.image_path), record.image_path)
            aliases.setdefault(record.image, record.image_path)
            named.setdefault(Path(record.image).name, set()).add(record.image_path)
    for name, keys in named.items():
        if len(keys) == 1:  # a file name two images share matches neither
            aliases.setdefault(name, next(iter(keys)))
    return Labels(scores, attributes, tuple(records), aliases, frozenset(ambiguous), str(path), note)


# ---------------------------------------------------------------- predictions

SOURCE_REALQA, SOURCE_LLAMAFACTORY = "realqa", "llamafactory"
FILE_LABEL_COLUMNS = ("label", "mos")  # a results file's own label column (bench prediction files have one)


@dataclass(frozen=True)
class Prediction:
    """One evaluable row: a :class:`~realqa.results.ScoreResult` read back, as evaluation sees it.

    ``pred`` is the value evaluated (``field`` of the result: ``score``, or ``ncm``): None when the
    answer held no score, the input failed, or the value lies outside the task's range (status
    ``out_of_range``; ``read`` keeps the number so it can be reported, but it is never scored).
    ``label`` is the row's own label (a bench prediction file's ``label`` column, a LLaMA-Factory
    row's label answer) and ``label_text`` a LLaMA-Factory row's label answer, for the official
    reading. ``text`` is None when the file keeps no answer texts (``text_kept``). LLaMA-Factory rows
    (``source``) carry no image: their ``key`` is their 0-based row number.
    """

    result: ScoreResult
    label: float | None = None
    field: str = "score"
    label_text: str | None = None
    text_kept: bool = True
    source: str = SOURCE_REALQA

    @property
    def key(self) -> str:
        return self.result.path

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def read(self) -> float | None:
        value = getattr(self.result, self.field)
        return value if isinstance(value, (int, float)) else None

    @property
    def pred(self) -> float | None:
        return None if self.status == PARSE_OUT_OF_RANGE else self.read

    @property
    def text(self) -> str | None:
        return self.result.text if self.text_kept else None

    @property
    def attributes(self) -> dict:
        """Attribute name -> predicted value; None where its status is not ``ok``."""
        return {name: entry.get("value") if entry.get("status") == PARSE_OK else None
                for name, entry in (self.result.attributes or {}).items()}

    @property
    def attribute_status(self) -> dict:
        return {name: entry.get("status") for name, entry in (self.result.attributes or {}).items()}


def read_predictions(path: str | Path, *, fmt: ScoreFormat | None = None, field: str = "score",
                     task: str | None = None) -> list[Prediction]:
    """Our results files (:func:`realqa.results.read_results`) or LLaMA-Factory's ``generated_predictions.jsonl``.

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
    rows = read_rows(path, "refuse")
    if rows and "predict" in rows[0]:
        fallback = _fallback_range(fmt, task)
        return [_llamafactory_row(i, row, fallback, path) for i, row in enumerate(rows)]
    if field not in ("score", "ncm"):
        raise ValueError(f"cannot evaluate {field!r}: the value evaluated is 'score' or 'ncm'")
    stored = results_of(path, rows)
    if rows and field not in stored.columns:
        raise ValueError(f"{path} has no {field!r} column (columns: {', '.join(stored.columns)})")
    predictions = []
    for number, (result, others) in enumerate(zip(stored.results, stored.others), 1):
        value = getattr(result, field)
        if isinstance(value, str):
            raise ValueError(f"{path}: row {number}: the {field} {value!r} is a word, not a number; "
                             "a categorical task's answers cannot be evaluated as scores")
        try:
            label = file_label(others)
        except ValueError as err:
            raise ValueError(f"{path}: row {number}: {err}") from None
        predictions.append(Prediction(result, label, field, text_kept="text" in stored.columns))
    return predictions


def file_label(others: dict) -> float | None:
    """A results row's own label (:data:`FILE_LABEL_COLUMNS`, given by bench prediction files), from the
    row's other columns (:func:`realqa.results.other_columns`); None when it has none."""
    return number_cell(next((others[c] for c in FILE_LABEL_COLUMNS if c in others), None), "its label")


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
    """One row of LLaMA-Factory's ``generated_predictions.jsonl`` (not a realqa results file: answer texts only)."""
    predict = str(row["predict"])
    label_text = row.get("label")
    label_text = None if label_text in (None, "") else str(label_text)
    label = parse_score(label_text).value if label_text is not None else None
    if label_text is not None and label is None:
        raise ValueError(f"{path}: row {i + 1}: the label {label_text!r} holds no score")
    predicted = parse_score(predict)
    status = predicted.status
    bounds = _row_range(str(row.get("prompt") or ""), label_text or "", fallback)
    if predicted.value is not None and bounds is not None and not bounds[0] <= predicted.value <= bounds[1]:
        status = PARSE_OUT_OF_RANGE
    result = ScoreResult(str(i), "", predicted.value, None, status, predict)
    return Prediction(result, label, label_text=label_text, source=SOURCE_LLAMAFACTORY)


# ---------------------------------------------------------------- evaluation


def evaluate_predictions(predictions: list[Prediction], labels: Labels | None, source: str = "predictions",
                         task: str = "quality") -> list[TargetRow]:
    """The table: the overall score first, then each attribute the predictions carry.

    Each score row counts its out-of-range answers (``n_out_of_range``) apart from the rows
    without a score (``n_failed``); neither enters a metric. The first row carries the official
    reading of the same answers when the file keeps the answer texts.
    """
    keys, main_labels, official_labels = _match(predictions, labels, source)
    main = _score_metrics([p.pred for p in predictions], main_labels, [p.status for p in predictions])
    main["std_error_srcc"] = spread_error_srcc([p.result.ncm_std for p in predictions], [p.pred for p in predictions],
                                               main_labels)[0]
    official = None
    if any(p.text is not None for p in predictions):
        llamafactory = any(p.source == SOURCE_LLAMAFACTORY for p in predictions)
        official = official_reading([p.text or "" for p in predictions], official_labels,
                                    after_prefix=False if llamafactory else None)
    rows = [TargetRow(task, "score", main, official)]
    names = list(dict.fromkeys(name for p in predictions for name in p.attributes))
    for name in names:
        if keys is None:
            raise ValueError(f"attribute {name!r} needs labels: pass --labels FILE with a {name!r} column")
        truth = [labels.attributes.get(k, {}).get(name) for k in keys]
        known = [i for i, value in enumerate(truth) if value is not None]
        if not known:
            continue  # the labels do not annotate this attribute
        preds = [predictions[i].attributes.get(name) for i in known]
        statuses = [predictions[i].attribute_status.get(name) for i in known]
        truth = [truth[i] for i in known]
        if all(_is_number(v) for v in truth) and all(v is None or _is_number(v) for v in preds):
            metrics = _score_metrics([_float(v) for v in preds], [float(v) for v in truth], statuses)
            rows.append(TargetRow(name, "score", metrics))
        else:
            rows.append(TargetRow(name, "categorical", classification(preds, truth).as_dict()))
    return rows


def _match(predictions: list[Prediction], labels: Labels | None, source: str) -> tuple[list | None, list, list]:
    """(label keys or None, the main labels, the labels as the official reading takes them)."""
    llamafactory = any(p.source == SOURCE_LLAMAFACTORY for p in predictions)
    if labels is None:
        unlabelled = [p.key for p in predictions if p.label is None]
        if unlabelled:
            raise ValueError(f"{source}: {len(unlabelled)} row(s) carry no label; pass --labels FILE")
        main_labels = [p.label for p in predictions]
        return None, main_labels, [p.label_text if p.label_text is not None else p.label for p in predictions]
    if llamafactory:
        return None, *_match_by_order(predictions, labels, source)
    keys = [labels.lookup(p.key) for p in predictions]
    missing = [p.key for p, k in zip(predictions, keys) if k is None]
    if missing:
        why = f" ({labels.source}: {labels.note})" if labels.note else ""
        raise ValueError(f"{len(missing)} prediction(s) have no label, e.g. {missing[0]!r}{why}")
    main_labels = [labels.scores[k] for k in keys]
    return keys, main_labels, main_labels


def _match_by_order(predictions: list[Prediction], labels: Labels, source: str) -> tuple[list, list]:
    """LLaMA-Factory predicts a file's records in order and names no image: row i is record i."""
    if labels.records is None:
        raise ValueError(f"{source}: LLaMA-Factory rows name no image; --labels must be the conversation file they "
                         f"were generated from (matched by order), and {labels.source} is not one")
    records = labels.records
    if len(records) != len(predictions):
        raise ValueError(f"{source} has {len(predictions)} rows but {labels.source} has {len(records)} records; "
                         "LLaMA-Factory rows match the conversation file they were generated from, record by record")
    main_labels, official_labels = [], []
    for i, (prediction, record) in enumerate(zip(predictions, records)):
        if not isinstance(record.label, (int, float)):
            raise ValueError(f"{labels.source}: record {i + 1} states {record.task.name} {record.label!r}, not a score")
        stated = parse_score(record.answer).value
        if prediction.label is not None and stated is not None and abs(prediction.label - stated) > 1e-9:
            raise ValueError(f"{source}: row {i + 1}'s label {prediction.label:g} is not record {i + 1}'s "
                             f"{stated:g} in {labels.source}; are these the predictions of that file?")
        main_labels.append(float(record.label))
        official_labels.append(prediction.label_text if prediction.label_text is not None else record.answer)
    return main_labels, official_labels


def _score_metrics(preds: Sequence[float | None], truth: Sequence[float], statuses: Sequence[str | None]) -> dict:
    """:func:`realqa.metrics.evaluate` over the rows whose answer is not out of range, with all rows counted.

    ``evaluate`` would count an out-of-range row (its prediction is None) as failed; it is taken out
    first so that ``n_failed`` stays "no score or error" and ``n_out_of_range`` says how many
    answers fell outside the range. ``n_total`` = evaluated + failed + out of range.
    """
    inside = [i for i, status in enumerate(statuses) if status != PARSE_OUT_OF_RANGE]
    metrics = evaluate([preds[i] for i in inside], [truth[i] for i in inside]).as_dict()
    metrics["n_total"] = len(preds)
    metrics["n_out_of_range"] = len(preds) - len(inside)
    return metrics


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _float(value) -> float | None:
    return None if value is None else float(value)


# ---------------------------------------------------------------- uncertainty against error


def spread_error_srcc(spreads: Sequence[float | None], scores: Sequence[float | None],
                      labels: Sequence[float]) -> tuple[float, int]:
    """Whether a larger spread goes with a larger error: the Spearman correlation between each row's
    ``ncm_std`` and its absolute error |score - label|, and the number of rows it is over (those with a
    finite score and spread). Positive: the model is less sure where it is more wrong. NaN where undefined
    (fewer than two rows, or a constant side)."""
    if not len(spreads) == len(scores) == len(labels):
        raise ValueError(f"{len(spreads)} spreads, {len(scores)} scores and {len(labels)} labels")
    pairs = [(spread, abs(score - label)) for spread, score, label in zip(spreads, scores, labels)
             if _is_number(spread) and _is_number(score)]
    if not pairs:
        return math.nan, 0
    return srcc([p for p, _ in pairs], [e for _, e in pairs]), len(pairs)


# ---------------------------------------------------------------- the official reading

OFFICIAL_MARK = "score of this image is "


class OfficialReading(NamedTuple):
    """How the RealQA authors' evaluation script reads a set of answers: rows given, rows it could
    read (answer and label), and raw Pearson / Spearman over those."""

    n_rows: int
    n_kept: int
    plcc: float
    srcc: float


def official_value(text: str, *, after_prefix: bool | None = None) -> float | None:
    """An answer's value under the authors' rule, or None where their script skips the row.

    The rule: when the text holds both '<' and '>', the text between the first '<' and the first
    '>'; else the text after "score of this image is " (up to a next one), dots stripped from both
    ends; ``float()`` of that, any failure skipping the row. No range check.
    ``after_prefix``: False, ``text`` is a whole answer (LLaMA-Factory's ``predict``); True, it is
    what followed a forced prefix ending in "score of this image is " (realqa's plain answers), so
    it is read as the script reads prefix + text; None, a text holding that phrase is whole (a
    chain-of-thought answer), any other follows the prefix.
    """
    if "<" in text and ">" in text:
        return _official_float(text[text.index("<") + 1: text.index(">")])
    if after_prefix or (after_prefix is None and OFFICIAL_MARK not in text):
        text = OFFICIAL_MARK + text
    pieces = text.split(OFFICIAL_MARK)
    return _official_float(pieces[1].strip(".")) if len(pieces) > 1 else None


def official_label(label) -> float | None:
    """A label under the authors' rule: a number as it is; a text only in the plain form (after
    "score of this image is ", dots stripped), so a chain-of-thought label skips its row."""
    if isinstance(label, (int, float)) and not isinstance(label, bool):
        return float(label)
    if not isinstance(label, str):
        return None
    pieces = label.split(OFFICIAL_MARK)
    return _official_float(pieces[1].strip(".")) if len(pieces) > 1 else None


def _official_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def official_reading(predict_texts: Sequence[str], labels: Sequence, *, after_prefix: bool | None = None
                     ) -> OfficialReading:
    """The authors' script's figures for these answers: (rows, rows kept, PLCC, SRCC).

    ``labels`` are numbers or label answers (texts); a row is kept when both its answer
    (:func:`official_value`) and its label (:func:`official_label`) read. Correlations are scipy's
    raw ``pearsonr`` / ``spearmanr`` over the kept rows, NaN where they are undefined (fewer than
    two rows, a constant side). Failures are not counted and ranges are not checked, as in the
    script: set it beside realqa's own figures, not in their place.
    """
    if len(predict_texts) != len(labels):
        raise ValueError(f"{len(predict_texts)} answers but {len(labels)} labels")
    kept = []
    for text, label in zip(predict_texts, labels):
        value, truth = official_value(text or "", after_prefix=after_prefix), official_label(label)
        if value is not None and truth is not None:
            kept.append((value, truth))
    if len(kept) < 2:
        return OfficialReading(len(labels), len(kept), math.nan, math.nan)
    x, y = [v for v, _ in kept], [t for _, t in kept]
    return OfficialReading(len(labels), len(kept), _raw(stats.pearsonr, x, y), _raw(stats.spearmanr, x, y))


def _raw(correlation, x, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant side: scipy warns and answers NaN, as the script would see
        try:
            return float(correlation(x, y)[0])
        except ValueError:  # non-finite values scipy refuses
            return math.nan


# ---------------------------------------------------------------- output


def format_table(rows: list[TargetRow]) -> str:
    """Score targets with correlations, categorical ones with accuracy and macro-F1.

    A score row's ``failed`` counts answers without a score and errors; ``out-of-range`` the
    answers outside the task's range; neither is in the metrics. ``std~err`` (the overall score only):
    the Spearman correlation between ``ncm_std`` and |prediction - label|, positive where the model is
    less sure as it is more wrong; nan for rows without spreads.
    """
    lines = []
    scores = [r for r in rows if r.kind == "score"]
    if scores:
        lines.append(f"{'target':<16} {'rows':>6} {'scored':>6} {'failed':>6} {'SRCC':>7} {'KRCC':>7} {'PLCC':>7} "
                     f"{'PLCC4':>7} {'RMSE':>7} {'std~err':>7} {'out-of-range':>12}")
        for r in scores:
            m = r.metrics
            spread = _fmt(m["std_error_srcc"]) if "std_error_srcc" in m else f"{'-':>7}"
            lines.append(f"{r.target:<16} {m['n_total']:>6} {m['n_evaluated']:>6} {m['n_failed']:>6} "
                         + " ".join(_fmt(m[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse"))
                         + f" {spread} {m.get('n_out_of_range', 0):>12}")
    categorical = [r for r in rows if r.kind == "categorical"]
    if categorical:
        lines.append(f"{'target':<16} {'rows':>6} {'failed':>6} {'accuracy':>9} {'macro-F1':>9}")
        for r in categorical:
            m = r.metrics
            lines.append(f"{r.target:<16} {m['n_total']:>6} {m['n_failed']:>6} {_fmt(m['accuracy'], 9)} "
                         f"{_fmt(m['macro_f1'], 9)}")
    return "\n".join(lines)


def format_official(reading: OfficialReading) -> str:
    """The official reading's block: what it kept and its two correlations, and whose rule it is."""
    return (f"official reading: {reading.n_kept} of {reading.n_rows} rows kept, PLCC {_fmt(reading.plcc, 0)}, "
            f"SRCC {_fmt(reading.srcc, 0)}\n"
            "  (the RealQA authors' eval script's rule: the first <...>, else the number after \"score of this image "
            "is\"; a row whose answer or label it cannot read is skipped, uncounted; no range check)")


def _fmt(value: float, width: int = 7) -> str:
    return f"{'nan':>{width}}" if math.isnan(value) else f"{value:{width}.4f}"
