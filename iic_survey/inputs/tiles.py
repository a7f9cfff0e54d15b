"""The AllWISE Atlas tile grid: tile centres, ids, WCS and headers, computed in code.

The Atlas divides the sky into 18,240 tiles of 4095 x 4095 pixels at 1.375"/px, in the SIN
projection with north up. Their centres lie on 119 iso-declination rings spaced by exactly
5452" (= 4096 px x 1.375" less a 3' overlap), from -89.352222 deg to +89.352222 deg; ring ``i``
holds ``n_i`` tiles at ``ra = k * step_i`` (k = 0 .. n_i - 1), mirror-symmetric about the
equator.

The WISE pipeline ("TileWISEsky", F. Masci) chose ``n_i`` from a minimum overlap and then
"tweaked the overlap at each declination band" to spread the tiles evenly. That tweak is not
published and does not reduce to ``360 / n_i``: the real steps differ from it by up to 1.5e-3
(relative) near the poles and 4e-6 at the equator, which moves the last tile of a ring by 5"
(equator) to 0.5 deg (pole). Nor do the ring counts follow from a simple overlap rule. So the
60 (count, step) pairs of the rings are tabulated below (from the Atlas metadata, to 1e-10
deg); everything else -- declinations, right ascensions, coadd ids, WCS, headers and
the tile search -- is computed. tests/inputs/test_tiles.py checks every tile against the real list.

Coadd ids follow the Explanatory Supplement: ``RRRR`` is ``int(10 * ra)`` (truncated),
``DDD`` is ``int(10 * dec)`` for dec >= 0 and ``ceil(10 * |dec|)`` for dec < 0, and AllWISE
appends ``_ac51``.

Pixel coordinates here are FITS 1-based: the centre of the first pixel is (1, 1), a full tile
spans pixel centres 1 .. 4095 and its reference pixel is (2048, 2048).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

TILE_NPIX = 4095
"""Pixels along each side of a full Atlas tile."""
PIXSCALE_ARCSEC = 1.375
"""Atlas pixel scale."""
CDELT_DEG = 0.000381944
"""The pixel scale as the Atlas headers write it (CDELT2 = -CDELT1); used for every WCS here."""
CRPIX_FULL = 2048.0
"""Reference pixel of a full tile: 0.5 * (NAXIS + 1)."""
HALF_EXTENT_PX = 2047.5
"""Distance from the tile centre to the tile's outer pixel edges, in pixels."""
AC51 = "_ac51"
"""Suffix of AllWISE Atlas coadd ids."""
DEC_SPACING_ARCSEC = 5452.0
"""Spacing of the declination rings."""

# (tiles in ring, RA step in deg) for rings |i| = 0 .. 59 (equator to pole); see the module
# docstring for why these are tabulated rather than derived.
_RINGS: tuple[tuple[int, float], ...] = (
    (238, 1.5126107571), (238, 1.5126107293), (238, 1.5126116951), (237, 1.5189862732),
    (237, 1.5189929674), (236, 1.5254236767), (235, 1.5319135726), (234, 1.5384600696),
    (233, 1.5450642148), (232, 1.5517293897), (230, 1.5652150487), (229, 1.5720592752),
    (227, 1.5859071157), (225, 1.6000031481), (223, 1.6143554540), (221, 1.6289676134),
    (218, 1.6513759263), (216, 1.6666755966), (213, 1.6901472874), (210, 1.7142891547),
    (207, 1.7391347222), (204, 1.7647145431), (200, 1.7999926824), (197, 1.8274131724),
    (193, 1.8652781899), (190, 1.8947488073), (186, 1.9354930184), (182, 1.9780311597),
    (178, 2.0224853218), (173, 2.0809099915), (169, 2.1301766553), (165, 2.1818367670),
    (160, 2.2499998317), (155, 2.3225693437), (151, 2.3841319753), (146, 2.4657806836),
    (141, 2.5532222240), (135, 2.6666322297), (130, 2.7692182082), (125, 2.8800041065),
    (120, 3.0000503490), (114, 3.1578913615), (109, 3.3028204618), (103, 3.4951640273),
    (97, 3.7113173499), (91, 3.9559374632), (86, 4.1861758458), (80, 4.5001297664),
    (74, 4.8650018988), (68, 5.2942925215), (62, 5.8067212513), (56, 6.4290174353),
    (50, 7.2007117217), (43, 8.3714256856), (37, 9.7294615142), (31, 11.6131641133),
    (25, 14.4043782731), (18, 19.9864772910), (12, 29.9910718741), (6, 60.0921856286),
)  # fmt: skip
N_RINGS_HALF = len(_RINGS) - 1
"""Rings north (or south) of the equatorial ring."""


