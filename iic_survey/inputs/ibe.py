"""IRSA's services for AllWISE Atlas images: per-source cutouts from IBE and SIA v2 tile look-up.

Two clients of IRSA's web services, next to the tile store of :mod:`iic_survey.inputs.archive`
(which names and opens whole tiles; this module asks IRSA's servers to do part of the work):

* :class:`CutoutService` asks IBE (IRSA's image server) for one small cutout per source and band
  (``{tile_url}?center=ra,dec&size=50arcsec&gzip=false``), for source lists too small to be worth
  reading tiles: bounded threads, a request limit per host, time-outs and bounded retries with
  jittered exponential back-off (:class:`~iic_survey.inputs.retry.RetryPolicy`). Per-source
  faults come back as a :class:`CutoutResult` status, never as an exception in the middle of a
  batch; only :class:`~iic_survey.inputs.errors.ArchiveAccessDenied` (the server refuses us) is
  raised. :class:`ServiceConfig` holds its settings.
* :func:`sia_lookup` finds the tiles holding a position with an SIA v2 query (pyvo), for
  positions that arrive without a ``coadd_id``; :class:`SiaOptions` holds the query's settings.

This module builds on :mod:`iic_survey.inputs.archive` (header checks), never the other way
round.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import random
import re
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import requests
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from iic_survey.core.constants import __version__
from iic_survey.inputs.archive import tile_geometry
from iic_survey.inputs.errors import ArchiveAccessDenied, TileCorrupt
from iic_survey.inputs.retry import RetryPolicy
from iic_survey.inputs.tile_header import MAGZP

logger = logging.getLogger(__name__)

IRSA_SIA_URL = "https://irsa.ipac.caltech.edu/SIA"
"""IRSA's SIA v2 service; the AllWISE Atlas is its collection ``wise_allwise``."""

_COADD_IN_URL = re.compile(r"(\d{4}[pm]\d{3}_ac51)-w\d-int-3\.fits")
_BAND_IN_URL = re.compile(r"-w(\d)-int-3\.fits")


@dataclasses.dataclass(frozen=True)
class ServiceConfig:
    """How :class:`CutoutService` talks to IBE."""

    size_arcsec: float = 50.0
    """Side of the requested cutout (IBE ``size=...arcsec``)."""
    connect_timeout_s: float = 10.0
    """Time-out to open a connection."""
    read_timeout_s: float = 30.0
    """Time-out between bytes of a response."""
    max_workers: int = 8
    """Threads fetching at once (all hosts together)."""
    per_host: int = 4
    """Requests in flight to one host at once, shared by all services in the process."""
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    """Retries of 5xx, 429, time-outs, truncated or non-FITS answers."""

    def __post_init__(self) -> None:
        if not self.size_arcsec > 0:
            raise ValueError(f"size_arcsec must be > 0, got {self.size_arcsec}")
        if min(self.connect_timeout_s, self.read_timeout_s) <= 0:
            raise ValueError("time-outs must be > 0 seconds")
        if self.max_workers < 1 or self.per_host < 1:
            raise ValueError("max_workers and per_host must be >= 1")


@dataclasses.dataclass(frozen=True)
class CutoutResult:
    """One IBE cutout, or why there is none."""

    status: Literal["ok", "off_tile", "missing", "failed"]
    """``off_tile``: HTTP 400; ``missing``: 404; ``failed``: still failing after retries."""
    data: np.ndarray | None = None
    """The cutout pixels (float32), clipped at tile edges as IBE returns them."""
    header: fits.Header | None = None
    """The cutout's header, WCS shifted to the cutout."""
    attempts: int = 0
    error: str = ""


_HOST_LOCK = threading.Lock()
_HOST_SEMAPHORES: dict[tuple[str, int], threading.BoundedSemaphore] = {}


def _host_semaphore(host: str, limit: int) -> threading.BoundedSemaphore:
    with _HOST_LOCK:
        return _HOST_SEMAPHORES.setdefault((host, limit), threading.BoundedSemaphore(limit))


class _RetryableError(Exception):
    """A fault worth another try; ``wait`` is a server-suggested minimum delay."""

    def __init__(self, message: str, wait: float = 0.0) -> None:
        super().__init__(message)
        self.wait = wait


