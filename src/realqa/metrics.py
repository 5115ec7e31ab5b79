"""Correlation and error metrics for image quality assessment.

The low-level functions take two equal-length 1-D sequences of finite numbers.
`evaluate` additionally accepts missing (None/NaN) predictions, counts them as
failures and scores the remaining rows.

A correlation that is undefined (fewer than two rows, or a constant input) is
returned as NaN rather than raised, so a batch evaluation never aborts on it.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit

__all__ = [
    "Classification",
    "Evaluation",
    "classification",
    "LogisticFitError",
    "evaluate",
    "fit_logistic4",
    "krcc",
    "logistic4",
    "plcc",
    "plcc_logistic",
    "rmse",
    "srcc",
]

_N_LOGISTIC_PARAMS = 4
_MAXFEV = 20_000


class LogisticFitError(RuntimeError):
    """The 4-parameter logistic fit did not converge."""


def _as_1d(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _check_lengths(pred: np.ndarray, label: np.ndarray) -> None:
    if pred.size != label.size:
        raise ValueError(
            f"pred and label lengths differ: {pred.size} predictions vs {label.size} labels"
        )


def _pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    """Validate inputs of the low-level metrics: 1-D, same length, all finite."""
    x, y = _as_1d(pred, "pred"), _as_1d(label, "label")
    _check_lengths(x, y)
    for name, arr in (("pred", x), ("label", y)):
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise ValueError(
                f"{name} has non-finite values at rows {bad[:10].tolist()}; "
                "use evaluate() for predictions that failed to parse"
            )
    return x, y


def _is_constant(arr: np.ndarray) -> bool:
    return bool(arr.size == 0 or np.all(arr == arr[0]))


def _correlation_undefined(x: np.ndarray, y: np.ndarray) -> bool:
    # Checked up front so scipy never emits ConstantInputWarning; the NaN is
    # returned deliberately instead.
    return x.size < 2 or _is_constant(x) or _is_constant(y)


def srcc(pred, label) -> float:
    """Spearman rank correlation; NaN when undefined."""
    x, y = _pair(pred, label)
    if _correlation_undefined(x, y):
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def krcc(pred, label) -> float:
    """Kendall tau-b rank correlation (tie-corrected); NaN when undefined."""
    x, y = _pair(pred, label)
    if _correlation_undefined(x, y):
        return math.nan
    return float(stats.kendalltau(x, y, variant="b").statistic)


def plcc(pred, label) -> float:
    """Pearson correlation of the raw predictions; NaN when undefined."""
    x, y = _pair(pred, label)
    if _correlation_undefined(x, y):
        return math.nan
    return float(stats.pearsonr(x, y).statistic)


def logistic4(x, beta1, beta2, beta3, beta4) -> np.ndarray:
    """VQEG 4-parameter logistic: (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2."""
    # expit is the overflow-free form of 1 / (1 + exp(-t)).
    t = (np.asarray(x, dtype=float) - beta3) / abs(beta4)
    return (beta1 - beta2) * expit(t) + beta2


def fit_logistic4(pred, label) -> np.ndarray:
    """Fit `logistic4` mapping predictions onto labels; returns [b1, b2, b3, |b4|].

    Raises ValueError if there are not more points than parameters and
    LogisticFitError if the fit does not converge or its covariance cannot be
    estimated (scipy's OptimizeWarning).
    """
    x, y = _pair(pred, label)
    if x.size <= _N_LOGISTIC_PARAMS:
        raise ValueError(
            f"logistic fit needs more than {_N_LOGISTIC_PARAMS} points, got {x.size}"
        )
    spread = float(np.std(x))
    hi, lo = float(np.max(y)), float(np.min(y))
    # Start on the right branch: a decreasing relation has beta1 < beta2.
    if np.sum((x - x.mean()) * (y - y.mean())) < 0:
        hi, lo = lo, hi
    p0 = [hi, lo, float(np.mean(x)), spread / 4 if spread > 0 else 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", OptimizeWarning)
        try:
            params, _ = curve_fit(logistic4, x, y, p0=p0, maxfev=_MAXFEV)
        except (RuntimeError, OptimizeWarning) as exc:
            raise LogisticFitError(f"4-parameter logistic fit failed: {exc}") from exc
    if not np.all(np.isfinite(params)) or params[3] == 0:
        raise LogisticFitError(f"4-parameter logistic fit gave degenerate parameters {params}")
    params = np.asarray(params, dtype=float)
    params[3] = abs(params[3])  # the model only depends on |beta4|
    return params


def _plcc_logistic(x: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    """(PLCC after logistic mapping, whether the fit was performed and converged)."""
    if x.size <= _N_LOGISTIC_PARAMS or _correlation_undefined(x, y):
        return math.nan, False
    try:
        params = fit_logistic4(x, y)
    except LogisticFitError:
        return math.nan, False
    return plcc(logistic4(x, *params), y), True


def plcc_logistic(pred, label) -> float:
    """Pearson correlation between logistic-mapped predictions and labels.

    NaN when the correlation is undefined, when there are too few points for
    the fit, or when the fit fails; the raw PLCC is never substituted.
    """
    x, y = _pair(pred, label)
    return _plcc_logistic(x, y)[0]


def rmse(pred, label) -> float:
    """Root mean square error of the raw predictions; NaN for empty input."""
    x, y = _pair(pred, label)
    if x.size == 0:
        return math.nan
    return float(np.sqrt(np.mean((x - y) ** 2)))


@dataclass(frozen=True)
class Evaluation:
    """Metrics over the rows with a usable prediction, plus row accounting."""

    n_total: int  # rows given
    n_evaluated: int  # rows with a finite prediction and a finite label
    n_failed: int  # rows whose prediction is missing/NaN/inf (parse failure upstream)
    srcc: float
    krcc: float
    plcc: float
    plcc_logistic: float
    rmse: float
    logistic_converged: bool  # False when the fit failed or was not possible

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(pred: Sequence[float | None], label: Sequence[float]) -> Evaluation:
    """Score predictions against labels, counting unparsed (None/NaN) predictions.

    Failed rows are excluded from every metric and reported in `n_failed`.
    A missing label is an error, as is a length mismatch.
    """
    p = _as_1d(pred, "pred")  # None becomes NaN
    y = _as_1d(label, "label")
    _check_lengths(p, y)
    bad_labels = np.flatnonzero(~np.isfinite(y))
    if bad_labels.size:
        raise ValueError(
            f"label is missing or non-finite at row index {bad_labels[:10].tolist()}"
        )
    ok = np.isfinite(p)
    x, y = p[ok], y[ok]
    plcc_log, converged = _plcc_logistic(x, y)
    return Evaluation(
        n_total=int(p.size),
        n_evaluated=int(x.size),
        n_failed=int(p.size - x.size),
        srcc=srcc(x, y),
        krcc=krcc(x, y),
        plcc=plcc(x, y),
        plcc_logistic=plcc_log,
        rmse=rmse(x, y),
        logistic_converged=converged,
    )


@dataclass(frozen=True)
class Classification:
    """Agreement of categorical predictions (e.g. an attribute's level) with labels.

    A failed prediction (None) counts as wrong in ``accuracy`` and ``macro_f1`` (the model did
    not answer) and is also reported in ``n_failed``; it is never dropped.
    """

    n_total: int
    n_failed: int
    accuracy: float
    macro_f1: float  # unweighted mean of per-class F1 over the classes present in the labels

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def classification(pred: Sequence[object | None], label: Sequence[object]) -> Classification:
    """Accuracy and macro-F1; values compare as case-insensitive text."""
    if len(pred) != len(label):
        raise ValueError(f"pred and label lengths differ: {len(pred)} predictions vs {len(label)} labels")
    missing = [i for i, y in enumerate(label) if y is None]
    if missing:
        raise ValueError(f"label is missing at row index {missing[:10]}")
    norm = lambda v: None if v is None else str(v).strip().lower()  # noqa: E731
    p = [norm(v) for v in pred]
    y = [norm(v) for v in label]
    if not y:
        return Classification(0, 0, math.nan, math.nan)
    correct = sum(a == b for a, b in zip(p, y))
    scores = []
    for cls in sorted(set(y)):
        tp = sum(a == cls and b == cls for a, b in zip(p, y))
        fp = sum(a == cls and b != cls for a, b in zip(p, y))
        fn = sum(a != cls and b == cls for a, b in zip(p, y))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return Classification(len(y), sum(v is None for v in p), correct / len(y), float(np.mean(scores)))
