"""Cut many 50″ W1/W2/W3 stamps out of Atlas tiles, reading each tile and band once.

A batch of sources (``ra``, ``dec``, usually ``coadd_id``; ``cntr``, ``wx``, ``wy`` are carried
but not needed) goes through three steps:

1. **Choose a tile per source.** The catalog's ``coadd_id`` is used when the whole stamp fits on
   it. Otherwise (near an edge, tile missing or unreadable, or no ``coadd_id``) the tiles that
   hold the position are asked for (:func:`iic_survey.tiles.tiles_containing`, or SIA v2), their
   W1 headers are read, and the one on which the source lies furthest from the edge wins; it
   must exist in the archive. Atlas tiles overlap by ~2.5′, so most edge sources find a tile
   that holds their whole stamp.
2. **Read each (tile, band) once** and cut all of that tile's sources from it: a local tile is
   memory-mapped and indexed in place; a remote tile is read with ``.section`` over the rows the
   stamps need (one window when the sources are dense, a few when far apart in y).
3. **Flag** each source with :class:`~iic_survey.flags.QualityFlag` bits instead of dropping it.

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
import difflib
import functools
import logging
import threading
import warnings
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from iic_survey import BANDS
from iic_survey.archive import (
    NETWORK_ERRORS,
    ArchiveError,
    RetryPolicy,
    TileArchive,
    TileGeometry,
    TileMissing,
    normalize_coadd_id,
    retrying,
    tile_geometry,
)
from iic_survey.flags import QualityFlag as Q
from iic_survey.ibe import IRSA_SIA_URL, CutoutService, ServiceConfig

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("ra", "dec")
"""Columns a batch must have; ``coadd_id`` is used when present."""
_METHODS = ("tiles", "service")
_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, *NETWORK_ERRORS)
"""What a pixel read of a damaged file or a failing connection raises."""
_LOOKUPS = ("grid", "sia", "none")


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        near = difflib.get_close_matches(value, allowed, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}{hint}")


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
        _choice("method", self.method, _METHODS)
        _choice("tile_lookup", self.tile_lookup, _LOOKUPS)
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
    """uint32 (N,) :class:`~iic_survey.flags.QualityFlag` bits."""
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


_WARN_LOCK = threading.Lock()
_WARNED: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    with _WARN_LOCK:
        if key in _WARNED or len(_WARNED) > 100_000:
            return
        _WARNED.add(key)
    logger.warning(message)


def _coordinates(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ra, dec (float64) and a mask of usable positions; raise on missing columns."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"cut_sources needs columns {missing}; got {list(df.columns)}")
    ra = pd.to_numeric(df["ra"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    dec = pd.to_numeric(df["dec"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra <= 360) & (np.abs(dec) <= 90)
    return ra, dec, ok


def cut_sources(
    df: pd.DataFrame,
    archive: TileArchive,
    config: CutoutConfig | None = None,
    service: CutoutService | None = None,
) -> Stamps:
    """Cut a stamp per source and band; one read per tile and band.

    Parameters
    ----------
    df
        The batch: ``ra``, ``dec`` (degrees) and optionally ``coadd_id`` (8-character or
        ``_ac51`` id; missing/empty means "find the tile") and ``w1mpro``.
    archive
        Where the tiles are.
    config
        Cutting settings; defaults to :class:`CutoutConfig`.
    service
        The IBE client for ``method="service"`` (built from ``config.service`` if omitted).

    Returns
    -------
    Stamps
        One stamp per input row, in input order; per-row faults are flags, not exceptions.

    Raises
    ------
    ValueError
        If ``ra`` or ``dec`` is missing, or ``method="service"`` with a non-HTTP archive.
    iic_survey.archive.ArchiveAccessDenied
        If the archive refuses access (not a per-row fault).
    """
    cfg = config or CutoutConfig()
    ra, dec, ok = _coordinates(df)
    n, nb, size = len(ra), len(cfg.bands), cfg.size_px
    out = Stamps(
        stamps=np.full((n, nb, size, size), np.nan, dtype=np.float32),
        flags=np.where(ok, 0, int(Q.BAD_COORDINATES)).astype(np.uint32),
        tile=np.full(n, "", dtype=object),
        offset=np.full((n, 2), np.nan, dtype=np.float32),
    )
    read_ok = np.zeros((n, nb), dtype=bool)
    if "coadd_id" in df.columns:
        ids = df["coadd_id"].astype(object)
        known = {c: normalize_coadd_id(c) for c in pd.unique(ids)}  # a few tiles per batch
        primary = np.array([known.get(c, "") for c in ids.tolist()], dtype=object)  # NaN != NaN
    else:
        primary = np.full(n, "", dtype=object)
    primary[~ok] = ""
    cutter = _Cutter(archive, cfg, ra, dec, out, read_ok)
    if cfg.method == "service":
        if archive.kind != "http":
            raise ValueError(f"method='service' needs an HTTP(S) archive, got {archive.root!r}")
        cutter.via_service(primary, ok, service or CutoutService(cfg.service))
    else:
        cutter.via_tiles(primary, ok)
    _quality(out, read_ok, df, cfg)
    return out


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


def _row_windows(iy: np.ndarray, h: int, ny: int, gap: int) -> list[tuple[int, int]]:
    """Row ranges [y0, y1) covering every stamp, merging ranges closer than ``gap`` rows."""
    lo = np.clip(np.sort(iy) - h, 0, ny)
    hi = np.clip(np.sort(iy) + h + 1, 0, ny)
    windows: list[tuple[int, int]] = []
    for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
        if b <= a:
            continue
        if windows and a - windows[-1][1] <= gap:
            windows[-1] = (windows[-1][0], max(windows[-1][1], b))
        else:
            windows.append((a, b))
    return windows


def _candidates_grid(ra: np.ndarray, dec: np.ndarray) -> list[list[str]]:
    """For each position, the tiles of the computed Atlas grid that hold it, best first."""
    from iic_survey import tiles

    found = tiles.tile_candidates(ra, dec)
    out: list[list[str]] = [[] for _ in range(len(ra))]
    for src, cid in zip(found["source"].tolist(), found["coadd_id"].tolist(), strict=True):
        out[int(src)].append(normalize_coadd_id(cid))
    return out


class _Cutter:
    """State of one :func:`cut_sources` call: caches of headers and faults, the output."""

    def __init__(
        self,
        archive: TileArchive,
        cfg: CutoutConfig,
        ra: np.ndarray,
        dec: np.ndarray,
        out: Stamps,
        read_ok: np.ndarray,
    ) -> None:
        self.archive, self.cfg, self.ra, self.dec = archive, cfg, ra, dec
        self.out, self.read_ok = out, read_ok
        self.h = cfg.size_px // 2
        self.geoms: dict[str, TileGeometry | ArchiveError] = {}

    # -- choosing tiles ----------------------------------------------------------------------

    def _fault(self, cid: str, band: int, exc: ArchiveError) -> int:
        kind = "missing" if isinstance(exc, TileMissing) else "unusable"
        _warn_once((self.archive.root, cid, str(band), kind), f"tile {cid} W{band} {kind}: {exc}")
        return int(Q.BAND_MISSING) if isinstance(exc, TileMissing) else int(Q.FETCH_FAILED)

    def _geometry(self, cid: str) -> TileGeometry | ArchiveError:
        band = self.cfg.bands[0]

        def read() -> TileGeometry:
            with self.archive.open_tile(cid, band) as hdu:
                return tile_geometry(hdu.header)

        try:
            return retrying(read, self.cfg.retry, f"{cid} W{band} header")
        except ArchiveError as exc:
            if isinstance(exc, PermissionError):
                raise
            self._fault(cid, band, exc)
            return exc

    def _load(self, cids: set[str], pool: ThreadPoolExecutor) -> None:
        todo = sorted(cids - set(self.geoms))
        for cid, geom in zip(todo, pool.map(self._geometry, todo), strict=True):
            self.geoms[cid] = geom

    def _distance(self, cid: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (px) of each row's source from the edge of ``cid``, and whether it fits."""
        geom = self.geoms.get(cid)
        if not isinstance(geom, TileGeometry):
            return np.full(len(rows), -np.inf), np.zeros(len(rows), dtype=bool)
        x, y = geom.wcs.world_to_pixel_values(self.ra[rows], self.dec[rows])
        ny, nx = geom.shape
        with np.errstate(invalid="ignore"):
            d = np.nan_to_num(
                np.minimum.reduce([x + 0.5, y + 0.5, nx - 0.5 - x, ny - 0.5 - y]), nan=-np.inf
            )
            ix, iy = np.floor(x + 0.5), np.floor(y + 0.5)
            fits_ = (ix - self.h >= 0) & (iy - self.h >= 0)
            fits_ &= (ix + self.h <= nx - 1) & (iy + self.h <= ny - 1)
        return d, fits_

    def _lookup(self, rows: np.ndarray, primary: np.ndarray) -> dict[int, list[str]]:
        """Candidate tiles per row: neighbours for edge rows, the grid or SIA for the rest."""
        cand: dict[int, list[str]] = {}
        sia_rows = [int(i) for i in rows if not primary[i] and self.cfg.tile_lookup == "sia"]
        if sia_rows:
            from iic_survey.ibe import sia_lookup

            try:
                found = sia_lookup(
                    self.ra[sia_rows],
                    self.dec[sia_rows],
                    self.cfg.sia_url,
                    bands=self.cfg.bands[:1],
                )
            except Exception as exc:  # pyvo and requests raise many types; the rows are flagged
                _warn_once(
                    ("sia", self.cfg.sia_url, type(exc).__name__),
                    f"SIA look-up at {self.cfg.sia_url} failed: {exc}",
                )
                self.out.flags[sia_rows] |= int(Q.FETCH_FAILED)
                return cand
            for src, cid in zip(found["source"], found["coadd_id"], strict=True):
                cand.setdefault(sia_rows[int(src)], []).append(cid)
        grid_rows = [
            int(i)
            for i in rows
            if i not in cand
            and (self.cfg.use_neighbours if primary[i] else self.cfg.tile_lookup == "grid")
        ]
        if grid_rows:
            found = _candidates_grid(self.ra[grid_rows], self.dec[grid_rows])
            cand.update(zip(grid_rows, found, strict=True))
        return cand

    def choose(self, primary: np.ndarray, ok: np.ndarray, pool: ThreadPoolExecutor) -> np.ndarray:
        """The tile to cut each row from (``''``: none; the row is flagged)."""
        chosen = np.full(len(primary), "", dtype=object)
        self._load({c for c in primary[ok] if c}, pool)
        settled = np.zeros(len(primary), dtype=bool)
        for cid, rows in _groups(primary, ok & (primary != "")).items():
            _, fits_ = self._distance(cid, rows)
            chosen[rows[fits_]] = cid
            settled[rows[fits_]] = True
        rest = np.flatnonzero(ok & ~settled)
        if not len(rest):
            return chosen
        cand = self._lookup(rest, primary)
        self._load({c for cs in cand.values() for c in cs}, pool)
        pairs: dict[str, list[int]] = defaultdict(list)
        for i in rest.tolist():
            for cid in dict.fromkeys(([primary[i]] if primary[i] else []) + cand.get(i, [])):
                pairs[cid].append(i)
        best = dict.fromkeys(rest.tolist(), -np.inf)
        for cid, idx in pairs.items():
            dist, _ = self._distance(cid, np.asarray(idx))
            for i, d in zip(idx, dist.tolist(), strict=True):
                if d > best[i] or (d == best[i] and d > -np.inf and cid == primary[i]):
                    best[i], chosen[i] = d, cid
        for i in rest.tolist():
            if chosen[i]:
                continue
            geom = self.geoms.get(primary[i]) if primary[i] else None
            if isinstance(geom, ArchiveError) and not isinstance(geom, TileMissing):
                self.out.flags[i] |= int(Q.FETCH_FAILED)
            elif isinstance(geom, TileGeometry):  # its tile is readable but misses the source
                chosen[i] = primary[i]
            elif not self.out.flags[i] & Q.FETCH_FAILED:  # not a failed look-up: no tile has it
                self.out.flags[i] |= int(Q.BAND_MISSING)
        return chosen

    # -- reading tiles -----------------------------------------------------------------------

    def via_tiles(self, primary: np.ndarray, ok: np.ndarray) -> None:
        with ThreadPoolExecutor(self.cfg.max_workers, thread_name_prefix="tiles") as pool:
            chosen = self.choose(primary, ok, pool)
            groups = _groups(chosen, chosen != "")
            for _ in pool.map(lambda kv: self._cut_tile(*kv), groups.items()):
                pass
        self.out.tile[:] = chosen

    def _cut_tile(self, cid: str, rows: np.ndarray) -> None:
        for b, band in enumerate(self.cfg.bands):
            try:
                stamps, off, offset = retrying(
                    functools.partial(self._read_band, cid, band, rows),
                    self.cfg.retry,
                    f"{cid} W{band}",
                )
            except ArchiveError as exc:
                if isinstance(exc, PermissionError):
                    raise
                self.out.flags[rows] |= self._fault(cid, band, exc)
                continue
            self.out.stamps[rows, b] = stamps
            self.out.flags[rows[off]] |= int(Q.OFF_EDGE)
            self.read_ok[rows, b] = True
            if b == 0:
                self.out.offset[rows] = offset

    def _read_band(self, cid: str, band: int, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        with self.archive.open_tile(cid, band) as hdu:
            geom = tile_geometry(hdu.header)
            x, y = geom.wcs.world_to_pixel_values(self.ra[rows], self.dec[rows])
            ny, nx = geom.shape
            try:
                if self.archive.kind == "local":
                    return cut_stamps(hdu.data, x, y, self.cfg.size_px)
                return self._cut_windows(hdu, x, y, (ny, nx))
            except _READ_ERRORS as exc:
                raise self.archive.classify_error(self.archive.tile_url(cid, band), exc) from exc

    def _cut_windows(self, hdu: Any, x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> Any:
        """Remote read: one ``.section`` per window of rows, all columns (contiguous bytes)."""
        n, size, h, ny = len(x), self.cfg.size_px, self.h, shape[0]
        stamps = np.full((n, size, size), np.nan, dtype=np.float32)
        off = np.ones(n, dtype=bool)
        offset = np.full((n, 2), np.nan, dtype=np.float32)
        with np.errstate(invalid="ignore"):
            iy = np.floor(np.nan_to_num(y, nan=-1e7, posinf=-1e7, neginf=-1e7) + 0.5)
        lo, hi = np.clip(iy - h, 0, ny), np.clip(iy + h + 1, 0, ny)
        for y0, y1 in _row_windows(iy.astype(np.int64), h, ny, self.cfg.merge_gap_rows):
            sel = (lo >= y0) & (hi <= y1) & (hi > lo)
            block = np.asarray(hdu.section[y0:y1, :])
            stamps[sel], off[sel], offset[sel] = cut_stamps(block, x[sel], y[sel], size, y0, shape)
        return stamps, off, offset

    # -- the IBE cutout service --------------------------------------------------------------

    def via_service(self, primary: np.ndarray, ok: np.ndarray, service: CutoutService) -> None:
        chosen = primary.copy()
        need = np.flatnonzero(ok & (primary == ""))
        if len(need) and self.cfg.tile_lookup != "none":
            for i, cids in self._lookup(need, primary).items():
                chosen[i] = cids[0] if cids else ""
        lost = ok & (chosen == "") & ((self.out.flags & int(Q.FETCH_FAILED)) == 0)
        self.out.flags[lost] |= int(Q.BAND_MISSING)
        rows = np.flatnonzero(chosen != "")
        asks = [
            (self.archive.tile_url(chosen[i], band), float(self.ra[i]), float(self.dec[i]))
            for i in rows
            for band in self.cfg.bands
        ]
        # IBE sizes a cutout its own way: ask for a pixel more on each side, then re-centre
        results = iter(service.fetch(asks, (self.cfg.size_px + 2) * self.cfg.pixscale_arcsec))
        size, status_flag = self.cfg.size_px, {"off_tile": Q.OFF_EDGE, "missing": Q.BAND_MISSING}
        for i in rows.tolist():
            for b in range(len(self.cfg.bands)):
                res = next(results)
                if res.status != "ok" or res.data is None or res.header is None:
                    self.out.flags[i] |= int(status_flag.get(res.status, Q.FETCH_FAILED))
                    continue
                geom = tile_geometry(res.header)
                x, y = geom.wcs.world_to_pixel_values(self.ra[i : i + 1], self.dec[i : i + 1])
                stamp, off, offset = cut_stamps(res.data, x, y, size)
                self.out.stamps[i, b] = stamp[0]
                self.out.flags[i] |= int(Q.OFF_EDGE) if off[0] else 0
                self.read_ok[i, b] = True
                if b == 0:
                    self.out.offset[i] = offset[0]
        self.out.tile[:] = chosen


def _groups(keys: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Row indices (ascending) per distinct key, over the rows where ``mask`` holds."""
    idx = np.flatnonzero(mask)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in zip(idx.tolist(), keys[idx].tolist(), strict=True):
        groups[k].append(i)
    return {k: np.asarray(v, dtype=np.int64) for k, v in groups.items()}


def _quality(out: Stamps, read_ok: np.ndarray, df: pd.DataFrame, cfg: CutoutConfig) -> None:
    """NAN_PIXELS, BLANK and SATURATED from the stamps (and ``w1mpro`` when present)."""
    st, h = out.stamps, cfg.size_px // 2
    out.flags[np.isnan(st).any(axis=(1, 2, 3))] |= int(Q.NAN_PIXELS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands
        hi, lo = np.nanmax(st, axis=(2, 3)), np.nanmin(st, axis=(2, 3))  # (N, B)
        blank = read_ok & ~(hi > lo)
        core = st[:, :, h - 2 : h + 3, h - 2 : h + 3]
        peak = np.nanmax(core, axis=(2, 3), keepdims=True)
    flat = (core >= peak - 1e-6 * np.abs(peak)).sum(axis=(2, 3)) >= 5  # a 2x2 tie is 4
    saturated = (read_ok & ~blank & flat & (peak[:, :, 0, 0] > lo)).any(axis=1)
    if "w1mpro" in df.columns:
        w1 = pd.to_numeric(df["w1mpro"], errors="coerce").to_numpy(np.float64, na_value=np.nan)
        with np.errstate(invalid="ignore"):
            saturated |= w1 < cfg.saturation_w1_mag
    out.flags[blank.any(axis=1)] |= int(Q.BLANK)
    out.flags[saturated] |= int(Q.SATURATED)
