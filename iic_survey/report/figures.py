"""The report's figures: HEALPix sky maps, example cutout grids, and saving them as PNG.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot, so importing or
running this never changes the caller's matplotlib backend. :func:`map_figure` projects
:class:`MapPanel` values with healpy's Mollweide projector, plus a zoomed panel per covered
region when the catalog covers under 10 % of the sky (:func:`map_views`, :mod:`.zoom`);
:func:`stamp_grid` shows example cutouts with a reticle and :func:`display_stretch` brightens
each one for the eye.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from iic_survey.report import zoom
from iic_survey.report.config import FIGSIZES


def save_png(fig: Figure, path: Path, dpi: int) -> Path:
    """Draw ``fig`` on an Agg canvas and save it at ``path`` (white background)."""
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi, facecolor="white")
    return path


def map_views(
    counts: np.ndarray, order: int, fine: pd.DataFrame | None = None
) -> list[dict[str, Any]]:
    """Mollweide always; when the data cover under 10 % of the sky, one zoomed Cartesian view
    per covered region (:func:`iic_survey.report.zoom.region_views`)."""
    return [{"kind": "moll"}, *zoom.region_views(counts, order, fine)]


@dataclasses.dataclass(frozen=True)
class MapPanel:
    """One sky map: values per HEALPix pixel (``hp.UNSEEN`` where no sources) and its look."""

    title: str
    values: np.ndarray
    label: str
    cmap: str
    vmin: float
    vmax: float
    fine: np.ndarray | None = None
    """The same quantity per covered pixel at the zoom order (rows of the report's fine
    table), drawn in the zoomed views; None: zoomed views show ``values``."""


def _draw_map(
    fig: Figure, ax: Any, panel: MapPanel, view: dict[str, Any], xsize: int, lookup: Any = None
) -> None:
    if view["kind"] == "moll":
        proj: Any = hp.projector.MollweideProj(xsize=xsize)
    else:
        proj = hp.projector.CartesianProj(
            xsize=xsize, rot=view["rot"], lonra=view["lonra"], latra=view["latra"]
        )
    if view["kind"] == "cart" and panel.fine is not None and lookup is not None:
        img = proj.projmap(np.append(panel.fine, hp.UNSEEN), lookup)  # the sparse fine counts
    else:
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
    zoomed = f" ({view.get('title', 'zoom')})" if view["kind"] == "cart" else ""
    ax.set_title(panel.title + zoomed, fontsize=10)
    fig.colorbar(im, ax=ax, orientation="horizontal", shrink=0.7, pad=0.08, label=panel.label)


def map_figure(
    panels: list[MapPanel], views: list[dict[str, Any]], name: str, dpi: int, lookup: Any = None
) -> Figure:
    """Panels side by side, one row per view; projected at about the panel's pixel width.

    ``lookup`` (:func:`iic_survey.report.zoom.compact_lookup`) draws the panels' ``fine`` values
    in the zoomed views."""
    w, h = FIGSIZES[name]
    fig = Figure(figsize=(w, h * len(views)), layout="constrained")
    xsize = int(np.clip(w / len(panels) * dpi, 100, 1600))
    axes = fig.subplots(len(views), len(panels), squeeze=False)
    for r, view in enumerate(views):
        for c, panel in enumerate(panels):
            _draw_map(fig, axes[r][c], panel, view, xsize, lookup)
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


def stamp_grid(
    rows: pd.DataFrame, images: np.ndarray, title: str, size: tuple[float, float]
) -> Figure:
    """A square grid of cutouts, each titled with its designation, class and confidence."""
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
