"""What the report counts: a tally over the pixel files, and metrics against a truth table.

:class:`Tally` accumulates, one pixel file at a time (flat memory at any sky size), the sources
per map pixel and class, outliers, confidence histograms, quality flags and a deterministic
sample of example rows (the smallest :func:`iic_survey.core.hashing.keyed_hash` of ``cntr``).
:func:`truth_metrics` and :func:`binned_completeness_purity` score the rows that have a true
class (:func:`load_truth`); :func:`galactic_latitude` bins them by latitude.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core import healpix, metrics
from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import QualityFlag
from iic_survey.core.hashing import keyed_hash
from iic_survey.report.config import ReportConfig
from iic_survey.report.zoom import FineTally


class Tally:
    """Everything the report needs, accumulated pixel file by pixel file (:meth:`add`)."""

    def __init__(self, config: ReportConfig, truth: pd.Series | None) -> None:
        self.config, self.truth = config, truth
        self.npix = healpix.npix(config.map_order)
        self.rows = 0
        self.counts = np.zeros(self.npix, np.int64)  # sources per map pixel
        self.per_class = np.zeros((len(CLASSES), self.npix), np.int64)
        self.outliers = np.zeros(self.npix, np.int64)
        self.conf_hist = np.zeros((len(CLASSES), config.confidence_bins), np.int64)
        self.flag_counts = dict.fromkeys((str(f.name) for f in QualityFlag), 0)
        self.models: set[str] = set()
        self.examples: dict[str, pd.DataFrame] = {}  # category -> rows with the smallest keys
        self.matched: list[pd.DataFrame] = []  # rows with a true class
        self.fine = FineTally()  # sparse counts at the zoom order (small-area catalogs)

    def add(self, df: pd.DataFrame) -> None:
        cfg = self.config
        self.rows += len(df)
        mpix = df["_healpix_29"].to_numpy() >> (2 * (healpix.MAX_ORDER - cfg.map_order))
        self.counts += np.bincount(mpix, minlength=self.npix)
        self.fine.add(df)
        self.outliers += np.bincount(
            mpix, weights=df["is_outlier"].to_numpy(), minlength=self.npix
        ).astype(np.int64)
        edges = np.linspace(1 / 3, 1, cfg.confidence_bins + 1)
        for i, c in enumerate(CLASSES):
            sel = (df["class"] == c).to_numpy()
            self.per_class[i] += np.bincount(mpix[sel], minlength=self.npix)
            conf = np.clip(df["confidence"].to_numpy(dtype=float, na_value=np.nan)[sel], 1 / 3, 1)
            self.conf_hist[i] += np.histogram(conf, bins=edges)[0]
        flags = df["quality_flags"].to_numpy()
        for f in QualityFlag:
            self.flag_counts[str(f.name)] += int(np.count_nonzero(flags & int(f)))
        self.models.update(df["model_version"].dropna().unique().tolist())
        key = pd.Series(keyed_hash(df["cntr"].to_numpy(), cfg.seed), index=df.index)
        confident = df["confidence"] >= cfg.example_min_confidence
        picks = {c: (df["class"] == c) & confident for c in CLASSES}
        picks["outlier"] = df["is_outlier"] & df["class"].notna()
        for name, sel in picks.items():
            cand = df[sel.fillna(False).to_numpy()].assign(_key=key[sel.fillna(False)])
            both = pd.concat([x for x in (self.examples.get(name), cand) if x is not None])
            self.examples[name] = both.nsmallest(cfg.n_examples, "_key")
        if self.truth is not None:
            hit = df[df["cntr"].isin(self.truth.index)]
            self.matched.append(hit.assign(true_class=self.truth.loc[hit["cntr"]].to_numpy()))


# ---------------------------------------------------------------- metrics on matched rows


def truth_metrics(matched: pd.DataFrame) -> dict[str, Any]:
    """Confusion matrix, per-class precision / recall / F1 / AUC and accuracy.

    ``matched`` has ``true_class``, ``class`` (null when unclassifiable) and the probabilities.
    Unclassifiable rows are a fourth predicted label: they count as misses in recall
    (completeness) and never as positives in precision (purity). ROC curves use classified rows.
    """
    labels = [*CLASSES, "unclassified"]
    true = matched["true_class"].astype(str).map(labels.index).to_numpy()
    pred = matched["class"].astype(object).fillna("unclassified").map(labels.index).to_numpy()
    confusion = metrics.confusion_matrix(true, pred, len(labels))[: len(CLASSES)]
    ovr = metrics.one_vs_rest(true, pred, len(labels))
    ok = pred < len(CLASSES)
    per_class = {}
    for i, c in enumerate(CLASSES):
        score = matched.loc[ok, f"p_{c}"].to_numpy(dtype=float)
        fpr, tpr, _ = metrics.roc_curve(true[ok] == i, score) if ok.any() else ([], [], None)
        per_class[c] = {
            "precision": float(ovr["precision"][i]),
            "recall": float(ovr["recall"][i]),
            "f1": float(ovr["f1"][i]),
            "auc": metrics.roc_auc(true[ok] == i, score) if ok.any() else float("nan"),
            "n_true": int(ovr["support"][i]),
            "fpr": np.asarray(fpr),
            "tpr": np.asarray(tpr),
        }
    return {
        "confusion": confusion,
        "columns": labels,
        "per_class": per_class,
        "accuracy": float(np.trace(confusion) / max(confusion.sum(), 1)),
        "n_matched": len(matched),
        "n_unclassified": int((~ok).sum()),
    }


def binned_completeness_purity(
    matched: pd.DataFrame, values: np.ndarray, edges: Sequence[float], min_n: int
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per class: (bin centres, completeness, purity) of rows binned by ``values``."""
    true = matched["true_class"].astype(str).to_numpy()
    pred = matched["class"].astype(object).fillna("unclassified").astype(str).to_numpy()
    e = np.asarray(edges, dtype=float)
    b = np.digitize(values, e) - 1
    out = {}
    for c in CLASSES:
        comp, pur = np.full(len(e) - 1, np.nan), np.full(len(e) - 1, np.nan)
        for k in range(len(e) - 1):
            t, p = (true == c) & (b == k), (pred == c) & (b == k)
            if t.sum() >= min_n:
                comp[k] = np.sum(t & p) / t.sum()
            if p.sum() >= min_n:
                pur[k] = np.sum(t & p) / p.sum()
        out[c] = (0.5 * (e[1:] + e[:-1]), comp, pur)
    return out


def galactic_latitude(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Galactic latitude (deg) of ICRS positions."""
    from astropy.coordinates import SkyCoord

    return np.asarray(SkyCoord(ra, dec, unit="deg", frame="icrs").galactic.b.deg)


# ---------------------------------------------------------------- the report


def load_truth(truth: str | pd.DataFrame) -> pd.Series:
    """A truth table (path to Parquet/CSV, or a frame with cntr and class) as class by cntr."""
    df = (
        truth
        if isinstance(truth, pd.DataFrame)
        else (pd.read_csv(truth) if str(truth).endswith(".csv") else pd.read_parquet(truth))
    )
    if not {"cntr", "class"} <= set(df.columns):
        raise ValueError(f"a truth table needs columns cntr and class, got {list(df.columns)}")
    bad = set(df["class"].astype(str)) - set(CLASSES)
    if bad:
        raise ValueError(f"truth classes must be in {CLASSES}, found {sorted(bad)}")
    if df["cntr"].duplicated().any():
        raise ValueError("the truth table repeats cntr values")
    return pd.Series(df["class"].astype(str).to_numpy(), index=df["cntr"].to_numpy())
