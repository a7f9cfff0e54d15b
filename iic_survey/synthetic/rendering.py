"""Pixels of the synthetic sky: the instrument model of each WISE band and the drawing of sources.

A field of the synthetic sky (:class:`Field`) is a square of sky with the crops of every Atlas
tile that covers it, plus a margin so that a 50" stamp of any field source stays on the crop.
Each band has a PSF, a noise level and a saturation level (:data:`BAND_MODELS`), derived from
its FWHM, 5-sigma depth and saturation magnitude. :func:`render_tile` draws objects into one
tile crop (the objects of a field and their profiles, :class:`FieldObjects`): sky level with a
gentle gradient, sources, noise, saturation, and optionally a NaN patch.

Galaxy profiles (exponential and de Vaucouleurs) are Gaussian mixtures; a quasar host is a
point source plus an exponential disc. Profiles are convolved analytically with a three-Gaussian
PSF (core, wing, halo) of the band's FWHM and added as small stamps straight into the tile
crops: no FFTs. Saturated cores are flat-topped at the same level everywhere on a tile.

Shapes are in arcsec and fluxes in DN (m = MAGZP - 2.5 log10 DN) throughout. The objects drawn
here come from :mod:`iic_survey.synthetic.population`; :mod:`iic_survey.synthetic.skyfiles` writes
the images.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.inputs import tile_header, tiles

ALL_BANDS = (1, 2, 3, 4)
"""The four WISE bands (the catalog always has all four; images are written for some)."""

FWHM_ARCSEC = {1: 6.1, 2: 6.4, 3: 6.5, 4: 12.0}
"""PSF full width at half maximum per band."""
DEPTH5_MAG = {1: 16.9, 2: 15.95, 3: 11.4, 4: 8.0}
"""Point-source 5-sigma depth per band (typical AllWISE at mid ecliptic latitude)."""
BACKGROUND_DN = {1: 40.0, 2: 80.0, 3: 900.0, 4: 250.0}
"""Mean sky level of the images per band."""
SATURATION_MAG = {1: 8.1, 2: 6.7, 3: 3.8, 4: -0.4}
"""Magnitude at which a point source's core saturates (Explanatory Supplement)."""
CROP_MARGIN_PX = 48
"""Crops reach this far beyond a field, so a 50" stamp of any field source stays on the crop."""


# --------------------------------------------------------------------------------------------
# Field geometry


