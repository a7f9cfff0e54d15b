"""iic_survey.core.metrics against scikit-learn / scipy, on random and degenerate inputs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax as sp_log_softmax
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve
from sklearn.exceptions import UndefinedMetricWarning

from iic_survey.core import metrics
from iic_survey.core.constants import CLASSES

K = 3


def random_case(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, logits correlated with them, and their softmax."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    logits = rng.normal(0, 1.5, (n, K))
    logits[np.arange(n), y] += rng.normal(1.5, 1.0, n)
    logits = np.round(logits, 1)  # ties in scores exercise the ROC tie handling
    return y, logits, metrics.softmax(logits)


# Degenerate label / prediction pairs: (y_true, y_pred)
EDGE_CASES = {
    "class never predicted": ([0, 1, 2, 0, 1, 2], [0, 1, 0, 0, 1, 1]),
    "class absent": ([0, 0, 1, 1, 0, 1], [0, 2, 1, 1, 0, 0]),
    "single class present": ([1, 1, 1, 1], [1, 0, 1, 2]),
    "single class, all right": ([2, 2, 2], [2, 2, 2]),
    "one sample": ([0], [1]),
}


def sklearn_ovr(y: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {m: [] for m in metrics.METRIC_NAMES}
    for k in range(K):
        t, p = np.asarray(y) == k, np.asarray(pred) == k
        out["precision"].append(skm.precision_score(t, p, zero_division=0))
        out["recall"].append(skm.recall_score(t, p, zero_division=0))
        out["specificity"].append(skm.recall_score(~t, ~p, zero_division=0))
        out["f1"].append(skm.f1_score(t, p, zero_division=0))
        out["accuracy"].append(skm.accuracy_score(t, p))
    return {m: np.array(v) for m, v in out.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_vs_rest_matches_sklearn_random(seed: int) -> None:
    y, _, proba = random_case(seed)
    pred = proba.argmax(axis=1)
    ours = metrics.one_vs_rest(y, pred, K)
    ref = sklearn_ovr(y, pred)
    for m in metrics.METRIC_NAMES:
        np.testing.assert_allclose(ours[m], ref[m], err_msg=m)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y, pred, K), skm.confusion_matrix(y, pred, labels=range(K))
    )


@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_one_vs_rest_matches_sklearn_edge_cases(case: str) -> None:
    y, pred = (np.array(a) for a in EDGE_CASES[case])
    ours = metrics.one_vs_rest(y, pred, K)
    ref = sklearn_ovr(y, pred)
    for m in metrics.METRIC_NAMES:
        np.testing.assert_allclose(ours[m], ref[m], err_msg=f"{case}: {m}")
        assert np.all(np.isfinite(ours[m]))
    np.testing.assert_array_equal(
        metrics.confusion_matrix(y, pred, K), skm.confusion_matrix(y, pred, labels=range(K))
    )


def test_never_predicted_class_has_zero_precision() -> None:
    y, pred = (np.array(a) for a in EDGE_CASES["class never predicted"])
    ours = metrics.one_vs_rest(y, pred, K)
    assert ours["precision"][2] == 0.0 and ours["recall"][2] == 0.0 and ours["f1"][2] == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_and_auc_match_sklearn(seed: int) -> None:
    y, _, proba = random_case(seed)
    for k in range(K):
        fpr, tpr, thr = metrics.roc_curve(y == k, proba[:, k])
        rf, rt, rthr = skm.roc_curve(y == k, proba[:, k], drop_intermediate=False)
        np.testing.assert_allclose(fpr, rf)
        np.testing.assert_allclose(tpr, rt)
        np.testing.assert_allclose(thr, rthr)
        assert metrics.roc_auc(y == k, proba[:, k]) == pytest.approx(
            skm.roc_auc_score(y == k, proba[:, k]), abs=1e-12
        )
    per_class, macro = metrics.roc_auc_ovr(y, proba)
    assert macro == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"), abs=1e-12)
    assert per_class.shape == (K,)


def test_auc_undefined_cases_are_nan_like_sklearn() -> None:
    proba = metrics.softmax(np.random.default_rng(0).normal(size=(4, K)))
    y = np.array([1, 1, 1, 1])  # classes 0 and 2 absent; class 1 is the only one present
    per_class, macro = metrics.roc_auc_ovr(y, proba)
    assert np.all(np.isnan(per_class)) and np.isnan(macro)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        assert np.isnan(skm.roc_auc_score(y == 0, proba[:, 0]))
        rf, _, _ = skm.roc_curve(y == 1, proba[:, 1], drop_intermediate=False)
    fpr, tpr, _ = metrics.roc_curve(y == 1, proba[:, 1])
    assert np.all(np.isnan(fpr)) == np.all(np.isnan(rf)) and np.all(np.isfinite(tpr))
    # Two classes present: the absent one is NaN, the macro mean skips it.
    y2 = np.array([0, 1, 0, 1])
    per_class, macro = metrics.roc_auc_ovr(y2, proba)
    assert np.isnan(per_class[2]) and np.isfinite(per_class[:2]).all()
    assert macro == pytest.approx(np.mean(per_class[:2]))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_bins", [5, 15])
def test_reliability_and_ece_match_calibration_curve(seed: int, n_bins: int) -> None:
    y, _, proba = random_case(seed)
    conf, correct = proba.max(axis=1), (proba.argmax(axis=1) == y)
    prob_true, prob_pred = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    bins = metrics.reliability_bins(y, proba, n_bins)
    filled = bins["count"] > 0
    np.testing.assert_allclose(bins["accuracy"][filled], prob_true)
    np.testing.assert_allclose(bins["confidence"][filled], prob_pred)
    assert bins["count"].sum() == y.size
    ids = np.searchsorted(np.linspace(0, 1, n_bins + 1)[1:-1], conf)
    weights = np.bincount(ids, minlength=n_bins)[filled] / y.size
    expected = np.sum(weights * np.abs(prob_true - prob_pred))
    assert metrics.expected_calibration_error(y, proba, n_bins) == pytest.approx(expected)


def test_ece_extremes() -> None:
    y = np.array([0, 1, 2, 0])
    perfect = np.eye(K)[y]
    assert metrics.expected_calibration_error(y, perfect) == 0.0
    wrong = np.eye(K)[(y + 1) % K]
    assert metrics.expected_calibration_error(y, wrong) == pytest.approx(1.0)


def test_softmax_nll_entropy_energy() -> None:
    _, logits, _ = random_case(3, n=50)
    for t in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(
            metrics.log_softmax(logits, t), sp_log_softmax(logits / t, axis=1)
        )
    np.testing.assert_allclose(metrics.softmax(logits).sum(axis=1), 1.0)
    y = logits.argmax(axis=1)
    assert metrics.nll(logits, y) == pytest.approx(
        skm.log_loss(y, metrics.softmax(logits), labels=range(K))
    )
    p = metrics.softmax(logits)
    np.testing.assert_allclose(metrics.entropy(p), -(p * np.log(p)).sum(axis=1))
    uniform = np.full((2, K), 1.0 / K)
    np.testing.assert_allclose(metrics.entropy(uniform, normalize=True), 1.0)
    assert metrics.entropy(np.eye(K)).max() == pytest.approx(0.0, abs=1e-12)
    energy = metrics.energy_score(logits, temperature=2.0)
    ref = -2.0 * np.log(np.exp(logits / 2.0).sum(axis=1))
    np.testing.assert_allclose(energy, ref)


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_fit_temperature_matches_scipy(true_t: float) -> None:
    rng = np.random.default_rng(7)
    n = 2000
    logits = rng.normal(0, 2.0, (n, K))
    # Labels drawn from softmax(logits / true_t): the fitted T should recover true_t.
    p = metrics.softmax(logits, true_t)
    y = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    t = metrics.fit_temperature(logits, y)
    ref = minimize_scalar(
        lambda tt: metrics.nll(logits, y, tt),
        bounds=(0.05, 20.0),
        method="bounded",
        options={"xatol": 1e-8},
    ).x
    assert t == pytest.approx(ref, rel=1e-4)
    assert t == pytest.approx(true_t, rel=0.15)
    assert metrics.nll(logits, y, t) <= metrics.nll(logits, y, 1.0) + 1e-12


def test_fit_temperature_at_bound_and_errors() -> None:
    logits = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    y = np.array([0, 1])  # perfectly separable: sharper is always better -> the lower bound
    assert metrics.fit_temperature(logits, y, bounds=(0.1, 10.0)) == pytest.approx(0.1, rel=1e-5)
    with pytest.raises(ValueError, match="NaN"):
        metrics.fit_temperature(np.array([[np.nan, 0.0, 0.0]]), np.array([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.fit_temperature(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match="bounds"):
        metrics.fit_temperature(logits, y, bounds=(2.0, 1.0))


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        metrics.confusion_matrix([], [], K)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.confusion_matrix([0, 1], [0], K)
    with pytest.raises(ValueError, match="integer"):
        metrics.one_vs_rest([0.5, 1.0], [0, 1], K)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        metrics.roc_auc_ovr([0, 1], np.array([0.2, 0.8]))
    with pytest.raises(ValueError, match="class names"):
        metrics.classification_report([0], np.array([[0.5, 0.5]]), CLASSES)


def test_classification_report_and_markdown() -> None:
    y, _, proba = random_case(4, n=120)
    report = metrics.classification_report(y, proba, CLASSES)
    json.dumps(report)  # plain data
    assert report["n"] == 120 and report["classes"] == list(CLASSES)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, proba.argmax(axis=1)))
    assert report["macro"]["auc"] == pytest.approx(skm.roc_auc_score(y, proba, multi_class="ovr"))
    assert report["per_class"]["quasar"]["f1"] == pytest.approx(
        skm.f1_score(y, proba.argmax(axis=1), labels=[1], average=None)[0]
    )
    assert report["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=range(K)))
    assert len(report["roc"]["star"]["fpr"]) == len(report["roc"]["star"]["tpr"])
    text = metrics.report_markdown(report)
    assert "| galaxy |" in text and "| macro avg |" in text and "Specificity" in text
    assert text.count("\n|") >= 4 + 3  # table 2 rows + confusion rows


def test_report_with_absent_class_prints_na() -> None:
    y = np.array([0, 0, 1, 1])
    proba = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1]])
    report = metrics.classification_report(y, proba, CLASSES)
    assert np.isnan(report["per_class"]["star"]["auc"])
    assert report["per_class"]["star"]["precision"] == 0.0
    assert "n/a" in metrics.report_markdown(report)


def test_metrics_does_not_import_torch() -> None:
    code = "import sys, iic_survey.core.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
