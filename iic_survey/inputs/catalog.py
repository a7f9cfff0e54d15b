"""Reading the AllWISE source catalog: IRSA's HEALPix order-5 Parquet, on S3 or on local disk.

The catalog is hive-partitioned exactly as IRSA publishes it::

    <root>/healpix_k0=<k0>/healpix_k5=<k5>/part0.snappy.parquet   (k0 = k5 // 1024, NESTED)
    <root>/_metadata            every row group's footer (file path, row count, statistics)
    <root>/_common_metadata     the schema, with units and descriptions in the field metadata

with ``<root>`` = ``s3://nasa-irsa-wise/wise/allwise/catalogs/p3as_psd/healpix_k5/
wise-allwise.parquet`` for the real 747 M sources, or any local, ``memory://`` or ``s3://`` copy
in that layout (the synthetic sky writes one).

Reading follows lsdb's two steps. The coarse step is pure pixel arithmetic plus an index
(order-5 pixel -> its files and row count): it decides which files a pixel, a set of pixels or a
cone needs, so nothing else is opened. The fine step reads only those files, only the requested
columns, and filters rows by position when the request is finer than the partitioning. The
index comes from ``_metadata`` when there is one (no listing of 12,288 directories, row counts
without reading any data); otherwise from one recursive listing. A single pixel needs neither:
its directory is listed directly, so a worker that was handed a catalog reads one pixel with one
listing request plus the file itself.

Files are read with :mod:`pyarrow.dataset` from an explicit file list with explicit hive
partition values typed as integers, over an fsspec filesystem (s3fs for ``s3://``). Building the
dataset from ``_metadata`` instead would make every Ray worker load the whole ``_metadata``
(hundreds of MB for AllWISE); a file list of a few KB travels with the task instead.

The filesystems, the Arrow bridge without read-ahead and the translation of refused access are
in :mod:`iic_survey.storage`; which columns a catalog must have, and of what type, is in
:mod:`iic_survey.allwise_schema`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from iic_survey.core import sky
from iic_survey.inputs import allwise_schema, storage
from iic_survey.inputs.allwise_schema import (
    REQUIRED_COLUMNS,
    CatalogSchemaError,
    check_schema,
)
from iic_survey.inputs.storage import CatalogError, make_filesystem

logger = logging.getLogger(__name__)

IRSA_ALLWISE_URL = (
    "s3://nasa-irsa-wise/wise/allwise/catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
)
"""The real AllWISE source catalog (public bucket, region us-west-2, anonymous access)."""

CATALOG_ORDER = 5
"""HEALPix order of the partitioning (nside 32, 12,288 partitions)."""

PARTITION_COLUMNS: tuple[str, ...] = ("healpix_k0", "healpix_k5")
"""Hive partition keys, in directory order."""

LAYOUT = (
    "<root>/healpix_k0=<k0>/healpix_k5=<k5>/<name>.parquet with k5 a NESTED HEALPix order-5 "
    "pixel and k0 = k5 // 1024, plus optional <root>/_metadata and <root>/_common_metadata"
)
"""The expected layout, quoted in error messages."""

_PART_RE = re.compile(r"^healpix_k0=(\d+)/healpix_k5=(\d+)/([^/]+\.parquet)$")
_DIRECT_LISTING_MAX = 64
"""Up to this many order-5 pixels are looked up by listing their directories one by one
(when no index is loaded yet); more than that builds the whole index once."""


class CorruptPartitionError(CatalogError, OSError):
    """A partition file could not be read as Parquet; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read catalog partition {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[CorruptPartitionError], tuple[str, str]]:
        # Ray ships exceptions from workers to the driver by pickling them.
        return (type(self), (self.path, self.reason))


# ---------------------------------------------------------------------------------------------
# The catalog


