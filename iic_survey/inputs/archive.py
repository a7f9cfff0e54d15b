"""Where the AllWISE Atlas tiles live and how to open them: local disk, S3 or HTTPS.

The tile store, all transport and no geometry (cutting stamps is :mod:`iic_survey.stamps.cutter`):

* :class:`TileArchive` names and opens Atlas tiles ``{cid}-w{b}-int-3.fits`` under a
  ``p3am_cdd`` root that is a local directory, an ``s3://`` prefix or an ``https://`` URL (IRSA's
  image server, IBE). It holds only strings, so it pickles (Ray ships it to workers); files are
  opened lazily, per call. Remote tiles are read with
  ``astropy.io.fits.open(url, use_fsspec=True)`` and ``.section``, so a cutout reads only the
  rows it needs.
* :func:`tile_key` and :func:`normalize_coadd_id` name tiles as IRSA lays them out;
  :func:`tile_geometry` checks a tile header (2-D image, celestial WCS, ``MAGZP``).
* :meth:`TileArchive.classify_error` turns a low-level read error into one of the archive's
  errors (:mod:`iic_survey.inputs.errors`): :class:`~iic_survey.inputs.errors.TileMissing`,
  :class:`~iic_survey.inputs.errors.TileCorrupt`, :class:`~iic_survey.inputs.errors.TileFetchError`
  (may pass: retried by :mod:`iic_survey.inputs.retry`) or
  :class:`~iic_survey.inputs.errors.ArchiveAccessDenied` (always raised, with what to do).

IRSA's services (the per-source IBE cutout client and the SIA v2 tile look-up) live in
:mod:`iic_survey.inputs.ibe`, which builds on this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from iic_survey.inputs.errors import (
    ArchiveAccessDenied,
    ArchiveError,
    TileCorrupt,
    TileFetchError,
    TileMissing,
)
from iic_survey.inputs.retry import NETWORK_ERRORS, error_chain, http_status, is_denied

IRSA_S3_URL = "s3://nasa-irsa-wise/wise/allwise/images/p3am_cdd"
"""The AllWISE Atlas images in IRSA's public bucket (us-west-2, anonymous)."""
IRSA_IBE_URL = "https://irsa.ipac.caltech.edu/ibe/data/wise/allwise/p3am_cdd"
"""The same files through IRSA's image server, which also cuts them on request."""

_COADD_RE = re.compile(r"(\d{4}[pm]\d{3})(_ac51)?$")


def normalize_coadd_id(coadd_id: object) -> str:
    """``'0904m213'`` or ``'0904m213_ac51'`` -> ``'0904m213_ac51'``; ``''`` if not a tile id."""
    if not isinstance(coadd_id, str):
        return ""
    m = _COADD_RE.fullmatch(coadd_id.strip())
    return f"{m.group(1)}_ac51" if m else ""


def tile_key(coadd_id: str, band: int) -> str:
    """Path of one band's intensity image below ``p3am_cdd``, as IRSA lays it out."""
    cid = normalize_coadd_id(coadd_id)
    if not cid:
        raise ValueError(f"not an AllWISE Atlas tile id: {coadd_id!r} (expected like '0904m213')")
    if band not in (1, 2, 3, 4):
        raise ValueError(f"WISE band must be 1..4, got {band!r}")
    return f"{cid[:2]}/{cid[:4]}/{cid}/{cid}-w{band}-int-3.fits"


@dataclasses.dataclass(frozen=True)
class TileGeometry:
    """What a tile's header says about its pixels: validated by :func:`tile_geometry`."""

    wcs: WCS
    """The celestial WCS of the file as written (0-based pixel coordinates in astropy calls)."""
    shape: tuple[int, int]
    """(NAXIS2, NAXIS1): rows, columns."""
    magzp: float
    """Photometric zero point: m_Vega = MAGZP - 2.5 log10(DN)."""


