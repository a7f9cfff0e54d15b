"""HEALPix helpers: pixel maths across orders, in the NESTED scheme used by IRSA and HATS.

Everything here is a pure function over numpy arrays. healpy does the spherical geometry; the
order arithmetic (parents, children, HATS paths) is plain integer maths because in the NESTED
scheme a pixel's children at order ``k + d`` are the ``4**d`` consecutive indices starting at
``pixel << 2d``.
"""

from __future__ import annotations

import healpy as hp
import numpy as np

MAX_ORDER = 29
"""The deepest order HATS uses (``_healpix_29``); nside = 2**29 still fits an int64 index."""


def check_order(order: int) -> int:
    """Return ``order`` as an int, or raise if it is not a HEALPix order 0..29."""
    if isinstance(order, bool) or int(order) != order or not 0 <= int(order) <= MAX_ORDER:
        raise ValueError(f"HEALPix order must be an integer in 0..{MAX_ORDER}, got {order!r}")
    return int(order)


def nside(order: int) -> int:
    """nside = 2**order."""
    return 1 << check_order(order)


def npix(order: int) -> int:
    """Number of pixels on the sphere at ``order``."""
    return 12 * nside(order) ** 2


def check_pixels(pixels: np.ndarray | int, order: int) -> np.ndarray:
    """Return pixels as int64, or raise if any is outside 0..npix(order)-1."""
    arr = np.atleast_1d(np.asarray(pixels)).astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= npix(order)):
        raise ValueError(f"pixel index out of range for order {order}: {arr.min()}..{arr.max()}")
    return arr


def valid_coordinates(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """True where (ra, dec) is a position on the sky: finite, ra in [0, 360], dec in [-90, 90]."""
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90) & (ra >= 0) & (ra <= 360)


def pixel_of(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    """NESTED pixel index at ``order`` of each (ra, dec) in degrees.

    Raises
    ------
    ValueError
        If a coordinate is NaN or outside ra in [0, 360], dec in [-90, 90].
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    bad = ~valid_coordinates(ra, dec)
    if np.any(bad):
        raise ValueError(f"{int(np.sum(bad))} coordinates are NaN or out of range")
    return np.asarray(hp.ang2pix(nside(order), ra, dec, nest=True, lonlat=True), dtype=np.int64)


def healpix_29(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """The HATS spatial index ``_healpix_29``: the NESTED order-29 pixel of each position."""
    return pixel_of(ra, dec, MAX_ORDER)


def parent(pixels: np.ndarray | int, order: int, parent_order: int) -> np.ndarray:
    """The ancestor at ``parent_order`` (<= order) of NESTED ``pixels`` at ``order``."""
    d = check_order(order) - check_order(parent_order)
    if d < 0:
        raise ValueError(f"parent order {parent_order} is deeper than order {order}")
    return check_pixels(pixels, order) >> (2 * d)


def children(pixel: int, order: int, child_order: int) -> np.ndarray:
    """All descendants at ``child_order`` (>= order) of one NESTED pixel, in index order."""
    d = check_order(child_order) - check_order(order)
    if d < 0:
        raise ValueError(f"child order {child_order} is shallower than order {order}")
    first = int(check_pixels(pixel, order)[0]) << (2 * d)
    return np.arange(first, first + (1 << (2 * d)), dtype=np.int64)


def to_order(pixels: np.ndarray, order: int, new_order: int) -> np.ndarray:
    """Map pixels to another order: parents when shallower, all children when deeper."""
    pixels = check_pixels(pixels, order)
    if new_order <= order:
        return np.unique(parent(pixels, order, new_order))
    return np.concatenate([children(int(p), order, new_order) for p in pixels])


def pixel_center(pixel: int, order: int) -> tuple[float, float]:
    """(ra, dec) in degrees of a pixel's centre."""
    ra, dec = hp.pix2ang(nside(order), int(check_pixels(pixel, order)[0]), nest=True, lonlat=True)
    return float(ra), float(dec)


def pixel_radius_deg(order: int) -> float:
    """An upper bound on the angular distance from a pixel's centre to its corners."""
    return float(np.degrees(hp.max_pixrad(nside(order))))


def cone_pixels(ra: float, dec: float, radius_deg: float, order: int) -> np.ndarray:
    """NESTED pixels at ``order`` that overlap a cone (inclusive: may include a few extra)."""
    if not 0 < radius_deg <= 180:
        raise ValueError(f"cone radius must be in (0, 180] degrees, got {radius_deg}")
    vec = hp.ang2vec(ra, dec, lonlat=True)
    pix = hp.query_disc(nside(order), vec, np.radians(radius_deg), inclusive=True, nest=True)
    return np.sort(np.asarray(pix, dtype=np.int64))


def hats_dir(pixel: int) -> int:
    """HATS directory number of a pixel: ``(pixel // 10000) * 10000``."""
    return (int(pixel) // 10_000) * 10_000


def hats_path(order: int, pixel: int) -> str:
    """Relative HATS path of a partition: ``Norder=K/Dir=D/Npix=N.parquet``."""
    check_pixels(pixel, order)
    return f"Norder={order}/Dir={hats_dir(pixel)}/Npix={int(pixel)}.parquet"
