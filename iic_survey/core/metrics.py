"""Classification metrics and calibration, as pure numpy functions (no torch).

Labels are integer class indices ``0 .. K-1`` (``CLASSES`` order); probabilities and logits are
``(N, K)`` arrays. Per-class metrics are one-vs-rest, as in Table 2 of Zhao et al. (2023).

Undefined cases follow scikit-learn with ``zero_division=0``, and are tested against it:

* precision of a class never predicted, recall of a class absent from ``y_true``, specificity
  when every sample belongs to the class, and F1 when precision + recall = 0 are all **0**;
* ROC AUC of a class that is absent (or the only one present) is **NaN**, its ROC curve has NaN
  rates on the undefined axis; the macro AUC averages the classes where it is defined, and is NaN
  only if none is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
METRIC_NAMES: tuple[str, ...] = ("precision", "recall", "specificity", "f1", "accuracy")
"""The one-vs-rest metrics of :func:`one_vs_rest`, in Table-2 column order."""


def _labels(y_true: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError("labels must be integer class indices")
        y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got [{y.min()}, {y.max()}]")
    return y.astype(np.int64)


def _matrix(a: ArrayLike, name: str) -> FloatArray:
    x = np.asarray(a, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"{name} must be (N, K) with N >= 1 and K >= 2, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _div(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den, 0 where den == 0 (scikit-learn's zero_division=0)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


# ---------------------------------------------------------------------------------------------
# Probabilities, temperature, uncertainty


def log_softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Log-probabilities ``log softmax(logits / T)`` along the last axis, computed stably."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Probabilities ``softmax(logits / T)``; rows sum to 1."""
    return np.exp(log_softmax(logits, temperature))


def nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under ``softmax(logits / T)``."""
    z = _matrix(logits, "logits")
    y = _labels(labels, z.shape[1])
    return float(-log_softmax(z, temperature)[np.arange(y.size), y].mean())


def fit_temperature(
    logits: ArrayLike,
    labels: ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
    tol: float = 1e-7,
) -> float:
    """Temperature T minimising the validation NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    The NLL is convex in the inverse temperature ``1 / T`` (a log-sum-exp of a linear function
    minus a linear term), so a golden-section search over ``1 / T`` within ``bounds`` finds the
    global minimum; a result at a bound means the optimum lies at or beyond it.
    """
    z = _matrix(logits, "logits")
    y = _labels(labels, z.shape[1])
    lo, hi = bounds
    if not 0 < lo < hi:
        raise ValueError(f"bounds must satisfy 0 < low < high, got {bounds}")
    z_true = z[np.arange(y.size), y]

    def loss(beta: float) -> float:
        s = beta * z
        m = s.max(axis=1)
        return float(np.mean(m + np.log(np.exp(s - m[:, None]).sum(axis=1)) - beta * z_true))

    a, b = 1.0 / hi, 1.0 / lo
    g = (np.sqrt(5.0) - 1.0) / 2.0
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol * max(1.0, abs(a) + abs(b)):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = loss(d)
    beta = (a + b) / 2.0
    for edge in (1.0 / hi, 1.0 / lo):  # the minimum may sit on a bound
        if loss(edge) < loss(beta):
            beta = edge
    return float(1.0 / beta)


def entropy(proba: ArrayLike, normalize: bool = False) -> FloatArray:
    """Shannon entropy (nats) of each row; with ``normalize`` divided by log K, so in [0, 1]."""
    p = _matrix(proba, "proba")
    h = -np.sum(p * np.log(np.clip(p, 1e-300, None)), axis=1)
    return h / np.log(p.shape[1]) if normalize else h


def energy_score(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Free energy ``-T logsumexp(logits / T)`` per row (Liu et al. 2020).

    Lower (more negative) for inputs like the training data; higher energy flags
    out-of-distribution sources.
    """
    z = _matrix(logits, "logits") / temperature
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


