"""Cutting a batch of sources into stamps, reading each Atlas tile and band once.

:func:`cut_sources` takes a batch (``ra``, ``dec``, usually ``coadd_id``; ``cntr``, ``wx``,
``wy`` are carried but not needed) through three steps:

1. **Choose a tile per source.** The catalog's ``coadd_id`` is used when the whole stamp fits on
   it. Otherwise (near an edge, tile missing or unreadable, or no ``coadd_id``) the tiles that
   hold the position are asked for (:func:`iic_survey.inputs.tiles.tile_candidates`, or SIA
   v2), their W1 headers are read, and the one on which the source lies furthest from the edge
   wins; it must exist in the archive. Atlas tiles overlap by ~2.5′, so most edge sources find
   a tile that holds their whole stamp.
2. **Read each (tile, band) once** and cut all of that tile's sources from it: a local tile is
   memory-mapped and indexed in place; a remote tile is read with ``.section`` over the rows the
   stamps need (one window when the sources are dense, a few when far apart in y). With
   ``method="service"`` IBE cuts each stamp instead (:class:`~iic_survey.inputs.ibe.CutoutService`).
3. **Flag** each source with :class:`~iic_survey.core.flags.QualityFlag` bits instead of
   dropping it: tile faults, off-edge stamps, NaN, blank and saturated stamps.

The settings, the result type and the pixel convention are in :mod:`iic_survey.stamps.cutouts`.
"""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core.flags import QualityFlag as Q
from iic_survey.inputs import tiles
from iic_survey.inputs.archive import TileArchive, TileGeometry, normalize_coadd_id, tile_geometry
from iic_survey.inputs.errors import ArchiveError, TileMissing
from iic_survey.inputs.ibe import CutoutService, sia_lookup
from iic_survey.inputs.retry import NETWORK_ERRORS, retrying
from iic_survey.stamps.cutouts import CutoutConfig, Stamps, batch_positions, cut_stamps

logger = logging.getLogger(__name__)

_READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, *NETWORK_ERRORS)
"""What a pixel read of a damaged file or a failing connection raises."""

_WARN_LOCK = threading.Lock()
_WARNED: set[tuple[str, ...]] = set()


def _warn_once(key: tuple[str, ...], message: str) -> None:
    """Log ``message`` once per ``key`` in the process (a bad tile is met by many batches)."""
    with _WARN_LOCK:
        if key in _WARNED or len(_WARNED) > 100_000:
            return
        _WARNED.add(key)
    logger.warning(message)


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
    iic_survey.inputs.errors.ArchiveAccessDenied
        If the archive refuses access (not a per-row fault).
    """
    cfg = config or CutoutConfig()
    ra, dec, ok = batch_positions(df)
    n = len(ra)
    if "coadd_id" in df.columns:
        ids = df["coadd_id"].astype(object)
        known = {c: normalize_coadd_id(c) for c in pd.unique(ids)}  # a few tiles per batch
        primary = np.array([known.get(c, "") for c in ids.tolist()], dtype=object)  # NaN != NaN
    else:
        primary = np.full(n, "", dtype=object)
    primary[~ok] = ""
    cutter = _Cutter(archive, cfg, ra, dec, ok)
    if cfg.method == "service":
        if archive.kind != "http":
            raise ValueError(f"method='service' needs an HTTP(S) archive, got {archive.root!r}")
        cutter.via_service(primary, ok, service or CutoutService(cfg.service))
    else:
        cutter.via_tiles(primary, ok)
    _quality(cutter.out, cutter.read_ok, df, cfg)
    return cutter.out


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
        ok: np.ndarray,
    ) -> None:
        """Start a batch at (``ra``, ``dec``); rows not ``ok`` are flagged BAD_COORDINATES."""
        self.archive, self.cfg, self.ra, self.dec = archive, cfg, ra, dec
        n, nb, size = len(ra), len(cfg.bands), cfg.size_px
        self.out = Stamps(
            stamps=np.full((n, nb, size, size), np.nan, dtype=np.float32),
            flags=np.where(ok, 0, int(Q.BAD_COORDINATES)).astype(np.uint32),
            tile=np.full(n, "", dtype=object),
            offset=np.full((n, 2), np.nan, dtype=np.float32),
        )
        self.read_ok = np.zeros((n, nb), dtype=bool)  # (N, B): the band was read for the row
        self.h = size // 2
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
