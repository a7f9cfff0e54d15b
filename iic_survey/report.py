"""A look at a classification catalog: sky maps, confidence, example cutouts, and truth metrics.

:func:`write_report` reads the catalog one pixel file at a time (memory stays flat at any sky
size), accumulates per-pixel counts on a HEALPix map, per-class confidence histograms and a
deterministic sample of example rows, and writes PNG figures plus ``report.md`` linking them.
With a truth table ``(cntr, class)`` it adds the confusion matrix, ROC curves, and completeness
and purity against W1 magnitude and Galactic latitude (for the matched rows only).

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, so importing or
running this never changes the caller's matplotlib backend. Maps use healpy's Mollweide
projector; a catalog covering under 10 % of the sky also gets a zoomed panel.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from iic_survey import CLASSES, __version__, metrics, sky
from iic_survey.export import iter_pixels, read_properties
from iic_survey.flags import QualityFlag
from iic_survey.output import run_args

logger = logging.getLogger(__name__)

StampSource = Callable[[pd.DataFrame], np.ndarray]
"""Rows (cntr, designation, ra, dec, ...) -> RGB images (N, 3, H, W) or (N, H, W, 3), float in
[0, 1] or uint8, one per row in order. :func:`archive_stamps` makes one from an image archive."""

_COLUMNS = [
    "_healpix_29",
    "cntr",
    "designation",
    "ra",
    "dec",
    "w1mpro",
    "p_galaxy",
    "p_quasar",
    "p_star",
    "class",
    "confidence",
    "ood_score",
    "is_outlier",
    "quality_flags",
    "model_version",
]
_PROBS = [f"p_{c}" for c in CLASSES]
_COLOURS = {"galaxy": "tab:orange", "quasar": "tab:purple", "star": "tab:blue"}


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What the report shows and how big its figures are."""

    map_order: int = 6
    """HEALPix order of the sky maps (nside = 2**order)."""
    n_examples: int = 16
    """Cutouts in each example grid (per class and for outliers)."""
    example_min_confidence: float = 0.8
    """Class examples are drawn from rows at least this confident (the outlier grid is not)."""
    confidence_bins: int = 30
    """Bins of the confidence histograms over [1/3, 1]."""
    w1_edges: tuple[float, ...] = tuple(float(x) for x in range(6, 19))
    """W1 magnitude bin edges of the completeness / purity curves."""
    glat_edges: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0)
    """|Galactic latitude| bin edges (deg) of the completeness / purity curves."""
    min_per_bin: int = 5
    """Curve points from fewer matched sources than this are left out."""
    dpi: int = 100
    """Pixels per inch of every PNG (figure sizes are fixed in inches)."""
    seed: int = 0
    """Picks the example rows (deterministically, by a hash of cntr)."""

    def __post_init__(self) -> None:
        sky.check_order(self.map_order)
        if self.map_order > 10:
            raise ValueError(f"map_order {self.map_order} is too fine for a picture; use <= 10")
        if self.n_examples < 1 or self.confidence_bins < 2 or self.dpi < 20:
            raise ValueError("n_examples >= 1, confidence_bins >= 2 and dpi >= 20 are required")
        for name in ("w1_edges", "glat_edges"):
            edges = np.asarray(getattr(self, name))
            if len(edges) < 2 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"{name} must be at least two increasing values, got {edges}")
        if not 0 <= self.example_min_confidence <= 1:
            raise ValueError("example_min_confidence must be within [0, 1]")


FIGSIZES: dict[str, tuple[float, float]] = {
    "sky_density": (8.0, 4.5),
    "sky_class_fractions": (15.0, 3.8),
    "sky_outliers": (8.0, 4.5),
    "confidence": (12.0, 3.6),
    "examples": (8.0, 8.6),
    "confusion": (6.0, 4.8),
    "roc": (5.5, 5.0),
    "completeness_purity": (11.0, 8.0),
}
"""Figure sizes in inches; a map figure with a zoom panel is twice as tall."""


