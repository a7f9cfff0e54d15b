"""Selection products from a labelled split: completeness, purity, thresholds, reliability.

A classification catalog is only as useful as the means to select from it (Gaia DR3's QSO and
galaxy candidate tables carry purity per magnitude and sky bin; KiDS labels its sources safe /
extrapolation). Training measures these on the labelled test split, with the model's
calibrated probabilities, over the **clean** rows (:func:`iic_survey.core.flags.clean`):

``completeness_purity.parquet``
    per class, per (W1 bin, |b| bin, ecliptic |beta| bin) and per ``confidence`` threshold of
    :data:`THRESHOLDS`: ``n_true`` (sources of the class), ``n_selected`` (predicted the class
    with ``confidence >= threshold``), ``n_correct``, ``n_from_<class>`` (the selected sources
    by true class), ``completeness = n_correct / n_true``, ``purity = n_correct / n_selected``;
``completeness_purity_w1.parquet``
    the same per W1 bin only, over all positions;
``thresholds.parquet``
    the recommended threshold per class for purity 0.90 / 0.95 / 0.99 (:data:`TARGETS`),
    **chosen on one part of the clean test rows and verified on another** (:func:`verify_part`,
    a keyed hash of ``cntr``: about half the rows each; the verify part is used for nothing
    else, neither calibration nor checkpoint choice, which use the validation split). The
    threshold is the smallest of the grid whose purity's 95 % lower bound
    (:func:`purity_lower_bound`) on the choose part reaches the target with at least
    :data:`MIN_SELECTED` selected sources (columns ``n_selected``, ``n_correct``, ``purity``,
    ``completeness``, ``n_true``: the choose part); then on the verify part: ``verify_n_true``,
    ``verify_n_selected``, ``verify_n_correct``, ``verify_purity``, ``verify_purity_lo95`` (its
    one-sided 95 % Clopper-Pearson lower bound), ``verify_completeness``, and ``held``: the
    promise "purity >= target" holds when ``verify_purity_lo95 >= target_purity``
    (``verdict``: "held", "not held" when even the 95 % upper bound is below the target,
    "not shown" between the two, "no threshold" where none was recommended);
``reliability_w1.parquet``
    per W1 bin and confidence bin: sources, mean confidence, fraction correct (the reliability
    diagrams of the report).

**Purity depends on the class mix.** The labelled split is balanced (equal numbers per class),
so ``purity`` holds for equal priors. For a field whose true class fractions are ``f_k``,
``purity_c = f_c * n_from_c / sum_k f_k * n_from_k`` (the ``n_from_<class>`` columns make this
exact); completeness does not depend on priors.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from astropy import units as u
from astropy.coordinates import SkyCoord
from fsspec.implementations.local import LocalFileSystem
from scipy import stats

from iic_survey.core.atomic import write_atomic
from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import clean
from iic_survey.core.metrics import reliability_bins

logger = logging.getLogger(__name__)

W1_EDGES = (-np.inf, 13.0, 14.0, 15.0, 15.5, 16.0, 16.5, np.inf)
"""W1 (mag) bins of the tables."""
ABS_B_EDGES = (0.0, 10.0, 20.0, 30.0, 60.0, 90.0001)
"""Galactic |b| (deg) bins."""
ABS_BETA_EDGES = (0.0, 20.0, 40.0, 60.0, 90.0001)
"""Ecliptic |beta| (deg) bins (AllWISE's depth grows towards the ecliptic poles)."""
THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.34, 1.0, 0.01), 2))
"""``confidence`` thresholds of the tables (``confidence >= threshold`` is selected)."""
TARGETS = (0.90, 0.95, 0.99)
"""Purities the recommended thresholds aim at."""
MIN_SELECTED = 20
"""A threshold is recommended only where it selects at least this many test sources."""
CONFIDENCE = 0.95
"""Confidence of the purity bounds (one-sided Clopper-Pearson)."""
SPLIT_KEY = 0x1C5A_26E1_D3A7_0B15
"""Key of :func:`verify_part`'s hash: fixed, so the choose / verify parts are the same on every
run and machine (changing it re-draws them)."""
RELIABILITY_BINS = 10
"""Confidence bins of the reliability tables."""

FILES = {
    "completeness_purity": "completeness_purity.parquet",
    "completeness_purity_w1": "completeness_purity_w1.parquet",
    "thresholds": "thresholds.parquet",
    "reliability_w1": "reliability_w1.parquet",
}
"""Table name -> file name inside a ``selection/`` folder."""
SUMMARY = "tables.json"


