import math
import warnings

import numpy as np
import pytest
from scipy import stats
from scipy.optimize import OptimizeWarning

from realqa import metrics
from realqa.metrics import (
    Evaluation,
    LogisticFitError,
    evaluate,
    fit_logistic4,
    krcc,
    logistic4,
    plcc,
    plcc_logistic,
    rmse,
    srcc,
)

TRUE_PARAMS = (5.0, 1.0, 4.0, 1.5)


@pytest.fixture
def logistic_data():
    x = np.linspace(0.0, 10.0, 200)
    return x, logistic4(x, *TRUE_PARAMS)


@pytest.fixture
def random_data():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 10, 100)
    y = 2 * x + rng.normal(0, 3, 100)
    return x, y


# --- hand-computed examples -------------------------------------------------

# pred [1,2,3,4], label [1,3,2,4]
#   Spearman: rank differences d = [0,1,1,0], sum d^2 = 2,
#             rho = 1 - 6*2 / (4*(16-1)) = 1 - 12/60 = 0.8
#   Kendall: 6 pairs, only (2,3) discordant -> (5 - 1) / 6 = 2/3
#   Pearson: deviations x = [-1.5,-.5,.5,1.5], y = [-1.5,.5,-.5,1.5];
#            sum xy = 2.25 - .25 - .25 + 2.25 = 4, sum x^2 = sum y^2 = 5 -> 0.8
HAND_PRED = [1, 2, 3, 4]
HAND_LABEL = [1, 3, 2, 4]


def test_srcc_hand():
    assert srcc(HAND_PRED, HAND_LABEL) == pytest.approx(0.8)


def test_krcc_hand():
    assert krcc(HAND_PRED, HAND_LABEL) == pytest.approx(2 / 3)


def test_plcc_hand():
    assert plcc(HAND_PRED, HAND_LABEL) == pytest.approx(0.8)


def test_rmse_hand():
    # errors 1, 0, 2 -> mean square 5/3
    assert rmse([1, 2, 3], [2, 2, 5]) == pytest.approx(math.sqrt(5 / 3))


def test_krcc_ties_is_tau_b():
    # pred [1,2,2,3], label [1,2,3,4]: 5 concordant, 0 discordant, 1 pair tied
    # in pred only, of 6 pairs.  tau-b = 5 / sqrt((6-1)*(6-0)) = 5/sqrt(30);
    # tau-a would be 5/6.
    value = krcc([1, 2, 2, 3], [1, 2, 3, 4])
    assert value == pytest.approx(5 / math.sqrt(30))
    assert value != pytest.approx(5 / 6)


def test_srcc_ties_use_average_ranks():
    # pred ranks [1, 2.5, 2.5, 4] vs label ranks [1, 2, 3, 4]: Pearson of ranks
    x, y = [1, 2, 2, 3], [1, 2, 3, 4]
    expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
    assert srcc(x, y) == pytest.approx(expected)


# --- agreement with scipy ------------------------------------------------------


def test_matches_scipy(random_data):
    x, y = random_data
    assert srcc(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert krcc(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)
    assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)
    assert rmse(x, y) == pytest.approx(np.sqrt(np.mean((x - y) ** 2)))


def test_returns_plain_floats(random_data):
    x, y = random_data
    for fn in (srcc, krcc, plcc, plcc_logistic, rmse):
        assert type(fn(x, y)) is float, fn.__name__
    result = evaluate(list(x), list(y))
    for name in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse"):
        assert type(getattr(result, name)) is float, name
    for name in ("n_total", "n_evaluated", "n_failed"):
        assert type(getattr(result, name)) is int, name
    assert type(result.logistic_converged) is bool


# --- monotone / reversed ----------------------------------------------------------


def test_monotone_nonlinear(logistic_data):
    x, y = logistic_data
    assert srcc(x, y) == pytest.approx(1.0)
    assert krcc(x, y) == pytest.approx(1.0)
    assert plcc(x, y) < 0.99
    assert plcc_logistic(x, y) == pytest.approx(1.0, abs=1e-6)
    assert plcc_logistic(x, y) > plcc(x, y)