def _hash_key(cntr: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of cntr: a fixed pseudo-random order for picking examples."""
    z = np.asarray(cntr, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(seed + 1)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Tally:
    """Everything the report needs, accumulated pixel file by pixel file."""

    def __init__(self, config: ReportConfig, truth: pd.Series | None) -> None:
        self.config, self.truth = config, truth
        self.npix = sky.npix(config.map_order)
        self.rows = 0
        self.counts = np.zeros(self.npix, np.int64)  # sources per map pixel
        self.per_class = np.zeros((len(CLASSES), self.npix), np.int64)
        self.outliers = np.zeros(self.npix, np.int64)
        self.conf_hist = np.zeros((len(CLASSES), config.confidence_bins), np.int64)
        self.flag_counts = dict.fromkeys((str(f.name) for f in QualityFlag), 0)
        self.models: set[str] = set()
        self.examples: dict[str, pd.DataFrame] = {}  # category -> rows with the smallest keys
        self.matched: list[pd.DataFrame] = []  # rows with a true class

    def add(self, df: pd.DataFrame) -> None:
        cfg = self.config
        self.rows += len(df)
        mpix = df["_healpix_29"].to_numpy() >> (2 * (sky.MAX_ORDER - cfg.map_order))
        self.counts += np.bincount(mpix, minlength=self.npix)
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
        key = pd.Series(_hash_key(df["cntr"].to_numpy(), cfg.seed), index=df.index)
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


# ---------------------------------------------------------------- figures


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def _views(counts: np.ndarray, order: int) -> list[dict[str, Any]]:
    """Mollweide always; a zoomed Cartesian view when the data cover under 10 % of the sky."""
    views: list[dict[str, Any]] = [{"kind": "moll"}]
    filled = np.flatnonzero(counts)
    if 0 < len(filled) < 0.1 * len(counts):
        lon, lat = hp.pix2ang(sky.nside(order), filled, nest=True, lonlat=True)
        lon0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(lon))))) % 360)
        dlon = (lon - lon0 + 180) % 360 - 180
        pad = 2 * sky.pixel_radius_deg(order)
        views.append(
            {
                "kind": "cart",
                "rot": (lon0, 0, 0),
                "latra": [max(lat.min() - pad, -90), min(lat.max() + pad, 90)],
                "lonra": [max(dlon.min() - pad, -180), min(dlon.max() + pad, 180)],
            }
        )
    return views


@dataclasses.dataclass(frozen=True)
class _Panel:
    """One sky map: values per HEALPix pixel (``hp.UNSEEN`` where no sources) and its look."""

    title: str
    values: np.ndarray
    label: str
    cmap: str
    vmin: float
    vmax: float


def _draw_map(fig: Figure, ax: Any, panel: _Panel, view: dict[str, Any], xsize: int) -> None:
    if view["kind"] == "moll":
        proj: Any = hp.projector.MollweideProj(xsize=xsize)
    else:
        proj = hp.projector.CartesianProj(
            xsize=xsize, rot=view["rot"], lonra=view["lonra"], latra=view["latra"]
        )
    nside = hp.npix2nside(len(panel.values))
    img = proj.projmap(panel.values, lambda x, y, z: hp.vec2pix(nside, x, y, z, nest=True))
    outside = ~np.isfinite(img)
    cm = colormaps[panel.cmap].with_extremes(bad="0.85")
    x0, x1, y0, y1 = proj.get_extent()
    if view["kind"] == "cart":  # healpy draws east to the left: label the columns with RA
        x0, x1 = view["rot"][0] + x1, view["rot"][0] + x0
    style = {"origin": "lower", "extent": (x0, x1, y0, y1), "interpolation": "nearest"}
    masked = np.ma.masked_where(outside | (img == hp.UNSEEN), img)
    im = ax.imshow(masked, cmap=cm, vmin=panel.vmin, vmax=panel.vmax, **style)
    if view["kind"] == "moll":
        ax.imshow(np.ma.masked_where(~outside, outside), cmap="gray_r", vmin=1, vmax=2, **style)
        line = np.linspace(-1, 1, 181)
        for lat in (-60, -30, 0, 30, 60):  # graticule: constant dec, then constant RA
            ax.plot(*proj.ang2xy(180 + 180 * line, np.full(181, lat), lonlat=True), c="0.5", lw=0.4)
        for lon in range(0, 360, 60):
            ax.plot(*proj.ang2xy(np.full(181, lon), 90 * line, lonlat=True), c="0.5", lw=0.4)
        ax.set_aspect("equal", adjustable="datalim")  # keeps the title inside the figure
        ax.set_axis_off()
    else:
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v % 360:g}"))
        ax.set_xlabel("RA (deg)")
        ax.set_ylabel("Dec (deg)")
    ax.set_title(panel.title + (" (zoom)" if view["kind"] == "cart" else ""), fontsize=10)
    fig.colorbar(im, ax=ax, orientation="horizontal", shrink=0.7, pad=0.08, label=panel.label)


def _map_figure(panels: list[_Panel], views: list[dict[str, Any]], name: str, dpi: int) -> Figure:
    """Panels side by side, one row per view; projected at about the panel's pixel width."""
    w, h = FIGSIZES[name]
    fig = Figure(figsize=(w, h * len(views)), layout="constrained")
    xsize = int(np.clip(w / len(panels) * dpi, 100, 1600))
    axes = fig.subplots(len(views), len(panels), squeeze=False)
    for r, view in enumerate(views):
        for c, panel in enumerate(panels):
            _draw_map(fig, axes[r][c], panel, view, xsize)
    return fig


def _rgb(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) or (N, H, W, 3), float or uint8 -> (N, H, W, 3) float in [0, 1]."""
    a = np.asarray(images)
    if a.ndim != 4 or 3 not in (a.shape[1], a.shape[-1]):
        raise ValueError(f"stamps must be (N, 3, H, W) or (N, H, W, 3), got {a.shape}")
    if a.shape[1] == 3 and a.shape[-1] != 3:
        a = a.transpose(0, 2, 3, 1)
    a = a / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    return np.clip(np.nan_to_num(a), 0, 1)


def _grid(rows: pd.DataFrame, images: np.ndarray, title: str, size: tuple[float, float]) -> Figure:
    n = len(rows)
    ncol = int(np.ceil(np.sqrt(n)))
    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(ncol, ncol, squeeze=False).ravel()
    for ax, (_, row), img in zip(axes, rows.iterrows(), _rgb(images), strict=False):
        ax.imshow(img, interpolation="nearest")
        h, w = img.shape[:2]  # a reticle: two ticks pointing at the catalog position
        cy, cx, gap = (h - 1) / 2, (w - 1) / 2, 0.08 * w
        ax.plot([cx - 2.5 * gap, cx - gap], [cy, cy], color="cyan", lw=0.8)
        ax.plot([cx, cx], [cy - 2.5 * gap, cy - gap], color="cyan", lw=0.8)
        ax.set_title(
            f"{row['designation'] or row['cntr']}\n{row['class']} p={row['confidence']:.2f}",
            fontsize=7,
        )
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title)
    return fig


def display_stretch(images: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Scale each (3, H, W) image so its ``percentile`` pixel is 1 (faint sources become visible).

    The network's inputs use one fixed stretch for the whole sky, so a W1 = 16 source is nearly
    black; for looking at examples each stamp is brightened by its own factor (colours within a
    stamp, i.e. the W1:W2:W3 ratios, are kept).
    """
    a = np.nan_to_num(np.asarray(images, dtype=np.float32))
    top = np.percentile(a.reshape(len(a), -1), percentile, axis=1).reshape(-1, 1, 1, 1)
    return np.clip(a / np.maximum(top, 1e-6), 0, 1)


def archive_stamps(
    images: str,
    *,
    model_dir: str | None = None,
    endpoint_url: str | None = None,
) -> StampSource:
    """Example cutouts made the way the pipeline makes its inputs, from an image archive.

    Parameters
    ----------
    images
        An image archive spec for :meth:`iic_survey.stamps.StampMaker.from_spec` (``irsa``,
        ``s3``, ``s3://...``, a local ``p3am_cdd`` or synthetic sky root); a catalog records the
        one it was classified from in ``_run.json``.
    model_dir
        A model directory whose RGB settings to use (default: :class:`~iic_survey.rgb.RGBParams`).
    endpoint_url
        Another S3 endpoint (a local S3 server).

    Raises
    ------
    FileNotFoundError
        A local archive that does not exist (checked now, not at the first grid).
    """
    from iic_survey.cutouts import cut_sources
    from iic_survey.rgb import make_rgb
    from iic_survey.stamps import StampMaker

    rgb = None
    if model_dir:
        doc = json.loads((Path(model_dir) / "model.json").read_text())
        rgb = dict(doc.get("rgb") or {}) or None
    maker = StampMaker.from_spec(images, rgb_params=rgb, endpoint_url=endpoint_url)
    if maker.archive.kind == "local" and not Path(maker.archive.root).is_dir():
        raise FileNotFoundError(f"image archive {maker.archive.root} not found")

    def stamps(rows: pd.DataFrame) -> np.ndarray:
        # The image half of StampMaker (the catalog features are not needed to look at them);
        # per-row faults (a missing tile ...) give blank stamps and flags, not errors.
        cut = cut_sources(
            rows[["cntr", "ra", "dec"]].reset_index(drop=True), maker.archive, maker.cutout
        )
        images, _ = make_rgb(cut.stamps, maker.rgb)  # (N, 3, 80, 80)
        return display_stretch(images)

    return stamps


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


def write_report(
    catalog_path: str,
    out_dir: str | Path,
    truth: str | pd.DataFrame | None = None,
    *,
    stamps: StampSource | None = None,
    config: ReportConfig | None = None,
    filesystem: Any = None,
    no_stamps_reason: str = "No image source was given",
) -> Path:
    """Write the figures and ``report.md`` for a catalog into ``out_dir``; return the .md path.

    ``stamps`` draws the example cutout grids (see :func:`archive_stamps`); without it the
    report says ``no_stamps_reason`` where the grids would be.
    """
    cfg = config or ReportConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tally = _Tally(cfg, load_truth(truth) if truth is not None else None)
    npart = 0
    for _, _, df in iter_pixels(catalog_path, _COLUMNS, filesystem):
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
    md += _examples_section(tally, out, stamps, no_stamps_reason)
    if tally.truth is not None:
        md += _truth_section(tally, out)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    logger.info("report for %s written to %s", catalog_path, path)
    return path


def _summary_md(t: _Tally, npart: int, props: dict[str, str]) -> list[str]:
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


def _sky_section(t: _Tally, out: Path) -> list[str]:
    order, seen = t.config.map_order, t.counts > 0
    n = np.maximum(t.counts, 1)
    area = hp.nside2pixarea(sky.nside(order), degrees=True)
    density = np.where(seen, np.log10(n / area), hp.UNSEEN)
    lo, hi = (float(density[seen].min()), float(density[seen].max())) if seen.any() else (0, 1)
    outliers = np.where(seen, t.outliers / n, hp.UNSEEN)
    top = max(float(outliers[seen].max()) if seen.any() else 0.0, 0.05)
    figures = {
        "sky_density": [_Panel("Source density", density, "log10(sources / deg²)", "viridis",
                               lo, hi)],
        "sky_class_fractions": [
            _Panel(f"{c} fraction", np.where(seen, t.per_class[i] / n, hp.UNSEEN),
                   "fraction of sources", "magma", 0.0, 1.0)
            for i, c in enumerate(CLASSES)
        ],
        "sky_outliers": [_Panel("Outlier fraction", outliers, "fraction of sources", "inferno",
                                0.0, top)],
    }  # fmt: skip
    views = _views(t.counts, order)
    for name, panels in figures.items():
        _save(_map_figure(panels, views, name, t.config.dpi), out / f"{name}.png", t.config.dpi)
    note = " A zoomed panel shows the covered area." if len(views) > 1 else ""
    return [
        "## Sky maps",
        "",
        f"HEALPix order {order} (nside {sky.nside(order)}), Mollweide, "
        f"equatorial coordinates; grey = no sources.{note}",
        "",
        "![Source density](sky_density.png)",
        "",
        "![Class fractions](sky_class_fractions.png)",
        "",
        "![Outlier fraction](sky_outliers.png)",
        "",
    ]


def _confidence_section(t: _Tally, out: Path) -> list[str]:
    fig = Figure(figsize=FIGSIZES["confidence"], layout="constrained")
    axes = fig.subplots(1, len(CLASSES), sharey=True)
    edges = np.linspace(1 / 3, 1, t.config.confidence_bins + 1)
    for ax, c, h in zip(axes, CLASSES, t.conf_hist, strict=True):
        ax.stairs(h, edges, baseline=0.5, fill=True, color=_COLOURS[c], alpha=0.8)
        ax.set_yscale("log")
        ax.set_ylim(0.5, max(2 * t.conf_hist.max(), 10))
        ax.set_xlabel("confidence (max probability)")
        ax.set_title(f"classified as {c} ({int(h.sum()):,})")
    axes[0].set_ylabel("sources")
    _save(fig, out / "confidence.png", t.config.dpi)
    return ["## Confidence", "", "![Confidence per class](confidence.png)", ""]


def _examples_section(
    t: _Tally, out: Path, stamps: StampSource | None, no_stamps_reason: str
) -> list[str]:
    md = ["## Example cutouts", ""]
    if stamps is None:
        return [*md, f"{no_stamps_reason.rstrip('.')}, so the cutout grids were skipped.", ""]
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
        fig = _grid(rows, images, f"{len(rows)} {what}", FIGSIZES["examples"])
        _save(fig, out / f"examples_{name}.png", t.config.dpi)
        md += [f"![{what}](examples_{name}.png)", ""]
    return md


def _truth_section(t: _Tally, out: Path) -> list[str]:
    cfg = t.config
    matched = pd.concat(t.matched) if t.matched else pd.DataFrame()
    md = ["## Against the truth table", ""]
    if matched.empty:
        return [
            *md,
            f"None of the {0 if t.truth is None else len(t.truth)} truth rows is in the catalog.",
            "",
        ]
    m = truth_metrics(matched)
    md += [
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
    _save(fig, out / "confusion.png", cfg.dpi)

    fig = Figure(figsize=FIGSIZES["roc"], layout="constrained")
    ax = fig.subplots()
    for c, v in m["per_class"].items():
        ax.plot(v["fpr"], v["tpr"], color=_COLOURS[c], label=f"{c} (AUC {v['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="0.5")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    _save(fig, out / "roc.png", cfg.dpi)

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
            axes[r][0].plot(x, comp, "o-", color=_COLOURS[c], label=c)
            axes[r][1].plot(x, pur, "o-", color=_COLOURS[c], label=c)
        for k, what in enumerate(("completeness", "purity")):
            axes[r][k].set_xlabel(label)
            axes[r][k].set_ylabel(what)
            axes[r][k].set_ylim(0, 1.02)
            axes[r][k].legend()
    _save(fig, out / "completeness_purity.png", cfg.dpi)
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


def cli(argv: Sequence[str] | None = None, stamps: StampSource | None = None) -> int:
    """``python -m iic_survey report CATALOG [--out-dir DIR] [--truth PATH] [--images SPEC] ...``.

    The example cutouts are cut from ``--images``, by default the image archive the catalog was
    classified from (recorded in its ``_run.json``); ``--no-cutouts`` skips them. An archive
    that cannot be reached costs the grids, never the rest of the report.
    """
    parser = argparse.ArgumentParser(prog="iic_survey report", description=__doc__.split("\n")[0])
    parser.add_argument("catalog", help="catalog path or URL")
    parser.add_argument("--out-dir", help="where to write (default: CATALOG/report if local)")
    parser.add_argument("--truth", help="Parquet or CSV with cntr and class (e.g. truth.parquet)")
    parser.add_argument("--map-order", type=int, default=ReportConfig.map_order)
    parser.add_argument("--examples", type=int, default=ReportConfig.n_examples)
    parser.add_argument("--dpi", type=int, default=ReportConfig.dpi)
    cut = parser.add_argument_group("example cutouts")
    cut.add_argument(
        "--images",
        help="image archive: irsa, s3, s3://..., https://... or a local directory "
        "(default: the one the catalog was classified from)",
    )
    cut.add_argument("--model-dir", help="take the RGB settings from this model directory")
    cut.add_argument("--endpoint-url", help="S3 endpoint for an s3:// image archive")
    cut.add_argument("--no-cutouts", action="store_true", help="skip the example cutout grids")
    args = parser.parse_args(argv)
    out_dir = args.out_dir
    if out_dir is None:
        if "://" in args.catalog and not args.catalog.startswith("file://"):
            parser.error("--out-dir is required for a remote catalog")
        out_dir = str(Path(args.catalog.removeprefix("file://")) / "report")
    config = ReportConfig(map_order=args.map_order, n_examples=args.examples, dpi=args.dpi)
    reason = "No image source was given"
    if stamps is None and args.no_cutouts:
        reason = "--no-cutouts was given"
    elif stamps is None:
        spec = args.images or run_args(args.catalog).get("images")
        if not spec:
            reason = "The catalog records no image archive and --images was not given"
        else:
            try:
                stamps = archive_stamps(
                    spec, model_dir=args.model_dir, endpoint_url=args.endpoint_url
                )
            except (OSError, ValueError) as err:
                logger.warning("no example cutouts: %s", err)
                reason = f"The image archive could not be used (`{err}`)"
    path = write_report(
        args.catalog, out_dir, args.truth, stamps=stamps, config=config, no_stamps_reason=reason
    )
    logger.info("report: %s", path)
    return 0
