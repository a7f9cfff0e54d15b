"""Zoomed sky panels for a catalog that covers little of the sky.

A whole-sky Mollweide at the report's map order (0.9 deg pixels at order 6) shows a few
fields of 0.4 deg as specks, and one zoom box spanning all of them is mostly empty. So the
report also counts sources at the fine order :data:`ZOOM_ORDER` (1.7 arcmin pixels), sparsely
(:class:`FineTally`: only covered pixels are kept, and it gives up past :data:`MAX_FINE`
of them, when the catalog covers too much sky for zooms to help), finds the separate covered
regions (:func:`regions`: connected groups of covered map pixels) and draws one zoomed panel
per region (:func:`region_views`), from the fine counts.
"""

from __future__ import annotations

from typing import Any

import healpy as hp
import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES

ZOOM_ORDER = 11
"""HEALPix order of the zoomed panels (nside 2048, 1.7 arcmin pixels)."""
MAX_FINE = 1_000_000
"""Covered fine pixels kept at most (2 % of the sky); beyond that no zoom is drawn."""
MAX_SKY_FRACTION = 0.1
"""Zoomed panels are drawn when the catalog covers less than this fraction of the map pixels."""
MAX_REGIONS = 6
"""Zoomed panels at most (the regions with the most sources)."""
FINE_COLUMNS = ("n", "outlier", *CLASSES)


class FineTally:
    """Sources, outliers and sources per class per covered pixel at :data:`ZOOM_ORDER`."""

    def __init__(self) -> None:
        self.table: pd.DataFrame | None = pd.DataFrame(columns=list(FINE_COLUMNS), dtype=np.int64)

    def add(self, df: pd.DataFrame) -> None:
        """Count one pixel file's rows (``_healpix_29``, ``is_outlier``, ``class``)."""
        if self.table is None:
            return
        fine = df["_healpix_29"].to_numpy() >> (2 * (healpix.MAX_ORDER - ZOOM_ORDER))
        cls = df["class"].astype(object)
        parts = {"n": np.ones(len(df), np.int64), "outlier": df["is_outlier"].to_numpy(np.int64)}
        parts |= {c: (cls == c).to_numpy(np.int64) for c in CLASSES}
        g = pd.DataFrame(parts).groupby(fine).sum()
        self.table = self.table.add(g, fill_value=0).astype(np.int64)
        if len(self.table) > MAX_FINE:
            self.table = None


def regions(counts: np.ndarray, order: int) -> list[np.ndarray]:
    """Covered map pixels grouped into connected regions (HEALPix neighbours), most sources
    first; empty when the coverage is :data:`MAX_SKY_FRACTION` of the sky or more."""
    filled = np.flatnonzero(counts)
    if not 0 < len(filled) < MAX_SKY_FRACTION * len(counts):
        return []
    where = {int(p): i for i, p in enumerate(filled)}
    nb = hp.get_all_neighbours(healpix.nside(order), filled, nest=True).T  # (N, 8)
    rows, cols = [], []
    for i, ns in enumerate(nb):
        for q in ns[ns >= 0]:
            j = where.get(int(q))
            if j is not None:
                rows.append(i)
                cols.append(j)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(filled), len(filled)))
    _, label = connected_components(graph, directed=False)
    groups = [filled[label == k] for k in range(label.max() + 1)]
    groups.sort(key=lambda g: (-int(counts[g].sum()), int(g[0])))
    return groups


def _extent(lon: np.ndarray, lat: np.ndarray, pad: float) -> dict[str, Any]:
    lon0 = float(np.degrees(np.angle(np.mean(np.exp(1j * np.radians(lon))))) % 360)
    dlon = (lon - lon0 + 180) % 360 - 180
    lat0 = float(np.mean(lat))
    half_lat = max(float(lat.max() - lat0), float(lat0 - lat.min())) + pad
    half_lon = max(float(np.abs(dlon).max()) + pad, half_lat / max(np.cos(np.radians(lat0)), 0.05))
    half_lat = max(half_lat, half_lon * np.cos(np.radians(lat0)))  # about square on the sky
    return {
        "rot": (lon0, 0, 0),
        "latra": [max(lat0 - half_lat, -90), min(lat0 + half_lat, 90)],
        "lonra": [max(-half_lon, -180), min(half_lon, 180)],
    }


def region_views(counts: np.ndarray, order: int, fine: pd.DataFrame | None) -> list[dict[str, Any]]:
    """One zoomed Cartesian view per region (at most :data:`MAX_REGIONS`), sized to the fine
    pixels it holds (to the map pixels without fine counts)."""
    views = []
    groups = regions(counts, order)
    for k, group in enumerate(groups[:MAX_REGIONS]):
        if fine is not None and len(fine):
            pix = fine.index.to_numpy(np.int64)
            mine = pix[np.isin(pix >> (2 * (ZOOM_ORDER - order)), group)]
            lon, lat = hp.pix2ang(healpix.nside(ZOOM_ORDER), mine, nest=True, lonlat=True)
            pad = 3 * healpix.pixel_radius_deg(ZOOM_ORDER)
        else:
            lon, lat = hp.pix2ang(healpix.nside(order), group, nest=True, lonlat=True)
            pad = 2 * healpix.pixel_radius_deg(order)
        title = f"region {k + 1}/{min(len(groups), MAX_REGIONS)}"
        if len(groups) > MAX_REGIONS and k == MAX_REGIONS - 1:
            title += f" (of {len(groups)})"
        views.append({"kind": "cart", "title": title, **_extent(lon, lat, pad)})
    return views


def fine_values(fine: pd.DataFrame, column: str, per: str | None) -> np.ndarray:
    """Per covered fine pixel: ``column / per``, or (``per`` None) log10 of ``column`` per
    square degree."""
    if per is None:
        area = hp.nside2pixarea(healpix.nside(ZOOM_ORDER), degrees=True)
        return np.log10(np.maximum(fine[column].to_numpy(np.float64), 1) / area)
    return fine[column].to_numpy(np.float64) / np.maximum(fine[per].to_numpy(np.float64), 1)


def compact_lookup(fine: pd.DataFrame) -> Any:
    """A healpy ``vec2pix`` that maps a direction to its row in ``fine`` (``len(fine)`` where
    it is not covered), so a projector can draw the sparse fine values plus an UNSEEN slot."""
    pix = fine.index.to_numpy(np.int64)
    order = np.argsort(pix)
    sorted_pix = pix[order]

    def lookup(x: Any, y: Any, z: Any) -> np.ndarray:
        p = hp.vec2pix(healpix.nside(ZOOM_ORDER), x, y, z, nest=True)
        i = np.clip(np.searchsorted(sorted_pix, p), 0, len(sorted_pix) - 1)
        return np.where(sorted_pix[i] == p, order[i], len(pix))

    return lookup
