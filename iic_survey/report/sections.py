"""A look at a classification catalog: sky maps, confidence, example cutouts, and truth metrics.

:func:`write_report` reads the catalog one pixel file at a time (memory stays flat at any sky
size), accumulates per-pixel counts on a HEALPix map, per-class confidence histograms and a
deterministic sample of example rows, and writes PNG figures plus ``report.md`` linking them.
With a truth table ``(cntr, class)`` it adds the confusion matrix, ROC curves, and completeness
and purity against W1 magnitude and Galactic latitude (for the matched rows only).

The counting is :mod:`iic_survey.report.tally`, the drawing :mod:`iic_survey.report.figures`
(matplotlib's object API, no pyplot); this module lays out the sections and their figures.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.output.reader import iter_pixels, read_properties
from iic_survey.report import selection_section, zoom
from iic_survey.report.config import COLOURS, COLUMNS, FIGSIZES, ReportConfig, StampSource
from iic_survey.report.figures import MapPanel, map_figure, map_views, save_png, stamp_grid
from iic_survey.report.tally import (
    Tally,
    binned_completeness_purity,
    galactic_latitude,
    load_truth,
    truth_metrics,
)

logger = logging.getLogger(__name__)


def write_report(
    catalog_path: str,
    out_dir: str | Path,
    truth: str | pd.DataFrame | None = None,
    *,
    stamps: StampSource | None = None,
    config: ReportConfig | None = None,
    filesystem: Any = None,
) -> Path:
    """Write the figures and ``report.md`` for a catalog into ``out_dir``; return the .md path.

    ``stamps`` draws the example cutout grids (see
    :func:`iic_survey.report.examples.archive_stamps`); without it the report says
    ``config.no_stamps_reason`` where the grids would be.
    """
    cfg = config or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = Tally(cfg, load_truth(truth) if truth is not None else None)
    npart = 0
    for _, _, df in iter_pixels(catalog_path, COLUMNS, filesystem):
        tally.add(df)
        npart += 1
    if tally.rows == 0:
        raise ValueError(f"{catalog_path} has no rows")
    props = read_properties(catalog_path, filesystem)
    md = [
        f"# Classification report: `{catalog_path}`",
        "",
        f"Written by iic_survey {__version__} on {datetime.date.today().isoformat()}. "
        f"Model: {', '.join(sorted(tally.models)) or 'unknown'}.",
        "",
    ]
    md += _summary_md(tally, npart, props)
    md += _sky_section(tally, out)
    md += _confidence_section(tally, out)
    md += selection_section.section(catalog_path, out, cfg.dpi, filesystem)
    md += _examples_section(tally, out, stamps)
    if tally.truth is not None:
        md += _truth_section(tally, out)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    logger.info("report for %s written to %s", catalog_path, path)
    return path


def _summary_md(t: Tally, npart: int, props: dict[str, str]) -> list[str]:
    n = t.rows
    unclassified = n - int(t.per_class.sum())
    md = [
        "## Summary",
        "",
        f"{n:,} sources in {npart} HEALPix pixels"
        + (f" (order {props['hats_order']})" if "hats_order" in props else "")
        + ".",
        "",
        "| class | sources | fraction |",
        "|---|---:|---:|",
    ]
    for i, c in enumerate(CLASSES):
        md.append(f"| {c} | {int(t.per_class[i].sum()):,} | {t.per_class[i].sum() / n:.2%} |")
    md.append(f"| unclassified | {unclassified:,} | {unclassified / n:.2%} |")
    md += [
        "",
        f"Outliers (`is_outlier`): {int(t.outliers.sum()):,} ({t.outliers.sum() / n:.2%}).",
        "",
        "| quality flag | sources | fraction |",
        "|---|---:|---:|",
    ]
    md += [f"| {k} | {v:,} | {v / n:.2%} |" for k, v in t.flag_counts.items() if v]
    if "iic_run_args" in props:
        md += ["", f"Run arguments: `{props['iic_run_args']}`"]
    return [*md, ""]


def _sky_section(t: Tally, out: Path) -> list[str]:
    order, seen = t.config.map_order, t.counts > 0
    n = np.maximum(t.counts, 1)
    area = hp.nside2pixarea(healpix.nside(order), degrees=True)
    density = np.where(seen, np.log10(n / area), hp.UNSEEN)
    lo, hi = (float(density[seen].min()), float(density[seen].max())) if seen.any() else (0, 1)
    outliers = np.where(seen, t.outliers / n, hp.UNSEEN)
    top = max(float(outliers[seen].max()) if seen.any() else 0.0, 0.05)
    fine = t.fine.table
    fv = (lambda col, per: zoom.fine_values(fine, col, per)) if fine is not None else None
    figures = {
        "sky_density": [MapPanel("Source density", density, "log10(sources / deg²)", "viridis",
                                 lo, hi, fv and fv("n", None))],
        "sky_class_fractions": [
            MapPanel(f"{c} fraction", np.where(seen, t.per_class[i] / n, hp.UNSEEN),
                     "fraction of sources", "magma", 0.0, 1.0, fv and fv(c, "n"))
            for i, c in enumerate(CLASSES)
        ],
        "sky_outliers": [MapPanel("Outlier fraction", outliers, "fraction of sources", "inferno",
                                  0.0, top, fv and fv("outlier", "n"))],
    }  # fmt: skip
    if fine is not None and len(fine):  # the zoom's colour range spans the fine densities
        d = zoom.fine_values(fine, "n", None)
        figures["sky_density"][0] = dataclasses.replace(
            figures["sky_density"][0], vmin=float(d.min()), vmax=float(d.max())
        )
    views = map_views(t.counts, order, fine)
    lookup = zoom.compact_lookup(fine) if fine is not None and len(fine) else None
    for name, panels in figures.items():
        fig = map_figure(panels, views, name, t.config.dpi, lookup)
        save_png(fig, out / f"{name}.png", t.config.dpi)
    note = (
        f" One zoomed panel per covered region ({len(views) - 1}), at HEALPix order "
        f"{zoom.ZOOM_ORDER} where the catalog is small enough."
        if len(views) > 1
        else ""
    )
    return [
        "## Sky maps",
        "",
        f"HEALPix order {order} (nside {healpix.nside(order)}), Mollweide, "
        f"equatorial coordinates; grey = no sources.{note}",
        "",
        "![Source density](sky_density.png)",
        "",
        "![Class fractions](sky_class_fractions.png)",
        "",
        "![Outlier fraction](sky_outliers.png)",
        "",
    ]


def _confidence_section(t: Tally, out: Path) -> list[str]:
    fig = Figure(figsize=FIGSIZES["confidence"], layout="constrained")
    axes = fig.subplots(1, len(CLASSES), sharey=True)
    edges = np.linspace(1 / 3, 1, t.config.confidence_bins + 1)
    for ax, c, h in zip(axes, CLASSES, t.conf_hist, strict=True):
        ax.stairs(h, edges, baseline=0.5, fill=True, color=COLOURS[c], alpha=0.8)
        ax.set_yscale("log")
        ax.set_ylim(0.5, max(2 * t.conf_hist.max(), 10))
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"classified as {c} ({int(h.sum()):,})")
    axes[0].set_ylabel("sources")
    save_png(fig, out / "confidence.png", t.config.dpi)
    return ["## Confidence", "", "![Confidence per class](confidence.png)", ""]


def _examples_section(t: Tally, out: Path, stamps: StampSource | None) -> list[str]:
    md = ["## Example cutouts", ""]
    if stamps is None:
        reason = t.config.no_stamps_reason.rstrip(".")
        return [*md, f"{reason}, so the cutout grids were skipped.", ""]
    for name in (*CLASSES, "outlier"):
        rows = t.examples.get(name)
        if rows is None or rows.empty:
            md += [f"No {name} examples to show.", ""]
            continue
        rows = rows.drop(columns="_key").reset_index(drop=True)
        try:
            images = stamps(rows)
        except Exception as err:  # a broken image source must not lose the rest of the report
            logger.warning("cutouts for the %s examples failed: %s", name, err)
            md += [f"Cutouts for the {name} examples failed: `{err}`.", ""]
            continue
        what = "outliers" if name == "outlier" else f"confident {name} examples"
        fig = stamp_grid(rows, images, f"{len(rows)} {what}", FIGSIZES["examples"])
        save_png(fig, out / f"examples_{name}.png", t.config.dpi)
        md += [f"![{what}](examples_{name}.png)", ""]
    return md


def _truth_section(t: Tally, out: Path) -> list[str]:
    matched = pd.concat(t.matched) if t.matched else pd.DataFrame()
    md = ["## Against the truth table", ""]
    if matched.empty:
        return [
            *md,
            f"None of the {0 if t.truth is None else len(t.truth)} truth rows is in the catalog.",
            "",
        ]
    m = truth_metrics(matched)
    md += _metrics_table(m)
    save_png(_confusion_figure(m), out / "confusion.png", t.config.dpi)
    save_png(_roc_figure(m), out / "roc.png", t.config.dpi)
    fig = _completeness_purity_figure(matched, t.config)
    save_png(fig, out / "completeness_purity.png", t.config.dpi)
    return [
        *md,
        "",
        "![Confusion matrix](confusion.png)",
        "",
        "![ROC curves](roc.png)",
        "",
        "![Completeness and purity](completeness_purity.png)",
        "",
    ]


def _metrics_table(m: dict[str, Any]) -> list[str]:
    """Accuracy and the per-class precision / recall / F1 / AUC of :func:`truth_metrics`."""
    md = [
        f"{m['n_matched']:,} catalog sources have a true class ({m['n_unclassified']:,} of "
        f"them unclassifiable). Accuracy {m['accuracy']:.3f}.",
        "",
        "| class | precision (purity) | recall (completeness) | F1 | ROC AUC | true sources |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for c, v in m["per_class"].items():
        md.append(
            f"| {c} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | "
            f"{v['auc']:.3f} | {v['n_true']:,} |"
        )
    return md


def _confusion_figure(m: dict[str, Any]) -> Figure:
    """The confusion matrix: counts, and colour by the fraction of each true class."""
    fig = Figure(figsize=FIGSIZES["confusion"], layout="constrained")
    ax = fig.subplots()
    conf = m["confusion"]
    frac = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(conf):
        ax.text(
            j,
            i,
            f"{v}\n{frac[i, j]:.2f}",
            ha="center",
            va="center",
            color="white" if frac[i, j] > 0.5 else "black",
            fontsize=9,
        )
    ax.set_xticks(range(len(m["columns"])), m["columns"])
    ax.set_yticks(range(len(CLASSES)), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, label="fraction of true class")
    return fig


def _roc_figure(m: dict[str, Any]) -> Figure:
    """One-vs-rest ROC curve of each class, with its AUC."""
    fig = Figure(figsize=FIGSIZES["roc"], layout="constrained")
    ax = fig.subplots()
    for c, v in m["per_class"].items():
        ax.plot(v["fpr"], v["tpr"], color=COLOURS[c], label=f"{c} (AUC {v['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="0.5")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    return fig


def _completeness_purity_figure(matched: pd.DataFrame, cfg: ReportConfig) -> Figure:
    """Completeness and purity per class against W1 magnitude and Galactic latitude."""
    fig = Figure(figsize=FIGSIZES["completeness_purity"], layout="constrained")
    axes = fig.subplots(2, 2, sharey=True)
    ra, dec = matched["ra"].to_numpy(dtype=float), matched["dec"].to_numpy(dtype=float)
    by = [
        ("W1 (mag)", matched["w1mpro"].to_numpy(dtype=float, na_value=np.nan), cfg.w1_edges),
        ("|b| (deg)", np.abs(galactic_latitude(ra, dec)), cfg.glat_edges),
    ]
    for r, (label, values, edges) in enumerate(by):
        curves = binned_completeness_purity(matched, values, edges, cfg.min_per_bin)
        for c, (x, comp, pur) in curves.items():
            axes[r][0].plot(x, comp, "o-", color=COLOURS[c], label=c)
            axes[r][1].plot(x, pur, "o-", color=COLOURS[c], label=c)
        for k, what in enumerate(("completeness", "purity")):
            axes[r][k].set_xlabel(label)
            axes[r][k].set_ylabel(what)
            axes[r][k].set_ylim(0, 1.02)
            axes[r][k].legend()
    return fig