def coadd_id_of(ra: float, dec: float) -> str:
    """The 8-character Atlas id of a tile centred at (ra, dec), e.g. ``'0000m016'``."""
    rrrr = math.floor(ra * 10.0 + 1e-9)
    if dec >= 0:
        return f"{rrrr:04d}p{math.floor(dec * 10.0 + 1e-9):03d}"
    return f"{rrrr:04d}m{math.ceil(-dec * 10.0 - 1e-9):03d}"


@functools.lru_cache(maxsize=1)
def _grid_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(coadd_id, ra, dec, ring, k) of every tile, rings from south to north, then by RA."""
    ids: list[str] = []
    ras: list[float] = []
    decs: list[float] = []
    rings: list[int] = []
    ks: list[int] = []
    for ring in range(-N_RINGS_HALF, N_RINGS_HALF + 1):
        n, step = _RINGS[abs(ring)]
        dec = ring * DEC_SPACING_ARCSEC / 3600.0
        for k in range(n):
            ra = k * step
            # The id comes from the unrounded centre, as in the pipeline (4.4999997 -> '0044').
            ids.append(coadd_id_of(ra, dec))
            ras.append(round(ra, 6))
            decs.append(round(dec, 6))
            rings.append(ring)
            ks.append(k)
    return (
        np.array(ids),
        np.array(ras),
        np.array(decs),
        np.array(rings, dtype=np.int64),
        np.array(ks, dtype=np.int64),
    )


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, int]:
    return {cid: i for i, cid in enumerate(_grid_arrays()[0])}


def tile_grid() -> pd.DataFrame:
    """All 18,240 Atlas tiles: ``coadd_id`` (8 chars), ``ra``, ``dec`` (centre, deg), ``ring``."""
    ids, ra, dec, ring, _ = _grid_arrays()
    return pd.DataFrame({"coadd_id": ids, "ra": ra, "dec": dec, "ring": ring})


def atlas_id(cid8: str) -> str:
    """The AllWISE coadd id of a tile: ``'0904m213'`` -> ``'0904m213_ac51'``."""
    return base_id(cid8) + AC51


def base_id(coadd_id: str) -> str:
    """The 8-character tile id, with or without the ``_ac51`` suffix; raises if unknown."""
    cid = str(coadd_id)
    if cid.endswith(AC51):
        cid = cid[: -len(AC51)]
    if cid not in _index():
        raise ValueError(
            f"unknown Atlas tile {coadd_id!r}: expected an id such as '0904m213' or "
            f"'0904m213_ac51' from tile_grid()"
        )
    return cid


def tile_center(coadd_id: str) -> tuple[float, float]:
    """(ra, dec) in degrees of a tile's centre (CRVAL1, CRVAL2 of its images)."""
    i = _index()[base_id(coadd_id)]
    _, ra, dec, _, _ = _grid_arrays()
    return float(ra[i]), float(dec[i])


