"""Predictions against labels: the overall score and every attribute, one table row each.

Labels come from a CSV/JSONL table (an image column, a label column, and optionally one column
per attribute) or from a realqa manifest (scores and attributes of each sample). Rows match by
path, then by file name. Failed predictions are counted in every row, never dropped.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .metrics import classification, evaluate
from .results import Prediction

KEY_COLUMNS = ("path", "image", "image_name", "img_name", "image_id")
LABEL_COLUMNS = ("mos", "MOS", "score", "label")


@dataclass(frozen=True)
class Labels:
    """Per image key: the main label and the attribute labels."""

    scores: dict[str, float]
    attributes: dict[str, dict[str, object]]

    def lookup(self, key: str) -> str | None:
        """The key these labels use for a prediction's path: as given, else its file name."""
        if key in self.scores:
            return key
        name = Path(key).name
        return name if name in self.scores else None


@dataclass(frozen=True)
class TargetRow:
    """One line of the evaluation table."""

    target: str
    kind: str  # score | categorical
    metrics: dict


def read_labels(path: str | Path, column: str | None = None, task: str = "quality") -> Labels:
    path = Path(path)
    if path.suffix == ".jsonl" and path.with_name(path.name.removesuffix(".jsonl") + ".meta.json").is_file():
        return _manifest_labels(path, task)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f)) if path.suffix.lower() == ".csv" else [json.loads(l) for l in f if l.strip()]
    if not rows:
        raise ValueError(f"{path}: no rows")
    key = next((c for c in KEY_COLUMNS if c in rows[0]), None)
    value = column or next((c for c in LABEL_COLUMNS if c in rows[0]), None)
    if key is None or value is None or value not in rows[0]:
        raise ValueError(f"{path}: need an image column ({', '.join(KEY_COLUMNS)}) and a label column "
                         f"({column or ', '.join(LABEL_COLUMNS)}); found {', '.join(rows[0])}")
    scores, attributes = {}, {}
    others = [c for c in rows[0] if c not in (key, value)]
    for i, row in enumerate(rows, 1):
        try:
            scores[str(row[key])] = float(row[value])
        except (TypeError, ValueError):
            raise ValueError(f"{path}: row {i}: label {row[value]!r} is not a number") from None
        attributes[str(row[key])] = {c: row[c] for c in others if row[c] not in (None, "")}
    return Labels(scores, attributes)


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
    return Labels(scores, attributes)


def evaluate_predictions(predictions: list[Prediction], labels: Labels | None, source: str = "predictions",
                         task: str = "quality") -> list[TargetRow]:
    """The table: the overall score first, then each attribute the predictions carry."""
    if labels is None:
        unlabelled = [p.key for p in predictions if p.label is None]
        if unlabelled:
            raise ValueError(f"{source}: {len(unlabelled)} row(s) carry no label; pass --labels FILE")
        keys = None
        main_labels = [p.label for p in predictions]
    else:
        keys = [labels.lookup(p.key) for p in predictions]
        missing = [p.key for p, k in zip(predictions, keys) if k is None]
        if missing:
            raise ValueError(f"{len(missing)} prediction(s) have no label, e.g. {missing[0]!r}")
        main_labels = [labels.scores[k] for k in keys]
    rows = [TargetRow(task, "score", evaluate([p.pred for p in predictions], main_labels).as_dict())]
    names = list(dict.fromkeys(name for p in predictions for name in p.attributes))
    for name in names:
        if keys is None:
            raise ValueError(f"attribute {name!r} needs labels: pass --labels FILE with a {name!r} column")
        truth = [labels.attributes[k].get(name) for k in keys]
        known = [i for i, value in enumerate(truth) if value is not None]
        if not known:
            continue  # the labels do not annotate this attribute
        preds = [predictions[i].attributes.get(name) for i in known]
        truth = [truth[i] for i in known]
        if all(_is_number(v) for v in truth) and all(v is None or _is_number(v) for v in preds):
            rows.append(TargetRow(name, "score", evaluate([_float(v) for v in preds], [float(v) for v in truth]).as_dict()))
        else:
            rows.append(TargetRow(name, "categorical", classification(preds, truth).as_dict()))
    return rows


def _is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _float(value) -> float | None:
    return None if value is None else float(value)


def format_table(rows: list[TargetRow]) -> str:
    """Score targets with correlations, categorical ones with accuracy and macro-F1."""
    lines = []
    scores = [r for r in rows if r.kind == "score"]
    if scores:
        lines.append(f"{'target':<16} {'rows':>6} {'scored':>6} {'failed':>6} {'SRCC':>7} {'KRCC':>7} {'PLCC':>7} "
                     f"{'PLCC4':>7} {'RMSE':>7}")
        for r in scores:
            m = r.metrics
            lines.append(f"{r.target:<16} {m['n_total']:>6} {m['n_evaluated']:>6} {m['n_failed']:>6} "
                         + " ".join(_fmt(m[k]) for k in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse")))
    categorical = [r for r in rows if r.kind == "categorical"]
    if categorical:
        lines.append(f"{'target':<16} {'rows':>6} {'failed':>6} {'accuracy':>9} {'macro-F1':>9}")
        for r in categorical:
            m = r.metrics
            lines.append(f"{r.target:<16} {m['n_total']:>6} {m['n_failed']:>6} {_fmt(m['accuracy'], 9)} "
                         f"{_fmt(m['macro_f1'], 9)}")
    return "\n".join(lines)


def _fmt(value: float, width: int = 7) -> str:
    return f"{'nan':>{width}}" if math.isnan(value) else f"{value:{width}.4f}"