def positions(ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(|b|, |beta|) in degrees: Galactic and (true, barycentric) ecliptic latitude."""
    c = SkyCoord(np.asarray(ra, float) * u.deg, np.asarray(dec, float) * u.deg, frame="icrs")
    b = np.abs(c.galactic.b.deg)
    beta = np.abs(c.barycentrictrueecliptic.lat.deg)
    return b, beta


def _bin(values: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Index of each value's bin ``[edges[i], edges[i + 1])``; -1 outside (or NaN)."""
    idx = np.searchsorted(np.asarray(edges), values, side="right") - 1
    return np.where(np.isfinite(values) & (idx >= 0) & (idx < len(edges) - 1), idx, -1)


def _counts(
    y: np.ndarray, proba: np.ndarray, groups: dict[str, np.ndarray], edges: dict[str, tuple]
) -> pd.DataFrame:
    """The long completeness / purity table of rows grouped by ``groups`` (bin indices)."""
    pred, conf = proba.argmax(1), proba.max(1)
    keys = pd.DataFrame(groups)
    frames = []
    for k, name in enumerate(CLASSES):
        true_k = pd.Series(y == k).groupby([keys[c] for c in keys]).sum()
        for t in THRESHOLDS:
            sel = (pred == k) & (conf >= t)
            agg = {"n_selected": sel, "n_correct": sel & (y == k)}
            agg |= {f"n_from_{c}": sel & (y == j) for j, c in enumerate(CLASSES)}
            g = pd.DataFrame(agg).groupby([keys[c] for c in keys]).sum()
            g["n_true"] = true_k
            g["class"], g["threshold"] = name, t
            frames.append(g.reset_index())
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    for col, e in edges.items():
        lo, hi = np.asarray(e[:-1]), np.asarray(e[1:])
        out[f"{col}_lo"], out[f"{col}_hi"] = lo[out[col]], hi[out[col]]
    out = out.drop(columns=list(edges))
    with np.errstate(invalid="ignore", divide="ignore"):
        out["completeness"] = out["n_correct"] / out["n_true"].where(out["n_true"] > 0)
        out["purity"] = out["n_correct"] / out["n_selected"].where(out["n_selected"] > 0)
    first = ["class", *(f"{c}_{s}" for c in edges for s in ("lo", "hi")), "threshold"]
    return out[first + [c for c in out.columns if c not in first]]


def completeness_purity(
    labels: np.ndarray, proba: np.ndarray, w1: np.ndarray, ra: np.ndarray, dec: np.ndarray
) -> pd.DataFrame:
    """Per class, (W1, |b|, |beta|) bin and threshold (see the module); rows already clean."""
    b, beta = positions(ra, dec)
    groups = {"w1": _bin(w1, W1_EDGES), "abs_b": _bin(b, ABS_B_EDGES),
              "abs_beta": _bin(beta, ABS_BETA_EDGES)}  # fmt: skip
    keep = np.all([g >= 0 for g in groups.values()], axis=0)
    edges = {"w1": W1_EDGES, "abs_b": ABS_B_EDGES, "abs_beta": ABS_BETA_EDGES}
    return _counts(
        np.asarray(labels)[keep], proba[keep], {k: g[keep] for k, g in groups.items()}, edges
    )


def completeness_purity_w1(labels: np.ndarray, proba: np.ndarray, w1: np.ndarray) -> pd.DataFrame:
    """Per class, W1 bin and threshold, over all positions."""
    g = _bin(w1, W1_EDGES)
    keep = g >= 0
    return _counts(np.asarray(labels)[keep], proba[keep], {"w1": g[keep]}, {"w1": W1_EDGES})


def _purity_curve(y: np.ndarray, proba: np.ndarray, k: int) -> pd.DataFrame:
    """Per threshold of the grid: selected, correct, purity and completeness of class ``k``."""
    pred, conf = proba.argmax(1), proba.max(1)
    rows = []
    n_true = int((y == k).sum())
    for t in THRESHOLDS:
        sel = (pred == k) & (conf >= t)
        n_sel, n_ok = int(sel.sum()), int((sel & (y == k)).sum())
        rows.append((t, n_sel, n_ok, n_ok / n_sel if n_sel else np.nan,
                     n_ok / n_true if n_true else np.nan))  # fmt: skip
    return pd.DataFrame(rows, columns=["threshold", "n_selected", "n_correct", "purity",
                                       "completeness"])  # fmt: skip


def verify_part(cntr: np.ndarray, key: int = SPLIT_KEY) -> np.ndarray:
    """True for the rows of the verify part, False for the choose part (about half each).

    A keyed hash of ``cntr`` (splitmix64 of ``cntr`` xor ``key``): deterministic, independent
    of the rows' order and of which other rows are present, and unrelated to position, depth or
    class (AllWISE's ``cntr`` numbers sources along the survey's scan).
    """
    x = np.asarray(cntr, dtype=np.int64).astype(np.uint64) ^ np.uint64(key)
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(63)).astype(bool)