class AllWiseCatalog:
    """A hive-partitioned AllWISE catalog: pixel listing, counts, pixel reads and cone searches.

    Build it with :func:`open_catalog`. It pickles (its filesystem, schema and any loaded index
    travel with it), so a Ray driver can plan with it and hand it to workers.

    Attributes
    ----------
    url
        The catalog root as given (no trailing slash).
    filesystem
        The fsspec filesystem the files are read through.
    schema
        Columns of the catalog, the typed partition columns included.
    has_metadata
        Whether ``<root>/_metadata`` exists (the index then needs no listing and no footers).
    """

    def __init__(
        self,
        url: str,
        filesystem: fsspec.AbstractFileSystem,
        root: str,
        schema: pa.Schema,
        has_metadata: bool,
    ) -> None:
        self.url = url.rstrip("/")
        self.filesystem = filesystem
        self._root = root.rstrip("/")
        self.schema = schema
        self.has_metadata = has_metadata
        self._files: dict[int, tuple[str, ...]] | None = None  # k5 -> relative paths
        self._counts: dict[str, int] = {}  # relative path -> rows

    def __repr__(self) -> str:
        return f"AllWiseCatalog({self.url!r}, columns={len(self.schema)})"

    # -- the coarse step: which files ----------------------------------------------------------

    def _k5(self, pixel: int, order: int) -> np.ndarray:
        order = sky.check_order(order)
        pixel = int(sky.check_pixels(pixel, order)[0])
        if order <= CATALOG_ORDER:
            return sky.children(pixel, order, CATALOG_ORDER)
        return sky.parent(pixel, order, CATALOG_ORDER)

    def _index(self) -> dict[int, tuple[str, ...]]:
        if self._files is None:
            if self.has_metadata:
                self._files = self._index_from_metadata()
            else:
                self._files = self._index_from_listing()
            logger.info(
                "catalog %s: %d pixels in %d files",
                self.url,
                len(self._files),
                sum(len(v) for v in self._files.values()),
            )
        return self._files

    def _index_from_metadata(self) -> dict[int, tuple[str, ...]]:
        md = _read_footer_file(self.filesystem, f"{self._root}/_metadata", self.url)
        files: dict[int, list[str]] = {}
        for i in range(md.num_row_groups):
            rg = md.row_group(i)
            rel = rg.column(0).file_path if rg.num_columns else ""
            k5 = self._parse(rel)
            if k5 is None:
                continue
            self._counts[rel] = self._counts.get(rel, 0) + rg.num_rows
            if rel not in files.setdefault(k5, []):
                files[k5].append(rel)
        return {k: tuple(v) for k, v in sorted(files.items())}

    def _index_from_listing(self) -> dict[int, tuple[str, ...]]:
        with storage.access_errors(self.url):
            found = self.filesystem.find(self._root)
        return self._group(found)

    def _group(self, paths: Iterable[str]) -> dict[int, tuple[str, ...]]:
        files: dict[int, list[str]] = {}
        for p in sorted(paths):
            rel = p[len(self._root) :].lstrip("/") if p.startswith(self._root) else p
            k5 = self._parse(rel)
            if k5 is not None:
                files.setdefault(k5, []).append(rel)
        return {k: tuple(v) for k, v in sorted(files.items())}

    def _parse(self, rel: str) -> int | None:
        m = _PART_RE.match(rel)
        if m is None:
            if rel.endswith(".parquet"):
                logger.debug("ignoring %s: not in the layout %s", rel, LAYOUT)
            return None
        k0, k5 = int(m.group(1)), int(m.group(2))
        if k5 >= sky.npix(CATALOG_ORDER) or k0 != k5 // 1024:
            raise CatalogError(f"{self.url}/{rel} breaks the layout {LAYOUT}")
        return k5

    def _files_k5(self, k5: np.ndarray) -> list[str]:
        """Relative paths of the files of order-5 pixels ``k5`` (absent pixels have none)."""
        if self._files is None and len(k5) <= _DIRECT_LISTING_MAX:
            out: list[str] = []
            for p in k5:
                d = f"{self._root}/healpix_k0={int(p) // 1024}/healpix_k5={int(p)}"
                with storage.access_errors(self.url):
                    try:
                        listed = self.filesystem.ls(d, detail=False)
                    except FileNotFoundError:
                        listed = []
                for rels in self._group(listed).values():
                    out.extend(rels)
            return out
        index = self._index()
        return [rel for p in k5 for rel in index.get(int(p), ())]

    def pixels(self, order: int = CATALOG_ORDER) -> np.ndarray:
        """Sorted pixels at ``order`` that hold catalog files.

        Deeper than order 5 this is every child of a partition, some of which may be empty.
        """
        k5 = np.fromiter(self._index().keys(), dtype=np.int64)
        if order == CATALOG_ORDER:
            return k5
        return np.unique(sky.to_order(k5, CATALOG_ORDER, order)) if k5.size else k5

    def files_for(self, pixel: int, order: int = CATALOG_ORDER) -> list[str]:
        """URLs of the files a read of ``pixel`` at ``order`` opens (and nothing else)."""
        return [f"{self.url}/{rel}" for rel in self._files_k5(self._k5(pixel, order))]

    def count(self, pixel: int, order: int = CATALOG_ORDER) -> int:
        """Number of sources in ``pixel`` at ``order``.

        Up to order 5 this comes from ``_metadata`` row-group counts without reading data (or,
        without ``_metadata``, from each file's footer); deeper, from the positions it reads.
        """
        if sky.check_order(order) > CATALOG_ORDER:
            return len(self.read_pixel(pixel, order, columns=["ra"]))
        total = 0
        for rel in self._files_k5(self._k5(pixel, order)):
            if rel not in self._counts:
                with storage.access_errors(self.url), self._open(rel) as f:
                    self._counts[rel] = self._footer(rel, f).num_rows
            total += self._counts[rel]
        return total

    def _open(self, rel: str) -> Any:
        try:
            return self.filesystem.open(f"{self._root}/{rel}", "rb", cache_type="none")
        except TypeError:
            return self.filesystem.open(f"{self._root}/{rel}", "rb")

    def _footer(self, rel: str, f: Any) -> pq.FileMetaData:
        try:
            return pq.read_metadata(f)
        except pa.ArrowException as exc:
            raise CorruptPartitionError(f"{self.url}/{rel}", str(exc)) from exc

    # -- the fine step: rows -------------------------------------------------------------------

    def check_columns(self, columns: Iterable[str]) -> list[str]:
        """Return ``columns`` as a de-duplicated list, or raise listing the ones not present."""
        cols = list(dict.fromkeys(columns))
        missing = [c for c in cols if c not in self.schema.names]
        if missing:
            raise CatalogSchemaError(
                f"catalog {self.url} has no column(s) {missing}"
                f"{allwise_schema.did_you_mean(missing, self.schema.names)}"
            )
        return cols

    def _dataset(self, rels: Sequence[str]) -> ds.FileSystemDataset:
        """The files as one dataset with the catalog schema and their typed hive keys."""
        parts = []
        for rel in rels:
            k5 = self._parse(rel)
            if k5 is None:
                raise CatalogError(f"{self.url}/{rel} is not in the layout {LAYOUT}")
            parts.append((pc.field("healpix_k0") == k5 // 1024) & (pc.field("healpix_k5") == k5))
        return ds.FileSystemDataset.from_paths(
            [f"{self._root}/{rel}" for rel in rels],
            schema=self.schema,
            format=ds.ParquetFileFormat(),
            filesystem=storage.arrow_filesystem(self.filesystem),
            partitions=parts,
        )

    def _read(
        self, rels: Sequence[str], columns: list[str], filter: pc.Expression | None = None
    ) -> pa.Table:
        if not rels:
            return self.schema.empty_table().select(columns)
        try:
            with storage.access_errors(self.url):
                return self._dataset(rels).to_table(columns=columns, filter=filter)
        except (CatalogError, FileNotFoundError, MemoryError):
            raise
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and not _from_arrow(exc):
                # The storage failed (network, 5xx): keep the type for retry logic, name files.
                exc.add_note(f"while reading catalog files {[f'{self.url}/{r}' for r in rels]}")
                raise
            bad = self._culprit(rels, columns, exc)
            raise CorruptPartitionError(f"{self.url}/{bad}", str(exc).strip()) from exc

    def _culprit(self, rels: Sequence[str], columns: list[str], exc: Exception) -> str:
        """The file behind a failed multi-file read (re-read one by one), for the message."""
        for rel in rels:
            if rel in str(exc):
                return rel
        if len(rels) > 1:
            for rel in rels:
                try:
                    self._dataset([rel]).to_table(columns=columns)
                except Exception:
                    return rel
        return rels[0] if len(rels) == 1 else f"one of {len(rels)} files"

    def read_pixels(
        self,
        pixels: Iterable[int] | np.ndarray,
        order: int = CATALOG_ORDER,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Sources of any set of pixels at ``order`` (each file opened once).

        Parameters
        ----------
        pixels
            NESTED pixel indices at ``order``. Shallower than 5: each is the union of its
            order-5 children. Deeper: the parent partitions, filtered by position.
        columns
            Columns to read (default: all). Projection happens in the Parquet reader.

        Returns
        -------
        One row per source, in partition order; an empty frame with the requested columns when
        no source falls in the pixels.
        """
        order = sky.check_order(order)
        pix = np.unique(sky.check_pixels(np.asarray(list(pixels), dtype=np.int64), order))
        cols = self.check_columns(self.schema.names if columns is None else columns)
        if order <= CATALOG_ORDER:
            k5 = (
                np.unique(np.concatenate([self._k5(int(p), order) for p in pix]))
                if pix.size
                else pix
            )
            table = self._read(self._files_k5(k5), cols)
            return table.to_pandas()
        k5 = np.unique(sky.parent(pix, order, CATALOG_ORDER))
        read_cols = list(dict.fromkeys([*cols, "ra", "dec"]))
        table = self._read(self._files_k5(k5), read_cols)
        ra = table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64)
        dec = table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64)
        keep = np.isin(_pixel_or_minus_one(ra, dec, order), pix)
        return table.filter(pa.array(keep)).select(cols).to_pandas()

    def read_pixel(
        self, pixel: int, order: int = CATALOG_ORDER, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """Sources of one pixel at any order; see :meth:`read_pixels`."""
        return self.read_pixels([int(pixel)], order, columns)

    def cone(
        self,
        ra: float,
        dec: float,
        radius_deg: float,
        columns: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Sources within ``radius_deg`` of (``ra``, ``dec``), with their distance.

        Coarse: the order-5 pixels that overlap the cone (:func:`iic_survey.sky.cone_pixels`)
        pick the files, and a declination band prunes row groups by their statistics. Fine: the
        exact great-circle distance (Vincenty's formula, stable at all separations).

        Returns
        -------
        The requested columns plus ``_dist_arcsec``, in partition order.
        """
        ra, dec, radius_deg = float(ra), float(dec), float(radius_deg)
        if not (np.isfinite(ra) and np.isfinite(dec)) or not (0 <= ra <= 360 and -90 <= dec <= 90):
            raise ValueError(f"cone centre must be ra in [0, 360], dec in [-90, 90]: {ra}, {dec}")
        if not 0 < radius_deg <= 180:
            raise ValueError(f"cone radius must be in (0, 180] degrees, got {radius_deg}")
        cols = self.check_columns(self.schema.names if columns is None else columns)
        read_cols = list(dict.fromkeys([*cols, "ra", "dec"]))
        k5 = sky.cone_pixels(ra, dec, radius_deg, CATALOG_ORDER)
        band = (pc.field("dec") >= dec - radius_deg) & (pc.field("dec") <= dec + radius_deg)
        table = self._read(self._files_k5(k5), read_cols, filter=band)
        sep = angular_separation_deg(
            ra,
            dec,
            table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64),
            table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64),
        )
        keep = sep <= radius_deg
        out = table.filter(pa.array(keep)).select(cols).to_pandas()
        out["_dist_arcsec"] = sep[keep] * 3600.0
        return out


def _from_arrow(exc: BaseException) -> bool:
    """Whether an error was raised by Arrow's own reader (bad bytes), not by the storage.

    Arrow reports undecodable Parquet pages as a plain ``OSError`` without errno; errors from
    the fsspec filesystem come through as the Python exceptions they were.
    """
    return isinstance(exc, pa.ArrowException) or (type(exc) is OSError and exc.errno is None)


def _pixel_or_minus_one(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    """Pixel of each position, -1 where the position is NaN or out of range (logged)."""
    good = sky.valid_coordinates(ra, dec)
    out = np.full(ra.shape, -1, dtype=np.int64)
    out[good] = sky.pixel_of(ra[good], dec[good], order)
    if not good.all():
        logger.warning(
            "%d rows with invalid ra/dec belong to no order-%d pixel", (~good).sum(), order
        )
    return out


def angular_separation_deg(ra0: float, dec0: float, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Great-circle distance in degrees from one point to many (Vincenty, as astropy uses)."""
    lon0, lat0 = np.radians(ra0), np.radians(dec0)
    lon, lat = np.radians(ra), np.radians(dec)
    dlon = lon - lon0
    sdl, cdl = np.sin(dlon), np.cos(dlon)
    s0, c0, s1, c1 = np.sin(lat0), np.cos(lat0), np.sin(lat), np.cos(lat)
    num = np.hypot(c1 * sdl, c0 * s1 - s0 * c1 * cdl)
    den = s0 * s1 + c0 * c1 * cdl
    return np.degrees(np.arctan2(num, den))


# ---------------------------------------------------------------------------------------------
# Opening


def _read_footer_file(fs: fsspec.AbstractFileSystem, path: str, url: str) -> pq.FileMetaData:
    """Parse ``_metadata`` / ``_common_metadata``: all footer, so fetched whole in one request."""
    data = fs.cat_file(path)
    try:
        return pq.read_metadata(pa.BufferReader(data))
    except pa.ArrowException as exc:
        name = path.rsplit("/", 1)[-1]
        raise CorruptPartitionError(f"{url}/{name}", str(exc)) from exc


def _partition_schema(file_schema: pa.Schema) -> pa.Schema:
    """The file schema plus the hive keys as integers (the files' own type if they carry them)."""
    fields = list(file_schema)
    for name in PARTITION_COLUMNS:
        if name in file_schema.names:
            typ = file_schema.field(name).type
            if not pa.types.is_integer(typ):
                raise CatalogSchemaError(f"partition column {name} is {typ}, expected an integer")
        else:
            fields.append(pa.field(name, pa.int64()))
    return pa.schema(fields, metadata=file_schema.metadata)


def open_catalog(
    url: str,
    filesystem: fsspec.AbstractFileSystem | None = None,
    *,
    anon: bool | None = None,
    endpoint_url: str | None = None,
    storage_options: dict[str, Any] | None = None,
    require: Sequence[str] = REQUIRED_COLUMNS,
) -> AllWiseCatalog:
    """Open a hive-partitioned AllWISE catalog (IRSA's, or a copy in its layout).

    Reads the schema only (``_common_metadata``, else ``_metadata``, else one file's footer);
    the pixel index is loaded when first needed.

    Parameters
    ----------
    url
        The catalog root, e.g. :data:`IRSA_ALLWISE_URL`, a local path or a ``memory://`` URL.
    filesystem
        An fsspec filesystem to use instead of one made from ``url`` (then ``url`` is a path or
        URL on it, and the three options below are not used).
    anon, endpoint_url, storage_options
        See :func:`make_filesystem`.
    require
        Columns that must exist (default :data:`REQUIRED_COLUMNS`); the pipeline passes
        :data:`PIPELINE_COLUMNS` to fail before any work starts.

    Raises
    ------
    FileNotFoundError
        No catalog at ``url`` (the message names the URL and the expected layout).
    CatalogSchemaError
        A required column is missing or a known column has the wrong type.
    CatalogAccessError
        The storage refused access (a ``PermissionError``).
    CorruptPartitionError
        A metadata or partition file is not valid Parquet (names the file).
    """
    if filesystem is None:
        fs, root = make_filesystem(
            url, anon=anon, endpoint_url=endpoint_url, storage_options=storage_options
        )
    else:
        fs, root = filesystem, filesystem._strip_protocol(url)
    root = root.rstrip("/")
    url = url.rstrip("/")
    with storage.access_errors(url):
        # One listing of the root's top level (the metadata files and at most 12 k0
        # directories) says what exists, so nothing is probed with failing requests.
        try:
            names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
        except (FileNotFoundError, NotADirectoryError):
            names = set()
        if not names:
            raise FileNotFoundError(
                f"no AllWISE catalog at {url}: nothing there. Expected the layout {LAYOUT} "
                f"(e.g. {IRSA_ALLWISE_URL})"
            )
        catalog = AllWiseCatalog(url, fs, root, pa.schema([]), "_metadata" in names)
        file_schema: pa.Schema | None = None
        for name in ("_common_metadata", "_metadata"):
            if name in names:
                md = _read_footer_file(fs, f"{root}/{name}", url)
                file_schema = md.schema.to_arrow_schema()
                break
        if file_schema is None:
            index = catalog._index()
            if not index:
                raise FileNotFoundError(
                    f"no AllWISE catalog at {url}: no partition files found. Expected the layout "
                    f"{LAYOUT}"
                )
            first = next(iter(index.values()))[0]
            with catalog._open(first) as f:
                file_schema = catalog._footer(first, f).schema.to_arrow_schema()
    check_schema(file_schema, require, url)
    catalog.schema = _partition_schema(file_schema)
    return catalog