@dataclasses.dataclass(frozen=True)
class Field:
    """One square field of the synthetic sky and the tile crops it is rendered into."""

    index: int
    ra0: float
    dec0: float
    half: float
    crops: dict[str, tile_header.Crop]  # 8-char tile id -> crop of that tile

    def box(self, u_: np.ndarray, v_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sky positions of unit-box coordinates u, v in [-1, 1]."""
        ra = (self.ra0 + u_ * self.half / math.cos(math.radians(self.dec0))) % 360.0
        return ra, self.dec0 + v_ * self.half

    def clip(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Move positions outside the field onto its edge."""
        du = ((ra - self.ra0 + 180.0) % 360.0 - 180.0) * math.cos(math.radians(self.dec0))
        return self.box(
            np.clip(du / self.half, -1, 1), np.clip((dec - self.dec0) / self.half, -1, 1)
        )


def _field_grid(ra0: float, dec0: float, half: float) -> tuple[np.ndarray, np.ndarray]:
    g = np.linspace(-1.0, 1.0, 25)
    gu, gv = np.meshgrid(g, g)
    ra = (ra0 + gu.ravel() * half / math.cos(math.radians(dec0))) % 360.0
    return ra, dec0 + gv.ravel() * half


def field_tiles(ra0: float, dec0: float, half: float) -> dict[str, tile_header.Crop]:
    """Tiles covering a field, each with the crop that holds the field plus a margin."""
    ra, dec = _field_grid(ra0, dec0, half)
    # A tile joins if it holds part of the field, or a stamp near the field edge reaches it.
    cids = sorted(set(tiles.tile_candidates(ra, dec, min_distance_px=-10.0)["coadd_id"]))
    crops: dict[str, tile_header.Crop] = {}
    for cid in cids:
        t_ra, t_dec = tiles.tile_center(cid)
        x, y, _ = tiles.world_to_tile_pixel(ra, dec, t_ra, t_dec)
        x0 = max(0, math.floor(x.min()) - CROP_MARGIN_PX - 1)
        y0 = max(0, math.floor(y.min()) - CROP_MARGIN_PX - 1)
        x1 = min(tiles.TILE_NPIX, math.ceil(x.max()) + CROP_MARGIN_PX)
        y1 = min(tiles.TILE_NPIX, math.ceil(y.max()) + CROP_MARGIN_PX)
        if x1 > x0 and y1 > y0:
            crops[cid] = tile_header.Crop(x0, y0, x1 - x0, y1 - y0)
    return crops


def check_fields_apart(fields: tuple[tuple[float, float], ...], size: float) -> None:
    """Raise if two fields of side ``size`` deg would be rendered into the same Atlas tile."""
    owner: dict[str, int] = {}
    for i, (ra0, dec0) in enumerate(fields):
        for cid in field_tiles(ra0, dec0, size / 2):
            if cid in owner:
                j = owner[cid]
                raise ValueError(
                    f"fields {j} {fields[j]} and {i} {(ra0, dec0)} share Atlas tile {cid}; "
                    f"move them at least ~3.5 deg apart"
                )
            owner[cid] = i


# --------------------------------------------------------------------------------------------
# PSF and noise model

_PSF_WEIGHTS = np.array([0.84, 0.15, 0.01])  # core, wing, halo
_PSF_SCALES = np.array([1.0, 2.2, 8.0])  # sigma of each component / core sigma
_PIX_ARCSEC = tiles.CDELT_DEG * 3600.0


def _mixture_fwhm(weights: np.ndarray, sigmas: np.ndarray) -> float:
    """FWHM of a concentric mixture of normalised 2-D Gaussians."""

    def prof(r: float) -> float:
        return float(np.sum(weights / sigmas**2 * np.exp(-0.5 * r**2 / sigmas**2)))

    lo, hi, half = 0.0, 10.0 * float(sigmas.max()), 0.5 * prof(0.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if prof(mid) > half else (lo, mid)
    return 2.0 * lo


@dataclasses.dataclass(frozen=True)
class BandModel:
    """PSF, noise and saturation of one band, in pixels and DN."""

    band: int
    sigmas_px: np.ndarray  # PSF component sigmas
    nea_px: float  # noise-equivalent area of the PSF
    peak: float  # peak pixel per unit flux of a point source
    noise_dn: float  # per-pixel noise
    sat_dn: float  # flux above the sky at which a pixel saturates

    @property
    def flux_noise(self) -> float:
        """1-sigma flux error of a PSF fit to a point source on the sky noise."""
        return self.noise_dn * math.sqrt(self.nea_px)


def _band_model(band: int) -> BandModel:
    unit = _mixture_fwhm(_PSF_WEIGHTS, _PSF_SCALES)
    sig = _PSF_SCALES * (FWHM_ARCSEC[band] / _PIX_ARCSEC) / unit
    s2 = sig[:, None] ** 2 + sig[None, :] ** 2
    nea = 1.0 / float(np.sum(np.outer(_PSF_WEIGHTS, _PSF_WEIGHTS) / (2 * np.pi * s2)))
    peak = float(np.sum(_PSF_WEIGHTS / (2 * np.pi * sig**2)))
    f5 = flux_dn(DEPTH5_MAG[band], band)
    return BandModel(
        band=band,
        sigmas_px=sig,
        nea_px=nea,
        peak=peak,
        noise_dn=f5 / 5.0 / math.sqrt(nea),
        sat_dn=flux_dn(SATURATION_MAG[band], band) * peak,
    )


def flux_dn(mag: np.ndarray | float, band: int) -> Any:
    """DN of a magnitude: 10**(-0.4 (m - MAGZP))."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - tile_header.MAGZP[band]))


BAND_MODELS: dict[int, BandModel] = {b: _band_model(b) for b in ALL_BANDS}
"""PSF, noise and saturation of each band, derived from FWHM, depth and saturation limits."""


# --------------------------------------------------------------------------------------------
# Rendering

# Gaussian-mixture approximations of Sersic profiles with unit half-light radius
# (amplitudes, variances), fitted for this module (cf. Hogg & Lang 2013).
_MOG = {
    "exp": (
        np.array([0.007567, 0.088448, 0.405835, 0.49815]),
        np.array([0.014003, 0.103052, 0.45345, 1.60172]),
    ),
    "dev": (
        np.array([0.000396, 0.005045, 0.029334, 0.111422, 0.300462, 0.553341]),
        np.array([6.06083e-06, 0.000193514, 0.00252152, 0.0248, 0.234301, 2.85469]),
    ),
}
_K_SHAPE = 6  # components per profile (padded with zero amplitudes)
_STAMP_RADII = np.array([6, 10, 16, 24, 36, 56, 96, 160])  # px; stamps are 2R+1 wide


def shape_components(objs: pd.DataFrame) -> tuple[np.ndarray, ...]:
    """Pre-PSF profile of each object: amplitudes and covariances (px^2), shape (N, K)."""
    n = len(objs)
    amp = np.zeros((n, _K_SHAPE))
    var = np.zeros((n, _K_SHAPE))
    shape = objs["shape"].to_numpy()
    amp[shape == "point", 0] = 1.0
    for name in ("exp", "dev"):
        a, v = _MOG[name]
        sel = shape == name
        amp[sel, : a.size] = a
        var[sel, : a.size] = v
    a, v = _MOG["exp"]
    host = shape == "host"
    f = objs["host_frac"].to_numpy()[host]
    amp[host, 0] = 1 - f
    amp[host, 1 : 1 + a.size] = f[:, None] * a
    var[host, 1 : 1 + a.size] = v
    re2 = (objs["r_e_arcsec"].to_numpy() / _PIX_ARCSEC) ** 2
    major = var * re2[:, None]
    minor = major * objs["axis_ratio"].to_numpy()[:, None] ** 2
    # Position angle east of north; pixel x grows to the west, y to the north.
    pa = np.radians(objs["pa_deg"].to_numpy())[:, None]
    s, c = np.sin(pa), np.cos(pa)
    cxx = major * s**2 + minor * c**2
    cyy = major * c**2 + minor * s**2
    cxy = (minor - major) * s * c
    return amp, cxx, cyy, cxy


@dataclasses.dataclass(frozen=True, eq=False)
class FieldObjects:
    """The objects of a field with their pre-PSF profiles, computed once for all its tiles."""

    objs: pd.DataFrame
    """One row per object (catalogued or not): true positions, magnitudes and shape."""
    shape_comps: tuple[np.ndarray, ...]
    """:func:`shape_components` of ``objs``."""

    @classmethod
    def of(cls, objs: pd.DataFrame) -> FieldObjects:
        """The objects ``objs`` with their profiles."""
        return cls(objs, shape_components(objs))


def _with_psf(shape_comps: tuple[np.ndarray, ...], bm: BandModel) -> tuple[np.ndarray, ...]:
    """Convolve profiles with the band's PSF: covariances add, amplitudes multiply."""
    amp, cxx, cyy, cxy = shape_comps
    s2 = bm.sigmas_px**2
    a = (amp[:, :, None] * _PSF_WEIGHTS[None, None, :]).reshape(len(amp), -1)
    xx = (cxx[:, :, None] + s2[None, None, :]).reshape(len(amp), -1)
    yy = (cyy[:, :, None] + s2[None, None, :]).reshape(len(amp), -1)
    xy = np.repeat(cxy, s2.size, axis=1)
    return a, xx, yy, xy


def _stamp_radius(flux: np.ndarray, comps: tuple[np.ndarray, ...], thr: float) -> np.ndarray:
    """Radius (from _STAMP_RADII) beyond which every component is below ``thr`` DN."""
    a, xx, yy, xy = comps
    det = xx * yy - xy**2
    peak = flux[:, None] * a / (2 * np.pi * np.sqrt(det))
    lam = 0.5 * (xx + yy) + np.sqrt(0.25 * (xx - yy) ** 2 + xy**2)
    r = np.sqrt(2 * np.log(np.clip(peak / thr, 1.0, None)) * lam).max(axis=1)
    idx = np.minimum(np.searchsorted(_STAMP_RADII, r), _STAMP_RADII.size - 1)
    return _STAMP_RADII[idx]


@dataclasses.dataclass(frozen=True, eq=False)
class _Stamps:
    """Sources drawn with one stamp size: where, how bright, and their PSF-convolved profiles."""

    cx: np.ndarray
    """0-based array x position of each source on the crop."""
    cy: np.ndarray
    """0-based array y position."""
    flux: np.ndarray
    """Total flux in DN."""
    comps: tuple[np.ndarray, ...]
    """Gaussian-mixture amplitudes and covariances (px^2), as :func:`_with_psf` gives."""


def _add_stamps(img: np.ndarray, stamps: _Stamps, radius: int, thr: float) -> None:
    """Add Gaussian-mixture stamps of one size (``2 radius + 1`` px) to ``img``.

    Components whose peak stays below ``thr`` for every source are skipped; round components
    (all of a point source's) are evaluated as separable x and y factors.
    """
    cx, cy, flux = stamps.cx, stamps.cy, stamps.flux
    a, xx, yy, xy = stamps.comps
    det = xx * yy - xy**2
    ixx, iyy, ixy = yy / det, xx / det, -xy / det
    norm = flux[:, None] * a / (2 * np.pi * np.sqrt(det))
    live = np.nonzero(norm.max(axis=0) >= thr)[0]
    size = 2 * radius + 1
    ix0 = np.rint(cx).astype(np.int64) - radius
    iy0 = np.rint(cy).astype(np.int64) - radius
    grid = np.arange(size)
    chunk = max(1, 1_000_000 // (size * size))
    ny, nx = img.shape
    for s in range(0, cx.size, chunk):
        sl = slice(s, s + chunk)
        dx = ix0[sl, None] + grid[None, :] - cx[sl, None]  # (n, S) along x
        dy = iy0[sl, None] + grid[None, :] - cy[sl, None]  # (n, S) along y
        stamp = np.zeros((dx.shape[0], size, size))  # (n, y, x)
        dxdy = None
        for k in live:
            if not np.any(xy[sl, k]):
                gx = np.exp(-0.5 * ixx[sl, k, None] * dx**2) * norm[sl, k, None]
                gy = np.exp(-0.5 * iyy[sl, k, None] * dy**2)
                stamp += gy[:, :, None] * gx[:, None, :]
                continue
            if dxdy is None:
                dxdy = dy[:, :, None] * dx[:, None, :]
            q = (ixx[sl, k, None, None] * dx[:, None, :] ** 2) + (
                iyy[sl, k, None, None] * dy[:, :, None] ** 2
            )
            q += (2 * ixy[sl, k, None, None]) * dxdy
            q *= -0.5
            np.exp(q, out=q)
            q *= norm[sl, k, None, None]
            stamp += q
        for j in range(stamp.shape[0]):
            x0, y0 = ix0[s + j], iy0[s + j]
            xa, ya = max(x0, 0), max(y0, 0)
            xb, yb = min(x0 + size, nx), min(y0 + size, ny)
            if xa < xb and ya < yb:
                img[ya:yb, xa:xb] += stamp[j, ya - y0 : yb - y0, xa - x0 : xb - x0]


def render_tile(
    rng: np.random.Generator,
    objects: FieldObjects,
    cid: str,
    crop: tile_header.Crop,
    bands: tuple[int, ...],
    nan_patch: bool,
) -> dict[int, np.ndarray]:
    """Images (float32, per band) of one tile crop: sky, sources, noise, saturation.

    Parameters
    ----------
    rng
        The tile's own random stream (sky gradient, noise, NaN patch).
    objects
        What to draw; objects off the crop are skipped.
    cid, crop
        The tile (8-character id) and the part of it to render.
    bands
        Bands to render.
    nan_patch
        Mask a small patch in one band, as bad frames leave.
    """
    objs, shape_comps = objects.objs, objects.shape_comps
    t_ra, t_dec = tiles.tile_center(cid)
    x, y, front = tiles.world_to_tile_pixel(objs["ra_true"], objs["dec_true"], t_ra, t_dec)
    cx = np.asarray(x) - 1.0 - crop.x0
    cy = np.asarray(y) - 1.0 - crop.y0
    yy, xx = np.mgrid[0 : crop.ny, 0 : crop.nx]
    images: dict[int, np.ndarray] = {}
    for b in bands:
        bm = BAND_MODELS[b]
        comps = _with_psf(shape_comps, bm)
        flux = flux_dn(objs[f"w{b}_true"].to_numpy(), b)
        thr = 0.03 * bm.noise_dn
        radius = _stamp_radius(flux, comps, thr)
        kind = objs["shape"].to_numpy()
        on = (
            front
            & (cx + radius >= 0)
            & (cx - radius <= crop.nx - 1)
            & (cy + radius >= 0)
            & (cy - radius <= crop.ny - 1)
        )
        img = np.zeros((crop.ny, crop.nx))
        for r in np.unique(radius[on]):
            for name in np.unique(kind[on & (radius == r)]):
                sel = on & (radius == r) & (kind == name)
                sub = tuple(c[sel] for c in comps)
                _add_stamps(img, _Stamps(cx[sel], cy[sel], flux[sel], sub), int(r), thr)
        gx, gy = rng.uniform(-1, 1, 2)
        sky_level = BACKGROUND_DN[b] * (
            1 + 0.02 * (gx * (xx + crop.x0) + gy * (yy + crop.y0)) / tiles.TILE_NPIX
        )
        img += sky_level + bm.noise_dn * rng.standard_normal(img.shape)
        # Saturated cores are flat-topped at the same level everywhere on the tile.
        np.minimum(img, BACKGROUND_DN[b] + bm.sat_dn, out=img)
        images[b] = img.astype(np.float32)
    if nan_patch:  # a masked patch in one band, as left by bad frames
        b = int(rng.choice(bands))
        w, h = rng.integers(8, 24, 2)
        px, py = rng.integers(0, max(1, crop.nx - w)), rng.integers(0, max(1, crop.ny - h))
        images[b][py : py + h, px : px + w] = np.nan
    return images