# ---------------------------------------------------------------------------------------------
# Confusion and one-vs-rest metrics


def confusion_matrix(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> NDArray[np.int64]:
    """Counts ``C[i, j]`` of true class i predicted as j (scikit-learn's orientation)."""
    t, p = _labels(y_true, n_classes), _labels(y_pred, n_classes)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.size} vs {p.size}")
    return np.bincount(t * n_classes + p, minlength=n_classes**2).reshape(n_classes, n_classes)


def one_vs_rest(y_true: ArrayLike, y_pred: ArrayLike, n_classes: int) -> dict[str, FloatArray]:
    """Per-class precision, recall, specificity, F1 and accuracy, each an array of length K.

    Class k is the positive class against all others. Also returns ``support`` (true members)
    and ``tp``, ``fp``, ``fn``, ``tn``. Undefined ratios are 0 (see the module docstring).
    """
    cm = confusion_matrix(y_true, y_pred, n_classes).astype(np.float64)
    n = cm.sum()
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    tn = n - tp - fp - fn
    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "specificity": _div(tn, tn + fp),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "accuracy": (tp + tn) / n,
        "support": tp + fn,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


# ---------------------------------------------------------------------------------------------
# ROC


def roc_curve(y_binary: ArrayLike, score: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC points ``(fpr, tpr, thresholds)`` at every distinct score, starting at (0, 0).

    Identical to ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: thresholds
    decrease from ``inf``; a rate whose denominator is 0 (no negatives / no positives) is NaN.
    """
    y = np.asarray(y_binary).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or y.shape != s.shape or y.size == 0:
        raise ValueError(
            f"y_binary and score must be equal-length 1-D arrays, got {y.shape}, {s.shape}"
        )
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(y_binary: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve (trapezoidal, ties count half); NaN if only one class is present."""
    fpr, tpr, _ = roc_curve(y_binary, score)
    if np.isnan(fpr[-1]) or np.isnan(tpr[-1]):
        return float("nan")
    return float(np.trapezoid(tpr, fpr))


def roc_auc_ovr(y_true: ArrayLike, proba: ArrayLike) -> tuple[FloatArray, float]:
    """One-vs-rest AUC per class (NaN where undefined) and their macro mean over defined classes."""
    p = _matrix(proba, "proba")
    y = _labels(y_true, p.shape[1])
    if y.size != p.shape[0]:
        raise ValueError(f"{y.size} labels for {p.shape[0]} probability rows")
    per_class = np.array([roc_auc(y == k, p[:, k]) for k in range(p.shape[1])])
    defined = per_class[~np.isnan(per_class)]
    return per_class, float(defined.mean()) if defined.size else float("nan")


# ---------------------------------------------------------------------------------------------
# Calibration


def reliability_bins(
    y_true: ArrayLike, proba: ArrayLike, n_bins: int = 15
) -> dict[str, FloatArray]:
    """Reliability diagram data for the top-class confidence, in ``n_bins`` equal-width bins.

    Bin i holds confidences in ``(edges[i], edges[i+1]]`` (the first also holds 0), the binning
    of ``sklearn.calibration.calibration_curve(strategy="uniform")``. Returns ``edges`` (n+1),
    and per bin ``confidence`` (mean top probability), ``accuracy`` (fraction correct), both NaN
    for an empty bin, and ``count``.
    """
    p = _matrix(proba, "proba")
    y = _labels(y_true, p.shape[1])
    if y.size != p.shape[0]:
        raise ValueError(f"{y.size} labels for {p.shape[0]} probability rows")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf)
    count = np.bincount(ids, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(ids, weights=conf, minlength=n_bins) / count
        accuracy = np.bincount(ids, weights=correct, minlength=n_bins) / count
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count}