def world_to_tile_pixel(
    ra: ArrayLike, dec: ArrayLike, ra0: ArrayLike, dec0: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full-tile FITS pixel (x, y) of positions on tiles centred at (ra0, dec0); broadcasts.

    This is the SIN projection of the Atlas headers (CRPIX 2048, CDELT -/+0.000381944, no
    rotation). Returns ``(x, y, front)`` where ``front`` is False for points on the far
    hemisphere, whose (x, y) are meaningless.
    """
    ra_r = np.radians(np.asarray(ra, dtype=np.float64))
    dec_r = np.radians(np.asarray(dec, dtype=np.float64))
    ra0_r = np.radians(np.asarray(ra0, dtype=np.float64))
    dec0_r = np.radians(np.asarray(dec0, dtype=np.float64))
    dra = ra_r - ra0_r
    cos_dec = np.cos(dec_r)
    xi = cos_dec * np.sin(dra)
    eta = np.sin(dec_r) * np.cos(dec0_r) - cos_dec * np.sin(dec0_r) * np.cos(dra)
    front = np.sin(dec_r) * np.sin(dec0_r) + cos_dec * np.cos(dec0_r) * np.cos(dra) > 0
    x = CRPIX_FULL - np.degrees(xi) / CDELT_DEG
    y = CRPIX_FULL + np.degrees(eta) / CDELT_DEG
    return x, y, front


def distance_to_edge_px(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Pixels from a full-tile position to the nearest tile edge (negative outside the tile).

    The edges are the outer edges of pixels 1 and 4095, i.e. 2047.5 px from the centre.
    """
    dx = np.abs(np.asarray(x, dtype=np.float64) - CRPIX_FULL)
    return HALF_EXTENT_PX - np.maximum(dx, np.abs(np.asarray(y, dtype=np.float64) - CRPIX_FULL))


# A tile's half-diagonal is 1.106 deg; rings are 1.514 deg apart, so a point can only fall on
# tiles of its own ring and the ring on either side.
_SEARCH_RADIUS_DEG = 1.2


def tile_candidates(ra: ArrayLike, dec: ArrayLike, min_distance_px: float = 0.0) -> pd.DataFrame:
    """Every (position, tile) pair where the tile holds the position, with pixel coordinates.

    Parameters
    ----------
    ra, dec
        Positions in degrees (arrays of the same shape, or scalars).
    min_distance_px
        Keep pairs at least this far inside the tile edge (negative values keep positions just
        outside the tile, e.g. to find tiles a stamp spills onto).

    Returns
    -------
    pandas.DataFrame
        Columns ``source`` (index into the flattened input), ``coadd_id`` (8 chars), ``x``,
        ``y`` (full-tile FITS pixel) and ``distance_px`` (to the nearest edge), sorted by
        source and then by distance, largest first.
    """
    ra_a = np.atleast_1d(np.asarray(ra, dtype=np.float64)).ravel() % 360.0
    dec_a = np.atleast_1d(np.asarray(dec, dtype=np.float64)).ravel()
    if np.any(~np.isfinite(ra_a) | ~np.isfinite(dec_a) | (np.abs(dec_a) > 90)):
        raise ValueError("tile_candidates needs finite ra and dec with |dec| <= 90")
    ids, t_ra, t_dec, t_ring, _ = _grid_arrays()
    ring_start = np.searchsorted(t_ring, np.arange(-N_RINGS_HALF, N_RINGS_HALF + 2))
    spacing = DEC_SPACING_ARCSEC / 3600.0
    src_parts: list[np.ndarray] = []
    tile_parts: list[np.ndarray] = []
    nearest = np.rint(dec_a / spacing).astype(np.int64)
    for shift in (-1, 0, 1):
        ring = nearest + shift
        ok = np.abs(ring) <= N_RINGS_HALF
        for r in np.unique(ring[ok]):
            sel = np.nonzero(ok & (ring == r))[0]
            n, step = _RINGS[abs(int(r))]
            first = ring_start[r + N_RINGS_HALF]
            cos_lim = max(math.cos(math.radians(abs(r * spacing) + _SEARCH_RADIUS_DEG)), 1e-3)
            half_width = math.ceil(_SEARCH_RADIUS_DEG / cos_lim / step) + 1
            if 2 * half_width + 1 >= n:
                offsets = np.arange(n)[None, :]
                ks = np.broadcast_to(offsets, (sel.size, n))
            else:
                k0 = np.rint(ra_a[sel] / step).astype(np.int64)
                ks = (k0[:, None] + np.arange(-half_width, half_width + 1)[None, :]) % n
            src_parts.append(np.repeat(sel, ks.shape[1]))
            tile_parts.append(first + ks.ravel())
    if not src_parts:
        return _empty_candidates()
    src = np.concatenate(src_parts)
    tile = np.concatenate(tile_parts)
    x, y, front = world_to_tile_pixel(ra_a[src], dec_a[src], t_ra[tile], t_dec[tile])
    dist = distance_to_edge_px(x, y)
    keep = front & (dist >= min_distance_px)
    out = pd.DataFrame(
        {
            "source": src[keep],
            "coadd_id": ids[tile[keep]],
            "x": x[keep],
            "y": y[keep],
            "distance_px": dist[keep],
        }
    )
    out = out.drop_duplicates(["source", "coadd_id"])
    out = out.sort_values(["source", "distance_px"], ascending=[True, False], kind="stable")
    return out.reset_index(drop=True)


def _empty_candidates() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "source": np.zeros(0, np.int64),
            "coadd_id": np.zeros(0, dtype="<U8"),
            "x": np.zeros(0),
            "y": np.zeros(0),
            "distance_px": np.zeros(0),
        }
    )


def tiles_containing(ra: float, dec: float) -> list[tuple[str, float]]:
    """Tiles that hold (ra, dec): ``(coadd_id + '_ac51', distance to edge in px)``, best first.

    The best tile is the one where the position lies furthest from the edge, which is the tile
    AllWISE measures a source on.
    """
    cand = tile_candidates(np.asarray([ra]), np.asarray([dec]))
    return [
        (c + AC51, float(d)) for c, d in zip(cand["coadd_id"], cand["distance_px"], strict=True)
    ]


def best_tiles(ra: ArrayLike, dec: ArrayLike) -> pd.DataFrame:
    """For each position, the tile it lies furthest inside, with its full-tile pixel (x, y).

    Returns a frame indexed like the flattened input with columns ``coadd_id`` (8 chars),
    ``x``, ``y``, ``distance_px``.
    """
    cand = tile_candidates(ra, dec)
    best = cand.drop_duplicates("source", keep="first").set_index("source")
    n = np.atleast_1d(np.asarray(ra)).size
    if len(best) != n:
        raise ValueError(f"{n - len(best)} positions fall on no tile (should not happen)")
    return best.sort_index()
