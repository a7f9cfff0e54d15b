"""Crossmatch of label positions (SDSS spectra) onto AllWISE sources, HEALPix pixel by pixel.

A coarse step (:func:`pixels_near`) decides which order-5 catalog pixels each position's match
circle reaches, its own and any neighbour; a fine step (:func:`crossmatch`) reads each of those
pixels once and matches with ``astropy.coordinates.match_coordinates_sky``. The work scales
with the number of pixels the labels touch, never with the size of the catalog.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core import healpix

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Crossmatch


def pixels_near(
    ra: np.ndarray, dec: np.ndarray, radius_arcsec: float, order: int, n_points: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """(row, pixel) pairs: the NESTED pixels at ``order`` each position's match circle reaches.

    Tests the centre and the vertices of a polygon circumscribing the circle: at match radii
    (arcseconds) a pixel edge is straight, and a half-plane that meets a convex polygon contains
    one of its vertices, so only a pixel corner poking between two vertices could be missed.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    r = np.radians(radius_arcsec / 3600.0) / np.cos(np.pi / n_points)
    # Points at angular distance r from each position, by rotating on the sphere (exact).
    theta = np.linspace(0.0, 2 * np.pi, n_points, endpoint=False)[:, None]  # (P, 1)
    d0, a0 = np.radians(dec)[None, :], np.radians(ra)[None, :]  # (1, N)
    sin_d = np.sin(d0) * np.cos(r) + np.cos(d0) * np.sin(r) * np.cos(theta)  # (P, N)
    d1 = np.arcsin(np.clip(sin_d, -1, 1))
    a1 = a0 + np.arctan2(np.sin(theta) * np.sin(r) * np.cos(d0), np.cos(r) - np.sin(d0) * sin_d)
    ras = np.concatenate([ra[None, :], np.degrees(a1) % 360.0])  # (P + 1, N)
    decs = np.concatenate([dec[None, :], np.degrees(d1)])
    pix = healpix.pixel_of(ras.ravel(), decs.ravel(), order).reshape(ras.shape)
    rows = np.broadcast_to(np.arange(len(ra)), pix.shape)
    pairs = np.unique(np.stack([rows.ravel(), pix.ravel()], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def crossmatch(
    labels: pd.DataFrame,
    catalog: Any,
    radius_arcsec: float = 2.5,
    order: int = 5,
    columns: list[str] | None = None,
) -> pd.DataFrame:
    """Nearest AllWISE source within ``radius_arcsec`` of each label position, one to one.

    Parameters
    ----------
    labels
        Must have ``ra``, ``dec`` (degrees) and ``class``; other columns are carried along.
    catalog
        An :class:`iic_survey.inputs.catalog.AllWiseCatalog` (anything with ``pixels(order)`` and
        ``read_pixel(pixel, order, columns)``); each needed pixel is read exactly once.
    columns
        Catalog columns to return (``cntr``, ``ra``, ``dec`` are always read).

    Returns
    -------
    The matched catalog rows with the label columns joined (label ``ra``/``dec`` renamed to
    ``label_ra``/``label_dec``) and ``sep_arcsec``. A WISE source claimed by several labels keeps
    the nearest one only (a spectrum and its duplicate cannot both become training rows).
    """
    from astropy import units as u
    from astropy.coordinates import SkyCoord, match_coordinates_sky

    if radius_arcsec <= 0:
        raise ValueError(f"match radius must be positive, got {radius_arcsec}")
    cols = list(dict.fromkeys(["cntr", "ra", "dec", *(columns or [])]))
    rows, pix = pixels_near(labels["ra"].to_numpy(), labels["dec"].to_numpy(), radius_arcsec, order)
    available = np.intersect1d(np.unique(pix), np.asarray(catalog.pixels(order), dtype=np.int64))
    lab_coord = SkyCoord(labels["ra"].to_numpy() * u.deg, labels["dec"].to_numpy() * u.deg)
    candidates: list[pd.DataFrame] = []  # only rows within the radius: memory ~ matches
    for p in available:
        idx = np.unique(rows[pix == p])
        cat = catalog.read_pixel(int(p), order, columns=cols)
        if cat.empty:
            continue
        cat_coord = SkyCoord(cat["ra"].to_numpy() * u.deg, cat["dec"].to_numpy() * u.deg)
        j, sep, _ = match_coordinates_sky(lab_coord[idx], cat_coord)
        sep_as = sep.to_value(u.arcsec)
        ok = sep_as <= radius_arcsec
        cand = cat.iloc[j[ok]].reset_index(drop=True)
        cand["_label"] = idx[ok]
        cand["sep_arcsec"] = sep_as[ok]
        candidates.append(cand)
    if not candidates or sum(len(c) for c in candidates) == 0:
        logger.info('crossmatch: no label within %.2f" of a catalog source', radius_arcsec)
        return pd.DataFrame(columns=[*cols, "sep_arcsec"])
    # A label near a pixel edge may match in two pixels: keep its nearest source; then a source
    # claimed by several labels keeps its nearest label.
    best = (
        pd.concat(candidates, ignore_index=True)
        .sort_values(["_label", "sep_arcsec"], kind="stable")
        .drop_duplicates("_label")
    )
    best = best.sort_values(["cntr", "sep_arcsec"], kind="stable").drop_duplicates("cntr")
    lab = labels.iloc[best["_label"].to_numpy()].reset_index(drop=True)
    lab = lab.rename(columns={"ra": "label_ra", "dec": "label_dec"})
    best = best.drop(columns="_label").reset_index(drop=True)
    lab = lab.drop(columns=[c for c in lab.columns if c in best.columns])
    out = pd.concat([best, lab], axis=1).sort_values("cntr", kind="stable")
    logger.info(
        'crossmatch: %d of %d labels matched within %.2f" over %d pixels',
        len(out),
        len(labels),
        radius_arcsec,
        len(available),
    )
    return out.reset_index(drop=True)