def expected_calibration_error(y_true: ArrayLike, proba: ArrayLike, n_bins: int = 15) -> float:
    """ECE: count-weighted mean of |accuracy - confidence| over :func:`reliability_bins`."""
    bins = reliability_bins(y_true, proba, n_bins)
    filled = bins["count"] > 0
    gap = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(bins["count"][filled] * gap) / bins["count"].sum())


# ---------------------------------------------------------------------------------------------
# Report


def classification_report(
    y_true: ArrayLike, proba: ArrayLike, classes: Sequence[str], n_bins: int = 15
) -> dict[str, Any]:
    """All of the above for one evaluation set, as plain (JSON-ready) data.

    Predictions are the arg-max of ``proba``. Keys: ``classes``, ``n``, ``accuracy``,
    ``per_class`` ({class: {precision, recall, specificity, f1, accuracy, auc, support}}),
    ``macro`` (means over classes; AUC over the classes where it is defined), ``confusion``
    (rows true, columns predicted), ``log_loss``, ``ece``, ``reliability`` and ``roc``
    ({class: {fpr, tpr}}). NaN marks undefined values.
    """
    p = _matrix(proba, "proba")
    classes = list(classes)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    y = _labels(y_true, p.shape[1])
    if y.size != p.shape[0]:
        raise ValueError(f"{y.size} labels for {p.shape[0]} probability rows")
    pred = p.argmax(axis=1)
    ovr = one_vs_rest(y, pred, len(classes))
    auc, macro_auc = roc_auc_ovr(y, p)
    per_class: dict[str, dict[str, float]] = {}
    roc: dict[str, dict[str, list[float]]] = {}
    for k, name in enumerate(classes):
        per_class[name] = {m: float(ovr[m][k]) for m in METRIC_NAMES}
        per_class[name]["auc"] = float(auc[k])
        per_class[name]["support"] = int(ovr["support"][k])
        fpr, tpr, _ = roc_curve(y == k, p[:, k])
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
    macro = {m: float(np.mean(ovr[m])) for m in METRIC_NAMES}
    macro["auc"] = macro_auc
    bins = reliability_bins(y, p, n_bins)
    p_true = np.clip(p[np.arange(y.size), y], 1e-15, None)
    return {
        "classes": classes,
        "n": int(y.size),
        "accuracy": float(np.mean(pred == y)),
        "per_class": per_class,
        "macro": macro,
        "confusion": confusion_matrix(y, pred, len(classes)).tolist(),
        "log_loss": float(-np.mean(np.log(p_true))),
        "ece": expected_calibration_error(y, p, n_bins),
        "reliability": {k: v.tolist() for k, v in bins.items()},
        "roc": roc,
    }


def _pct(x: float) -> str:
    return "n/a" if x is None or np.isnan(x) else f"{100 * x:.1f}"


def report_markdown(report: dict[str, Any]) -> str:
    """Markdown for a :func:`classification_report`: the paper's Table 2 (percent), then confusion.

    Rows are classes plus the macro average; columns precision, recall, specificity, F1,
    accuracy (one-vs-rest) and AUC; undefined values print as ``n/a``.
    """
    header = "| Class | Precision | Recall | Specificity | F1-score | Accuracy | AUC | N |"
    lines = [header, "|" + "---|" * 8]
    rows = [
        *report["per_class"].items(),
        ("macro avg", {**report["macro"], "support": report["n"]}),
    ]
    for name, m in rows:
        cells = [_pct(m[k]) for k in (*METRIC_NAMES, "auc")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['support']} |")
    lines += [
        "",
        f"Overall accuracy {_pct(report['accuracy'])} %, log loss {report['log_loss']:.4f}, "
        f"ECE {_pct(report['ece'])} % ({len(report['reliability']['count'])} bins), "
        f"N = {report['n']}.",
        "",
        "| true \\ predicted | " + " | ".join(report["classes"]) + " |",
        "|" + "---|" * (len(report["classes"]) + 1),
    ]
    for name, row in zip(report["classes"], report["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"