def purity_lower_bound(
    n_correct: np.ndarray | int, n_selected: np.ndarray | int, confidence: float = CONFIDENCE
) -> np.ndarray:
    """One-sided Clopper-Pearson lower bound of a purity ``n_correct / n_selected``: the true
    purity is at least this with probability ``confidence``; NaN where nothing is selected."""
    k, n = np.asarray(n_correct, dtype=np.float64), np.asarray(n_selected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, stats.beta.ppf(1 - confidence, k, n - k + 1), 0.0)
    return np.where(n > 0, lo, np.nan)


def purity_upper_bound(
    n_correct: np.ndarray | int, n_selected: np.ndarray | int, confidence: float = CONFIDENCE
) -> np.ndarray:
    """One-sided Clopper-Pearson upper bound (the mirror of :func:`purity_lower_bound`)."""
    k, n = np.asarray(n_correct, dtype=np.float64), np.asarray(n_selected, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        hi = np.where(k < n, stats.beta.ppf(confidence, k + 1, n - k), 1.0)
    return np.where(n > 0, hi, np.nan)


def recommended_thresholds(labels: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    """Per class and target purity: the smallest grid threshold whose purity's lower bound
    reaches it (see the module), on the rows given (the choose part).

    A target no threshold reaches gets a null threshold and a ``note`` saying why.
    """
    y = np.asarray(labels)
    rows = []
    for k, name in enumerate(CLASSES):
        curve = _purity_curve(y, proba, k)
        lo = purity_lower_bound(curve["n_correct"], curve["n_selected"])
        for target in TARGETS:
            ok = curve[(lo >= target) & (curve["n_selected"] >= MIN_SELECTED)]
            if len(ok):
                r = ok.iloc[0]
                rows.append({"class": name, "target_purity": target, **r.to_dict(), "note": ""})
            else:
                best = np.nanmax(lo) if np.isfinite(lo).any() else np.nan
                rows.append({"class": name, "target_purity": target, "threshold": np.nan,
                             "n_selected": 0, "n_correct": 0, "purity": np.nan,
                             "completeness": 0.0,
                             "note": f"not reached with >= {MIN_SELECTED} sources "
                                     f"(best 95 % lower bound {best:.3f})"})  # fmt: skip
    out = pd.DataFrame(rows)
    out["n_true"] = [int((y == CLASSES.index(c)).sum()) for c in out["class"]]
    return out


def verify_thresholds(
    thresholds: pd.DataFrame, labels: np.ndarray, proba: np.ndarray
) -> pd.DataFrame:
    """``thresholds`` (from :func:`recommended_thresholds`) with the ``verify_*`` columns,
    ``held`` and ``verdict`` measured on another labelled part (see the module)."""
    y, pred, conf = np.asarray(labels), proba.argmax(1), proba.max(1)
    out = thresholds.copy()
    cols: dict[str, list[float]] = {"n_true": [], "n_selected": [], "n_correct": []}
    for _, r in out.iterrows():
        k = CLASSES.index(r["class"])
        sel = (pred == k) & (conf >= r["threshold"]) if np.isfinite(r["threshold"]) else pred < 0
        cols["n_true"].append(int((y == k).sum()))
        cols["n_selected"].append(int(sel.sum()))
        cols["n_correct"].append(int((sel & (y == k)).sum()))
    for c, v in cols.items():
        out[f"verify_{c}"] = np.asarray(v, dtype=np.int64)
    n_sel, n_ok = out["verify_n_selected"].to_numpy(), out["verify_n_correct"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["verify_purity"] = np.where(n_sel > 0, n_ok / n_sel, np.nan)
        out["verify_completeness"] = n_ok / np.where(out["verify_n_true"] > 0,
                                                     out["verify_n_true"], np.nan)  # fmt: skip
    out["verify_purity_lo95"] = purity_lower_bound(n_ok, n_sel)
    hi = purity_upper_bound(n_ok, n_sel)
    target = out["target_purity"].to_numpy()
    out["held"] = out["verify_purity_lo95"].to_numpy() >= target  # NaN compares False
    out["verdict"] = np.select(
        [~np.isfinite(out["threshold"].to_numpy()), out["held"].to_numpy(), hi < target],
        ["no threshold", "held", "not held"],
        "not shown",
    )
    return out


def reliability_w1(labels: np.ndarray, proba: np.ndarray, w1: np.ndarray) -> pd.DataFrame:
    """Per W1 bin and confidence bin: n, mean confidence, fraction correct."""
    y, g = np.asarray(labels), _bin(w1, W1_EDGES)
    rows = []
    for i, (lo, hi) in enumerate(itertools.pairwise(W1_EDGES)):
        sel = g == i
        if not sel.any():
            continue
        r = reliability_bins(y[sel], proba[sel], RELIABILITY_BINS)
        for j in range(RELIABILITY_BINS):
            edges = {"w1_lo": lo, "w1_hi": hi, "conf_lo": r["edges"][j],
                     "conf_hi": r["edges"][j + 1]}  # fmt: skip
            rows.append({**edges, "n": int(r["count"][j]), "confidence": r["confidence"][j],
                         "accuracy": r["accuracy"][j]})  # fmt: skip
    return pd.DataFrame(rows)


def selection_tables(split: Mapping[str, np.ndarray], proba: np.ndarray) -> dict[str, pd.DataFrame]:
    """All four tables (:data:`FILES`) from a labelled split's clean rows.

    ``split`` holds ``label``, ``w1mpro``, ``ra``, ``dec``, ``quality_flags`` and ``cntr`` per
    row (``proba``: the calibrated probabilities). The thresholds are chosen on the choose
    part and verified on the verify part (:func:`verify_part`); the other tables use every
    clean row.
    """
    keep = clean(np.asarray(split["quality_flags"]))
    y, p = np.asarray(split["label"])[keep], np.asarray(proba, dtype=np.float64)[keep]
    w = np.asarray(split["w1mpro"], dtype=np.float64)[keep]
    ra, dec = np.asarray(split["ra"])[keep], np.asarray(split["dec"])[keep]
    verify = verify_part(np.asarray(split["cntr"])[keep])
    chosen = recommended_thresholds(y[~verify], p[~verify])
    return {
        "completeness_purity": completeness_purity(y, p, w, ra, dec),
        "completeness_purity_w1": completeness_purity_w1(y, p, w),
        "thresholds": verify_thresholds(chosen, y[verify], p[verify]),
        "reliability_w1": reliability_w1(y, p, w),
    }


def promises_held(thresholds: pd.DataFrame) -> str:
    """One line: how many (class, target) promises held on the verify part."""
    made = thresholds[np.isfinite(thresholds["threshold"])]
    held = int(made["held"].sum()) if "held" in made else 0
    return (f"{held} of {len(made)} purity promises held on the verify part (95 % lower bound "
            f">= target); {len(thresholds) - len(made)} targets got no threshold")  # fmt: skip


def write_tables(
    out_dir: str | Path, tables: dict[str, pd.DataFrame], meta: dict[str, Any]
) -> None:
    """Write the tables (Parquet) and ``tables.json`` (what they are, ``meta``) into ``out_dir``."""
    out, fs = Path(out_dir), LocalFileSystem()
    for name, df in tables.items():
        write_atomic(fs, str(out / FILES[name]), _parquet(df))
    summary = {
        **meta,
        "files": FILES,
        "classes": list(CLASSES),
        "w1_edges": [float(e) for e in W1_EDGES],
        "abs_b_edges": list(ABS_B_EDGES),
        "abs_beta_edges": list(ABS_BETA_EDGES),
        "thresholds": list(THRESHOLDS),
        "targets": list(TARGETS),
        "min_selected": MIN_SELECTED,
        "threshold_split": "thresholds chosen on the choose part, verified on the verify part "
        f"(keyed hash of cntr, key {SPLIT_KEY:#x}); bounds: one-sided {CONFIDENCE:.0%} "
        "Clopper-Pearson",
        "promises": promises_held(tables["thresholds"]),
        "rows": "clean rows only (iic_survey.core.flags.NOT_CLEAN bits unset)",
        "priors": "the labelled split is class-balanced: purity holds for equal priors; "
        "reweight with the n_from_<class> columns",
        "recommended": tables["thresholds"].replace({np.nan: None}).to_dict("records"),
    }
    write_atomic(fs, str(out / SUMMARY), json.dumps(summary, indent=1, default=float).encode())
    logger.info("selection tables written to %s", out)


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()
