"""Cutting stamps: the settings, the batch result and the pixel arithmetic of one image.

:class:`CutoutConfig` says how stamps are cut (size, bands, tiles or the IBE service, how a
source without a ``coadd_id`` finds its tile), :class:`Stamps` holds a batch's stamps row for
row with its :class:`~iic_survey.core.flags.QualityFlag` bits, and :func:`cut_stamps` cuts
stamps out of one image, or out of a window of its rows, NaN past the edges. Choosing tiles and
reading them for a whole batch is :func:`iic_survey.stamps.cutter.cut_sources`.

Pixel convention: astropy's ``world_to_pixel`` gives 0-based pixel coordinates whose integer
values are pixel centres (FITS pixel ``n`` is 0-based ``n - 1``; the catalog's ``wx`` is
``x + 1``). The stamp's centre pixel ``[h, h]`` (``h = size // 2``) is the tile pixel nearest
the source, ``(round(x), round(y))``, so the source lies at ``(h + dx, h + dy)`` in the stamp with
``dx, dy`` in [-0.5, 0.5) (:attr:`Stamps.offset`). Stamps keep the tile's orientation: axis -2 is
the tile's y (NAXIS2), axis -1 its x (NAXIS1); for Atlas tiles north is up, east left.
Pixels are in DN as stored; pixels off the image are NaN.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core import healpix
from iic_survey.core.config import check_choice
from iic_survey.core.constants import BANDS
from iic_survey.inputs.ibe import IRSA_SIA_URL, ServiceConfig
from iic_survey.inputs.retry import RetryPolicy

REQUIRED_COLUMNS: tuple[str, ...] = ("ra", "dec")
"""Columns a batch must have; ``coadd_id`` is used when present."""
_METHODS = ("tiles", "service")
_LOOKUPS = ("grid", "sia", "none")


@dataclasses.dataclass(frozen=True)
class CutoutConfig:
    """How stamps are cut."""

    size_arcsec: float = 50.0
    """Stamp side; rounded up to an odd number of pixels (50″ -> 37 px)."""
    pixscale_arcsec: float = 1.375
    """Atlas pixel scale, used only to size the stamp."""
    bands: tuple[int, ...] = BANDS
    """WISE bands, in stamp channel order."""
    method: str = "tiles"
    """``"tiles"``: read tiles (the sky path); ``"service"``: one IBE request per source and
    band (small lists over HTTPS; no neighbour-tile search)."""
    tile_lookup: str = "grid"
    """How rows without a ``coadd_id`` find their tile: ``"grid"`` (computed Atlas grid),
    ``"sia"`` (SIA v2 at ``sia_url``) or ``"none"`` (flag them BAND_MISSING)."""
    sia_url: str = IRSA_SIA_URL
    """SIA v2 endpoint for ``tile_lookup="sia"``."""
    use_neighbours: bool = True
    """Near an edge, move to an overlapping tile that holds more of the stamp."""
    max_workers: int = 4
    """Threads reading tiles at once."""
    merge_gap_rows: int = 512
    """Remote reads: stamp row ranges closer than this are read as one window."""
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    """Retries of remote tile reads that fail on the network."""
    service: ServiceConfig = dataclasses.field(default_factory=ServiceConfig)
    """Settings of the IBE cutout service (``method="service"``)."""
    saturation_w1_mag: float = 8.0
    """Rows with ``w1mpro`` brighter than this are flagged SATURATED."""

    def __post_init__(self) -> None:
        if not self.size_arcsec > 0 or not self.pixscale_arcsec > 0:
            raise ValueError("size_arcsec and pixscale_arcsec must be > 0")
        bands = tuple(int(b) for b in self.bands)
        if not bands or any(b not in (1, 2, 3, 4) for b in bands) or len(set(bands)) < len(bands):
            raise ValueError(f"bands must be distinct WISE bands 1..4, got {self.bands!r}")
        object.__setattr__(self, "bands", bands)
        check_choice("method", self.method, _METHODS)
        check_choice("tile_lookup", self.tile_lookup, _LOOKUPS)
        if self.max_workers < 1 or self.merge_gap_rows < 0:
            raise ValueError("max_workers must be >= 1 and merge_gap_rows >= 0")

    @property
    def size_px(self) -> int:
        """Stamp side in pixels: the odd number at or above size / pixscale."""
        n = int(np.ceil(self.size_arcsec / self.pixscale_arcsec - 1e-9))
        return n if n % 2 else n + 1


@dataclasses.dataclass(frozen=True)
class Stamps:
    """Cutouts of a batch, row for row with the input."""

    stamps: np.ndarray
    """float32 (N, B, S, S) in DN; NaN off the image or where a band is missing."""
    flags: np.ndarray
    """uint32 (N,) :class:`~iic_survey.core.flags.QualityFlag` bits."""
    tile: np.ndarray
    """(N,) object: the ``coadd_id`` each stamp was cut from (``''`` if none)."""
    offset: np.ndarray
    """float32 (N, 2): (dx, dy) of the source from the stamp's centre pixel (first band)."""

    def __post_init__(self) -> None:
        n = len(self.stamps)
        if self.stamps.ndim != 4 or any(len(a) != n for a in (self.flags, self.tile, self.offset)):
            raise ValueError("stamps, flags, tile and offset must have the same length N")

    def __len__(self) -> int:
        return len(self.stamps)