def test_reversed_order(logistic_data):
    x, y = logistic_data
    assert srcc(x, -y) == pytest.approx(-1.0)
    assert krcc(x, -y) == pytest.approx(-1.0)
    assert srcc(x, y[::-1]) == pytest.approx(-1.0)
    assert plcc([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


# --- logistic ------------------------------------------------------------------


def test_logistic4_shape():
    b1, b2, b3, b4 = TRUE_PARAMS
    assert logistic4(b3, *TRUE_PARAMS) == pytest.approx((b1 + b2) / 2)
    assert logistic4(1e6, *TRUE_PARAMS) == pytest.approx(b1)
    assert logistic4(-1e6, *TRUE_PARAMS) == pytest.approx(b2)
    # only |beta4| matters
    x = np.linspace(0, 10, 11)
    np.testing.assert_allclose(logistic4(x, b1, b2, b3, -b4), logistic4(x, *TRUE_PARAMS))


def test_fit_recovers_params_with_noise(logistic_data):
    x, y = logistic_data
    y_noisy = y + np.random.default_rng(1).normal(0, 0.02, y.size)
    params = fit_logistic4(x, y_noisy)
    np.testing.assert_allclose(params, TRUE_PARAMS, rtol=0.05)
    assert plcc_logistic(x, y_noisy) > 0.999


def test_fit_recovers_decreasing_relation(logistic_data):
    x, _ = logistic_data
    true = (1.0, 5.0, 4.0, 1.5)  # beta1 < beta2: decreasing
    params = fit_logistic4(x, logistic4(x, *true))
    np.testing.assert_allclose(params, true, rtol=1e-3)


def test_fit_is_scale_invariant_in_pred(logistic_data):
    # MOS-like labels against predictions on a 0..100 scale
    x, y = logistic_data
    params = fit_logistic4(10 * x, y)
    np.testing.assert_allclose(params, (5.0, 1.0, 40.0, 15.0), rtol=1e-3)


def test_fit_needs_more_points_than_params():
    with pytest.raises(ValueError, match="more than 4 points"):
        fit_logistic4([1, 2, 3, 4], [1, 2, 3, 4])
    assert math.isnan(plcc_logistic([1, 2, 3, 4], [1, 2, 3, 4]))


@pytest.mark.parametrize("failure", ["runtime", "optimize_warning"])
def test_fit_failure_gives_nan_not_raw_plcc(monkeypatch, random_data, failure):
    def failing_curve_fit(*args, **kwargs):
        if failure == "runtime":
            raise RuntimeError("Optimal parameters not found")
        warnings.warn("Covariance of the parameters could not be estimated", OptimizeWarning)
        return np.array(TRUE_PARAMS), np.full((4, 4), np.inf)

    monkeypatch.setattr(metrics, "curve_fit", failing_curve_fit)
    x, y = random_data
    with pytest.raises(LogisticFitError):
        fit_logistic4(x, y)
    assert math.isnan(plcc_logistic(x, y))

    result = evaluate(x, y)
    assert result.logistic_converged is False
    assert math.isnan(result.plcc_logistic)
    assert result.plcc == pytest.approx(plcc(x, y))  # other metrics unaffected


def test_fit_converged_flag(random_data):
    x, y = random_data
    assert evaluate(x, y).logistic_converged is True


# --- evaluate: failures, validation ---------------------------------------------


def test_evaluate_counts_failed_predictions(random_data):
    x, y = random_data
    pred = list(x)
    pred[3] = None
    pred[10] = float("nan")
    pred[20] = np.nan
    result = evaluate(pred, y)

    keep = np.ones(len(x), dtype=bool)
    keep[[3, 10, 20]] = False
    assert (result.n_total, result.n_evaluated, result.n_failed) == (100, 97, 3)
    assert result.srcc == pytest.approx(srcc(x[keep], y[keep]))
    assert result.krcc == pytest.approx(krcc(x[keep], y[keep]))
    assert result.plcc == pytest.approx(plcc(x[keep], y[keep]))
    assert result.plcc_logistic == pytest.approx(plcc_logistic(x[keep], y[keep]))
    assert result.rmse == pytest.approx(rmse(x[keep], y[keep]))


def test_evaluate_hand_example():
    result = evaluate([1, None, 2, 3, float("nan"), 4], [9, 9, 3, 2, 9, 4])
    # scored rows are pred [1,2,3,4] vs label [9,3,2,4]: not the hand example,
    # so compare against the low-level functions on the kept rows
    assert result.n_failed == 2 and result.n_evaluated == 4
    assert result.srcc == pytest.approx(srcc([1, 2, 3, 4], [9, 3, 2, 4]))
    assert math.isnan(result.plcc_logistic)  # 4 rows: too few for the fit
    assert result.logistic_converged is False


def test_evaluate_all_failed():
    result = evaluate([None, float("nan")], [1.0, 2.0])
    assert (result.n_total, result.n_evaluated, result.n_failed) == (2, 0, 2)
    for name in ("srcc", "krcc", "plcc", "plcc_logistic", "rmse"):
        assert math.isnan(getattr(result, name)), name
    assert result.logistic_converged is False


def test_evaluate_rejects_nan_label_with_index():
    with pytest.raises(ValueError, match=r"row index \[2\]"):
        evaluate([1, 2, 3, 4], [1, 2, float("nan"), 4])
    with pytest.raises(ValueError, match=r"row index \[0\]"):
        evaluate([1, 2], [None, 2])


def test_length_mismatch():
    with pytest.raises(ValueError, match=r"3 predictions vs 2 labels"):
        evaluate([1, 2, 3], [1, 2])
    for fn in (srcc, krcc, plcc, plcc_logistic, rmse, fit_logistic4):
        with pytest.raises(ValueError, match=r"3 predictions vs 2 labels"):
            fn([1, 2, 3], [1, 2])


def test_low_level_rejects_non_finite():
    with pytest.raises(ValueError, match=r"pred has non-finite values at rows \[1\]"):
        srcc([1, float("nan"), 3], [1, 2, 3])
    with pytest.raises(ValueError, match=r"label has non-finite values at rows \[2\]"):
        rmse([1, 2, 3], [1, 2, float("inf")])


def test_rejects_non_1d():
    with pytest.raises(ValueError, match="1-D"):
        plcc([[1, 2], [3, 4]], [[1, 2], [3, 4]])


# --- undefined correlations --------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "label"),
    [
        ([2, 2, 2, 2, 2, 2], [1, 2, 3, 4, 5, 6]),  # constant prediction
        ([1, 2, 3, 4, 5, 6], [3, 3, 3, 3, 3, 3]),  # constant label
        ([1], [2]),  # single row
        ([], []),  # no rows
    ],
)
def test_undefined_correlation_is_nan_without_warning(pred, label):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fn in (srcc, krcc, plcc, plcc_logistic):
            assert math.isnan(fn(pred, label)), fn.__name__
        result = evaluate(pred, label)
    for name in ("srcc", "krcc", "plcc", "plcc_logistic"):
        assert math.isnan(getattr(result, name)), name
    assert result.logistic_converged is False
    assert result.n_evaluated == len(pred)


def test_rmse_defined_for_constant_input():
    assert rmse([2, 2, 2], [1, 2, 3]) == pytest.approx(math.sqrt(2 / 3))
    assert math.isnan(rmse([], []))


def test_two_rows_defined():
    assert srcc([1, 2], [3, 5]) == pytest.approx(1.0)
    assert krcc([1, 2], [5, 3]) == pytest.approx(-1.0)
    assert plcc([1, 2], [3, 5]) == pytest.approx(1.0)


# --- Evaluation --------------------------------------------------------------------


def test_as_dict_and_frozen(random_data):
    x, y = random_data
    result = evaluate(x, y)
    d = result.as_dict()
    assert set(d) == {
        "n_total",
        "n_evaluated",
        "n_failed",
        "srcc",
        "krcc",
        "plcc",
        "plcc_logistic",
        "rmse",
        "logistic_converged",
    }
    assert d["srcc"] == result.srcc
    assert Evaluation(**d) == result
    with pytest.raises(AttributeError):
        result.srcc = 0.0  # type: ignore[misc]