class CutoutService:
    """Per-source cutouts from IBE, for source lists too small to be worth reading tiles.

    Picklable: HTTP sessions live in thread-local state created on first use.
    """

    def __init__(self, config: ServiceConfig | None = None) -> None:
        self.config = config or ServiceConfig()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._local = threading.local()

    def cutout_url(
        self, image_url: str, ra: float, dec: float, size_arcsec: float | None = None
    ) -> str:
        """The IBE cutout URL of a square centred on (ra, dec) (side: config.size_arcsec)."""
        size = self.config.size_arcsec if size_arcsec is None else size_arcsec
        return f"{image_url}?center={ra:.8f},{dec:.8f}&size={size:.6g}arcsec&gzip=false"

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = f"iic_survey/{__version__} (python-requests)"
            self._local.session = session
        return session

    def fetch(
        self, requests_: Sequence[tuple[str, float, float]], size_arcsec: float | None = None
    ) -> list[CutoutResult]:
        """Fetch cutouts for ``(image_url, ra, dec)`` triples; results in the same order.

        Raises only :class:`ArchiveAccessDenied` (the server refuses us altogether).
        """
        if not requests_:
            return []
        workers = min(self.config.max_workers, len(requests_))
        with ThreadPoolExecutor(workers, thread_name_prefix="ibe") as pool:
            futures = [pool.submit(self.fetch_one, *r, size_arcsec) for r in requests_]
            try:
                return [f.result() for f in futures]
            except ArchiveAccessDenied:
                for f in futures:
                    f.cancel()
                raise

    def fetch_one(
        self, image_url: str, ra: float, dec: float, size_arcsec: float | None = None
    ) -> CutoutResult:
        """Fetch one cutout with retries; never raises for per-source faults."""
        url = self.cutout_url(image_url, ra, dec, size_arcsec)
        cfg = self.config
        semaphore = _host_semaphore(urlsplit(url).netloc, cfg.per_host)
        rng = random.Random()
        error = ""
        for attempt in range(1, cfg.retry.attempts + 1):
            wait = 0.0
            try:
                with semaphore:
                    response = self._session().get(
                        url, timeout=(cfg.connect_timeout_s, cfg.read_timeout_s)
                    )
                    body = response.content
                return self._answer(url, response, body, attempt)
            except _RetryableError as exc:
                error, wait = str(exc), exc.wait
            except (requests.Timeout, requests.ConnectionError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            except requests.RequestException as exc:  # e.g. a body cut short
                error = f"{type(exc).__name__}: {exc}"
            if attempt < cfg.retry.attempts:
                time.sleep(cfg.retry.delay(attempt, rng, wait))
        logger.debug("cutout %s failed: %s", url, error)
        return CutoutResult("failed", attempts=cfg.retry.attempts, error=error)

    def _answer(
        self, url: str, response: requests.Response, body: bytes, attempt: int
    ) -> CutoutResult:
        status = response.status_code
        if status == 400:
            return CutoutResult("off_tile", attempts=attempt, error="HTTP 400: off the tile")
        if status == 404:
            return CutoutResult("missing", attempts=attempt, error="HTTP 404: no such tile")
        if status in (401, 403):
            raise ArchiveAccessDenied(f"{url}: HTTP {status}; the server refuses our requests")
        if status == 429 or status >= 500:
            retry_after = response.headers.get("Retry-After", "")
            wait = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 0.0
            raise _RetryableError(f"HTTP {status}", wait)
        if status != 200:
            return CutoutResult("failed", attempts=attempt, error=f"HTTP {status}")
        if not body.startswith(b"SIMPLE  ="):
            # Known by its first card, not its Content-Type, which IBE does not document.
            ctype = response.headers.get("Content-Type", "")
            raise _RetryableError(f"not a FITS answer (Content-Type {ctype!r})")
        data, header = _parse_fits_bytes(body, url)
        return CutoutResult("ok", data=data, header=header, attempts=attempt)


def _fill_zero_point(header: fits.Header, url: str) -> None:
    """Give a cutout header without ``MAGZP`` its band's Atlas zero point.

    IBE's cutout headers are not documented to keep the tile's keywords; every AllWISE Atlas
    tile of a band has the same zero point (:data:`~iic_survey.inputs.tile_header.MAGZP`), so the
    band named in the URL gives it.
    """
    band = _BAND_IN_URL.search(url)
    if "MAGZP" not in header and band is not None and int(band.group(1)) in MAGZP:
        header["MAGZP"] = (MAGZP[int(band.group(1))], "band zero point: the cutout had none")


def _parse_fits_bytes(body: bytes, url: str) -> tuple[np.ndarray, fits.Header]:
    """Pixels and header of a small in-memory FITS image; :class:`_RetryableError` if cut short."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(io.BytesIO(body), lazy_load_hdus=True) as hdul:
                hdu = hdul[0]
                header = hdu.header.copy()
                _fill_zero_point(header, url)
                tile_geometry(header, url)
                shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
                need = int(hdul.fileinfo(0)["datLoc"]) + abs(int(header["BITPIX"])) // 8 * (
                    shape[0] * shape[1]
                )
                if len(body) < need:
                    raise _RetryableError(f"truncated FITS ({len(body)} of {need} bytes)")
                data = np.array(hdu.data, dtype=np.float32)
    except (_RetryableError, TileCorrupt) as exc:
        raise _RetryableError(str(exc)) from exc
    except Exception as exc:
        raise _RetryableError(f"unreadable FITS ({type(exc).__name__}: {exc})") from exc
    return data, header


class _TimeoutSession(requests.Session):
    """A session that puts a time-out on every request (pyvo sets none of its own)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class SiaOptions:
    """How :func:`sia_lookup` queries the SIA v2 service."""

    collection: str = "wise_allwise"
    """The SIA collection of the AllWISE Atlas images."""
    radius_deg: float = 1.0 / 3600.0
    """Radius of the search around each position."""
    timeout_s: float = 60.0
    """Time-out of each HTTP request (pyvo sets none of its own)."""


def sia_lookup(
    ra: float | Sequence[float] | np.ndarray,
    dec: float | Sequence[float] | np.ndarray,
    url: str = IRSA_SIA_URL,
    *,
    bands: Sequence[int] = (1, 2, 3),
    options: SiaOptions | None = None,
) -> pd.DataFrame:
    """The Atlas tiles that hold each position, from an SIA v2 query per position.

    Returns
    -------
    pandas.DataFrame
        One row per (source, tile, band) of a science image: ``source`` (index into the
        inputs), ``coadd_id``, ``band``, ``access_url``, ``separation_deg`` (position to tile
        centre). Rows are sorted by source, then separation (best tile first), then band.
        A position that no tile holds has no rows.
    """
    import pyvo
    from astropy.coordinates import SkyCoord

    ras = np.atleast_1d(np.asarray(ra, dtype=np.float64))
    decs = np.atleast_1d(np.asarray(dec, dtype=np.float64))
    if ras.shape != decs.shape:
        raise ValueError("ra and dec must have the same shape")
    opts = options or SiaOptions()
    names = {f"W{b}": b for b in bands}
    service = pyvo.dal.SIA2Service(url, session=_TimeoutSession(opts.timeout_s))
    rows: list[dict[str, Any]] = []
    for i, (r, d) in enumerate(zip(ras, decs, strict=True)):
        if not (np.isfinite(r) and np.isfinite(d) and abs(d) <= 90):
            continue
        table = service.search(pos=(r, d, opts.radius_deg), collection=opts.collection).to_table()
        if len(table) == 0:
            continue
        here = SkyCoord(r, d, unit="deg")
        for row in table:
            band = names.get(str(row["energy_bandpassname"]).strip())
            if band is None or str(row["dataproduct_subtype"]).strip() != "science":
                continue
            access = str(row["access_url"]).strip()
            m = _COADD_IN_URL.search(access)
            if not m:
                continue
            sep = here.separation(SkyCoord(row["s_ra"], row["s_dec"], unit="deg")).deg
            rows.append(
                dict(
                    source=i,
                    coadd_id=m.group(1),
                    band=band,
                    access_url=access,
                    separation_deg=float(sep),
                )
            )
    out = pd.DataFrame(rows, columns=["source", "coadd_id", "band", "access_url", "separation_deg"])
    return out.sort_values(["source", "separation_deg", "band"], kind="stable", ignore_index=True)
