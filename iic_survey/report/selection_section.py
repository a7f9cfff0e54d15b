"""The report's selection section: calibration per depth, completeness and purity against W1.

Drawn from the catalog's ``selection/`` tables (:mod:`iic_survey.output.selection_folder`;
measured by training on the model's labelled test split): one reliability diagram per W1 bin
(``reliability_w1.parquet``), completeness and purity per class against W1 at the recommended
thresholds (``completeness_purity_w1.parquet``, ``thresholds.parquet``), and the thresholds
table. A catalog without the tables gets a sentence saying so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from iic_survey.core.constants import CLASSES
from iic_survey.output.schema import MAIN, resolve
from iic_survey.output.selection_folder import SELECTION
from iic_survey.report.config import COLOURS
from iic_survey.report.figures import save_png

_FILES = ("reliability_w1", "completeness_purity_w1", "thresholds")


def read_tables(path: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, pd.DataFrame]:
    """The selection tables of a catalog (its root or its main catalog); {} when absent."""
    fsys, root = resolve(path, fs)
    if root.rstrip("/").endswith(f"/{MAIN}"):
        root = root.rstrip("/")[: -len(MAIN) - 1]
    out = {}
    for name in _FILES:
        f = f"{root}/{SELECTION}/{name}.parquet"
        if fsys.exists(f):
            with fsys.open(f, "rb") as fh:
                out[name] = pd.read_parquet(fh)
    return out if len(out) == len(_FILES) else {}


def _w1_label(lo: float, hi: float) -> str:
    if not np.isfinite(lo):
        return f"W1 < {hi:g}"
    if not np.isfinite(hi):
        return f"W1 >= {lo:g}"
    return f"{lo:g} <= W1 < {hi:g}"


def reliability_figure(rel: pd.DataFrame) -> Figure:
    """One reliability diagram per W1 bin: fraction correct against mean confidence."""
    bins = rel[["w1_lo", "w1_hi"]].drop_duplicates().to_numpy()
    fig = Figure(figsize=(3.0 * len(bins), 3.4), layout="constrained")
    axes = fig.subplots(1, len(bins), squeeze=False, sharey=True)[0]
    for ax, (lo, hi) in zip(axes, bins, strict=True):
        b = rel[(rel["w1_lo"] == lo) & (rel["w1_hi"] == hi) & (rel["n"] > 0)]
        ax.plot([0, 1], [0, 1], c="0.6", lw=0.8, ls="--")
        ax.scatter(b["confidence"], b["accuracy"], s=8 + 60 * b["n"] / max(b["n"].max(), 1))
        ax.plot(b["confidence"], b["accuracy"], lw=0.8)
        ax.set_xlim(0.3, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_title(f"{_w1_label(lo, hi)} (n={int(b['n'].sum())})", fontsize=9)
        ax.set_xlabel("mean confidence")
    axes[0].set_ylabel("fraction correct")
    return fig


def completeness_purity_figure(cp: pd.DataFrame, thresholds: pd.DataFrame) -> Figure:
    """Completeness and purity against W1 per class, at the 0.95-purity threshold (and none)."""
    fig = Figure(figsize=(11.0, 3.8), layout="constrained")
    axes = fig.subplots(1, len(CLASSES), sharey=True)
    for ax, c in zip(axes, CLASSES, strict=True):
        rec = thresholds[(thresholds["class"] == c) & (thresholds["target_purity"] == 0.95)]
        cut = rec["threshold"].iloc[0] if len(rec) else np.nan
        for t, style in ((cp["threshold"].min(), ":"), (cut, "-")):
            if not np.isfinite(t):
                continue
            d = cp[(cp["class"] == c) & np.isclose(cp["threshold"], t)].sort_values("w1_lo")
            mid = np.clip((d["w1_lo"] + d["w1_hi"]) / 2, 8.0, 18.0)
            label = "any confidence" if style == ":" else f"confidence >= {t:.2f}"
            ax.plot(mid, d["completeness"], style, c=COLOURS[c], marker="o", ms=3,
                    label=f"completeness, {label}")  # fmt: skip
            ax.plot(mid, d["purity"], style, c="k", marker="s", ms=3, label=f"purity, {label}")
        ax.set_title(c)
        ax.set_xlabel("W1 (mag, bin centre)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc="lower left")
    axes[0].set_ylabel("fraction (labelled test split)")
    return fig


def section(path: str, out: Path, dpi: int, fs: Any = None) -> list[str]:
    """The report's "Selection" Markdown (and its two PNGs in ``out``)."""
    tables = read_tables(path, fs)
    md = ["## Selection", ""]
    if not tables:
        return [
            *md,
            "This catalog has no `selection/` tables (its model directory was trained before "
            "they existed), so there are no per-depth reliability or completeness curves.",
            "",
        ]
    save_png(reliability_figure(tables["reliability_w1"]), out / "reliability_w1.png", dpi)
    cp, th = tables["completeness_purity_w1"], tables["thresholds"]
    save_png(completeness_purity_figure(cp, th), out / "selection_w1.png", dpi)
    md += [
        "Measured by training on the model's labelled test split (clean rows, class-balanced), "
        "from the catalog's `selection/` tables.",
        "",
        "![Reliability per W1 bin](reliability_w1.png)",
        "",
        "![Completeness and purity against W1](selection_w1.png)",
        "",
        "| class | target purity | confidence threshold | purity (choose part) | completeness "
        "| verified purity | 95 % lower bound | promise |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    verified = "verdict" in th  # tables written before the choose / verify split have none
    for r in th.to_dict("records"):
        t = "-" if not np.isfinite(r["threshold"]) else f"{r['threshold']:.2f}"
        p = "-" if not np.isfinite(r["purity"]) else f"{r['purity']:.3f}"
        v, lo, verdict = "-", "-", "not verified"
        if verified:
            verdict = r["verdict"]
            if np.isfinite(r["verify_purity"]):
                v, lo = f"{r['verify_purity']:.3f}", f"{r['verify_purity_lo95']:.3f}"
        md.append(f"| {r['class']} | {r['target_purity']:.2f} | {t} | {p} | "
                  f"{r['completeness']:.3f} | {v} | {lo} | {verdict} |")  # fmt: skip
    return [*md, ""]