def batch_positions(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ra, dec (float64) and a mask of usable positions; raise on missing columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cut_sources needs columns {missing}; got {list(df.columns)}")
    ra = pd.to_numeric(df["ra"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    dec = pd.to_numeric(df["dec"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return ra, dec, healpix.valid_coordinates(ra, dec)


def cut_stamps(
    image: Any, x: np.ndarray, y: np.ndarray, size: int, row0: int = 0, shape: Sequence[int] = ()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut ``size``-pixel stamps centred on the pixels nearest (x, y), NaN past the edges.

    Parameters
    ----------
    image
        2-D array (or memmap) holding rows ``row0 ...`` of an image of ``shape`` (default: the
        array's own shape); all rows the stamps need must be in it.
    x, y
        0-based pixel coordinates on the full image (astropy convention).

    Returns
    -------
    stamps
        float32 (N, size, size).
    off_edge
        bool (N,): the stamp reaches past the image edge (padded with NaN).
    offset
        float32 (N, 2): (x - round(x), y - round(y)).
    """
    ny, nx = tuple(shape) or image.shape
    h = size // 2
    good = np.isfinite(x) & np.isfinite(y) & (np.abs(x) < 1e7) & (np.abs(y) < 1e7)
    ix = np.where(good, np.floor(np.where(good, x, 0) + 0.5), -(10**7)).astype(np.int64)
    iy = np.where(good, np.floor(np.where(good, y, 0) + 0.5), -(10**7)).astype(np.int64)
    stamps = np.empty((len(ix), size, size), dtype=np.float32)
    # Stamps wholly on the image (nearly all): windows of a strided view, copied a row at a time
    inside = (ix >= h) & (ix < nx - h) & (iy >= max(h, row0 + h))
    inside &= iy < min(ny, row0 + image.shape[0]) - h
    if inside.any():
        view = np.lib.stride_tricks.sliding_window_view(image, (size, size))
        stamps[inside] = view[iy[inside] - h - row0, ix[inside] - h]
    # The rest reach past an edge: gather what is on the image, NaN elsewhere
    rest = np.flatnonzero(~inside)
    span = np.arange(-h, h + 1)
    rows, cols = iy[rest, None] + span, ix[rest, None] + span  # (M, S) each
    rvalid, cvalid = (rows >= 0) & (rows < ny), (cols >= 0) & (cols < nx)
    if len(rest):
        r = np.clip(rows - row0, 0, image.shape[0] - 1)
        c = np.clip(cols, 0, nx - 1)
        part = np.asarray(image[r[:, :, None], c[:, None, :]], dtype=np.float32)  # (M, S, S)
        part[~(rvalid[:, :, None] & cvalid[:, None, :])] = np.nan
        stamps[rest] = part
    off_edge = np.zeros(len(ix), dtype=bool)
    off_edge[rest] = ~(rvalid.all(axis=1) & cvalid.all(axis=1))
    offset = np.stack([x - ix, y - iy], axis=1).astype(np.float32)
    offset[~good] = np.nan
    return stamps, off_edge, offset