def tile_geometry(header: fits.Header, where: str = "tile") -> TileGeometry:
    """Check that ``header`` describes a 2-D image with a celestial WCS and a MAGZP.

    Raises
    ------
    TileCorrupt
        With the reason, if any of the three is missing or unreadable.
    """
    try:
        shape = (int(header["NAXIS2"]), int(header["NAXIS1"]))
        if int(header["NAXIS"]) != 2 or min(shape) < 1:
            raise ValueError
    except (KeyError, ValueError, TypeError):
        raise TileCorrupt(f"{where}: not a 2-D image (NAXIS={header.get('NAXIS')})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises many types for malformed WCS keywords
        raise TileCorrupt(f"{where}: unreadable WCS ({exc})") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise TileCorrupt(f"{where}: header has no celestial WCS (CTYPE1/CTYPE2 missing)")
    try:
        magzp = float(header["MAGZP"])
    except (KeyError, ValueError, TypeError):
        raise TileCorrupt(f"{where}: header has no MAGZP") from None
    if not np.isfinite(magzp):
        raise TileCorrupt(f"{where}: MAGZP is not finite")
    return TileGeometry(wcs=wcs, shape=shape, magzp=magzp)


@dataclasses.dataclass(frozen=True)
class TileArchive:
    """A ``p3am_cdd`` tree of Atlas tiles on local disk, on S3 or behind HTTPS.

    Build one with :meth:`from_spec`. The object holds strings only: no open file, session or
    file-system handle, so it pickles; fsspec caches file-system instances per process.
    """

    root: str
    """The ``p3am_cdd`` directory: a local path, ``s3://bucket/prefix`` or ``https://...``."""
    storage_options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    """fsspec options for remote roots (``anon``, ``endpoint_url`` ...)."""

    def __post_init__(self) -> None:
        if not self.root:
            raise ValueError("TileArchive root is empty")
        object.__setattr__(self, "root", self.root.rstrip("/") or "/")
        object.__setattr__(self, "storage_options", dict(self.storage_options))

    @property
    def kind(self) -> Literal["local", "s3", "http"]:
        """Where the tiles live."""
        scheme = urlsplit(self.root).scheme
        if scheme == "s3":
            return "s3"
        if scheme in ("http", "https"):
            return "http"
        return "local"

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        endpoint_url: str | None = None,
        anon: bool | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> TileArchive:
        """Build an archive from a short spec.

        Parameters
        ----------
        spec
            ``"irsa"`` (IRSA IBE over HTTPS), ``"s3"`` (IRSA's public bucket), ``"s3://b/prefix"``,
            ``"https://host/.../p3am_cdd"``, or a local directory as ``"local:/path"``,
            ``"file:///path"`` or a plain path. A local directory may be the ``p3am_cdd``
            directory itself or a root holding ``images/p3am_cdd`` (a synthetic sky root).
        endpoint_url
            S3 endpoint (a local S3 server in tests); only for S3 specs.
        anon
            Anonymous S3 access; default True (IRSA's bucket is public) unless
            ``storage_options`` carries credentials.
        storage_options
            Extra fsspec options for remote roots.
        """
        opts = dict(storage_options or {})
        spec = spec.strip()
        if spec == "irsa":
            spec = IRSA_IBE_URL
        elif spec == "s3":
            spec = IRSA_S3_URL
        scheme = urlsplit(spec).scheme
        if scheme == "s3":
            if anon is not None:
                opts["anon"] = anon
            elif not {"key", "secret", "profile", "anon"} & set(opts):
                opts["anon"] = True
            if endpoint_url:
                opts["endpoint_url"] = endpoint_url
            return cls(spec, opts)
        if endpoint_url or anon is not None:
            raise ValueError("endpoint_url and anon apply to s3:// archives only")
        if scheme in ("http", "https"):
            return cls(spec, opts)
        if spec.startswith("local:"):
            spec = spec[len("local:") :]
        elif scheme == "file":
            spec = urlsplit(spec).path
        elif scheme:
            raise ValueError(
                f"unknown archive spec {spec!r}: use 'irsa', 's3', 's3://bucket/prefix', "
                "'https://.../p3am_cdd' or a local directory ('local:/path')"
            )
        path = os.path.abspath(os.path.expanduser(spec))
        nested = os.path.join(path, "images", "p3am_cdd")
        if os.path.isdir(nested):
            path = nested
        if not os.path.isdir(path):
            raise FileNotFoundError(f"local tile archive {path!r} is not a directory")
        return cls(path, opts)

    def tile_url(self, coadd_id: str, band: int) -> str:
        """Path or URL of one band's intensity image of tile ``coadd_id``."""
        key = tile_key(coadd_id, band)
        return os.path.join(self.root, key) if self.kind == "local" else f"{self.root}/{key}"

    def _fs(self) -> Any:
        import fsspec

        return fsspec.filesystem(self.kind, **self.storage_options)

    def exists(self, coadd_id: str, band: int) -> bool:
        """Whether the archive holds that band of that tile (HEAD request when remote)."""
        url = self.tile_url(coadd_id, band)
        if self.kind == "local":
            return os.path.isfile(url)
        try:
            return bool(self._fs().exists(url))
        except Exception as exc:
            if is_denied(exc):
                raise self._denied(url, exc) from exc
            raise TileFetchError(f"{url}: {exc}") from exc

    def _denied(self, url: str, exc: BaseException) -> ArchiveAccessDenied:
        hint = (
            "IRSA's bucket is public: use anonymous access (TileArchive.from_spec('s3'), "
            "anon=True) or check the AWS credentials in the environment"
            if self.kind == "s3"
            else "check the URL and any credentials the server needs"
        )
        return ArchiveAccessDenied(f"access denied reading {url} ({exc}); {hint}")

    @contextlib.contextmanager
    def open_tile(self, coadd_id: str, band: int) -> Iterator[fits.PrimaryHDU | fits.ImageHDU]:
        """Open one band of a tile, validated, as an HDU whose ``.section`` reads lazily.

        Local files are memory-mapped (``.data`` is a memmap; ``.section`` works too); remote
        files are read through fsspec, so ``hdu.section[y0:y1, x0:x1]`` fetches those rows only.

        Raises
        ------
        TileMissing, TileCorrupt, TileFetchError, ArchiveAccessDenied
        """
        url = self.tile_url(coadd_id, band)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                if self.kind == "local":
                    hdul = fits.open(url, memmap=True, lazy_load_hdus=True)
                else:
                    hdul = fits.open(
                        url,
                        use_fsspec=True,
                        fsspec_kwargs=dict(self.storage_options),
                        lazy_load_hdus=True,
                    )
        except Exception as exc:
            raise self.classify_error(url, exc) from exc
        try:
            hdu = self._image_hdu(hdul, url)
            yield hdu
        finally:
            hdul.close()

    def classify_error(self, url: str, exc: BaseException) -> ArchiveError:
        """The archive error that a low-level read error on ``url`` stands for."""
        if is_denied(exc):
            return self._denied(url, exc)
        status = http_status(exc)
        if status == 404:
            return TileMissing(f"{url}: not in the archive")
        # Before the bare FileNotFoundError test: fsspec's HTTP file system raises one for a
        # failed connection (DNS, refused) too, with the aiohttp error as its cause. That is an
        # outage to retry, not a tile the archive lacks.
        if self.kind != "local" and (
            (status is not None and (status == 429 or status >= 500))
            or (status is None and any(isinstance(e, NETWORK_ERRORS) for e in error_chain(exc)))
        ):
            return TileFetchError(f"{url}: {type(exc).__name__}: {exc} (HTTP {status})")
        if status is None and isinstance(exc, FileNotFoundError):
            return TileMissing(f"{url}: not in the archive")
        return TileCorrupt(f"{url}: unreadable FITS ({type(exc).__name__}: {exc})")

    def _image_hdu(self, hdul: fits.HDUList, url: str) -> fits.PrimaryHDU | fits.ImageHDU:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", AstropyWarning)
                index = next(
                    (
                        i
                        for i, h in enumerate(hdul)
                        if isinstance(h, fits.PrimaryHDU | fits.ImageHDU) and h.header.get("NAXIS")
                    ),
                    None,
                )
                if index is None:
                    raise TileCorrupt(f"{url}: no image HDU")
                hdu, info = hdul[index], hdul.fileinfo(index)
        except ArchiveError:
            raise
        except Exception as exc:
            raise self.classify_error(url, exc) from exc
        geom = tile_geometry(hdu.header, url)
        bitpix = int(hdu.header["BITPIX"])
        need = int(info["datLoc"]) + abs(bitpix) // 8 * geom.shape[0] * geom.shape[1]
        size = getattr(info["file"], "size", None)
        if size is not None and int(size) < need:
            raise TileCorrupt(f"{url}: truncated ({size} of {need} bytes)")
        return hdu
