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

The layout itself (path parsing, the index, footers, the typed schema) is in
:mod:`iic_survey.inputs.partitions`; the filesystems, the Arrow bridge without read-ahead and the
translation of refused access are in :mod:`iic_survey.inputs.storage`; which columns a catalog
must have, and of what type, is in :mod:`iic_survey.inputs.allwise_schema`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from astropy.coordinates import angular_separation

from iic_survey.core import healpix
from iic_survey.inputs import partitions, storage
from iic_survey.inputs.allwise_schema import (
    REQUIRED_COLUMNS,
    CatalogSchemaError,
    check_schema,
    suggest_columns,
)
from iic_survey.inputs.partitions import CATALOG_ORDER, LAYOUT, Index, PartitionFiles
from iic_survey.inputs.storage import make_filesystem

logger = logging.getLogger(__name__)

IRSA_ALLWISE_URL = (
    "s3://nasa-irsa-wise/wise/allwise/catalogs/p3as_psd/healpix_k5/wise-allwise.parquet"
)
"""The real AllWISE source catalog (public bucket, region us-west-2, anonymous access)."""

_DIRECT_LISTING_MAX = 64
"""Up to this many order-5 pixels are looked up by listing their directories one by one
(when no index is loaded yet); more than that builds the whole index once."""


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
        store: PartitionFiles,
        schema: pa.Schema,
        has_metadata: bool,
        index: Index | None = None,
    ) -> None:
        """Wrap the files at ``store`` of columns ``schema``; ``index`` if already listed."""
        self._store = store
        self.url = store.url
        self.filesystem = store.filesystem
        self.schema = schema
        self.has_metadata = has_metadata
        self._files = index  # k5 -> relative paths; None until first needed
        self._counts: dict[str, int] = {}  # relative path -> rows

    def __repr__(self) -> str:
        return f"AllWiseCatalog({self.url!r}, columns={len(self.schema)})"

    # -- the coarse step: which files ----------------------------------------------------------

    def _k5(self, pixel: int, order: int) -> np.ndarray:
        order = healpix.check_order(order)
        pixel = int(healpix.check_pixels(pixel, order)[0])
        if order <= CATALOG_ORDER:
            return healpix.children(pixel, order, CATALOG_ORDER)
        return healpix.parent(pixel, order, CATALOG_ORDER)

    def _index(self) -> Index:
        if self._files is None:
            if self.has_metadata:
                self._files, counts = self._store.index_from_metadata(self.schema.names[0])
                self._counts.update(counts)
            else:
                self._files = self._store.index_from_listing()
        return self._files

    def _files_k5(self, k5: np.ndarray) -> list[str]:
        """Relative paths of the files of order-5 pixels ``k5`` (absent pixels have none)."""
        if self._files is None and len(k5) <= _DIRECT_LISTING_MAX:
            return [rel for p in k5 for rel in self._store.list_pixel(int(p))]
        index = self._index()
        return [rel for p in k5 for rel in index.get(int(p), ())]

    def pixels(self, order: int = CATALOG_ORDER) -> np.ndarray:
        """Sorted pixels at ``order`` that hold catalog files.

        Deeper than order 5 this is every child of a partition, some of which may be empty.
        """
        k5 = np.fromiter(self._index().keys(), dtype=np.int64)
        if order == CATALOG_ORDER:
            return k5
        return np.unique(healpix.to_order(k5, CATALOG_ORDER, order)) if k5.size else k5

    def files_for(self, pixel: int, order: int = CATALOG_ORDER) -> list[str]:
        """URLs of the files a read of ``pixel`` at ``order`` opens (and nothing else)."""
        return [f"{self.url}/{rel}" for rel in self._files_k5(self._k5(pixel, order))]

    def check_files(self) -> None:
        """Check the index against one listing of the files (the planner calls this).

        See :meth:`PartitionFiles.reconcile`; without ``_metadata`` the index is the listing.
        """
        if self.has_metadata:
            self._counts.update(self._store.reconcile(self._index()))

    def count(self, pixel: int, order: int = CATALOG_ORDER) -> int:
        """Number of sources in ``pixel`` at ``order``.

        Up to order 5 this comes from ``_metadata`` row-group counts without reading data (or,
        without ``_metadata``, from each file's footer); deeper, from the positions it reads.
        """
        if healpix.check_order(order) > CATALOG_ORDER:
            return len(self.read_pixel(pixel, order, columns=["ra"]))
        total = 0
        for rel in self._files_k5(self._k5(pixel, order)):
            if rel not in self._counts:
                self._counts[rel] = self._store.footer(rel).num_rows
            total += self._counts[rel]
        return total

    # -- the fine step: rows -------------------------------------------------------------------

    def check_columns(self, columns: Iterable[str]) -> list[str]:
        """Return ``columns`` as a de-duplicated list, or raise listing the ones not present."""
        cols = list(dict.fromkeys(columns))
        missing = [c for c in cols if c not in self.schema.names]
        if missing:
            raise CatalogSchemaError(
                f"catalog {self.url} has no column(s) {missing}"
                f"{suggest_columns(missing, self.schema.names)}"
            )
        return cols

    def _read(
        self, rels: Sequence[str], columns: list[str], filter: pc.Expression | None = None
    ) -> pa.Table:
        return self._store.read(rels, self.schema, columns, filter)

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
        order = healpix.check_order(order)
        pix = np.unique(healpix.check_pixels(np.asarray(list(pixels), dtype=np.int64), order))
        cols = self.check_columns(self.schema.names if columns is None else columns)
        if order <= CATALOG_ORDER:
            k5 = (
                np.unique(np.concatenate([self._k5(int(p), order) for p in pix]))
                if pix.size
                else pix
            )
            table = self._read(self._files_k5(k5), cols)
            return table.to_pandas()
        k5 = np.unique(healpix.parent(pix, order, CATALOG_ORDER))
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

        Coarse: the order-5 pixels that overlap the cone
        (:func:`iic_survey.core.healpix.cone_pixels`) pick the files, and a declination band prunes
        row groups by their statistics. Fine: the exact great-circle distance (astropy's
        :func:`~astropy.coordinates.angular_separation`, stable at all separations).

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
        k5 = healpix.cone_pixels(ra, dec, radius_deg, CATALOG_ORDER)
        band = (pc.field("dec") >= dec - radius_deg) & (pc.field("dec") <= dec + radius_deg)
        table = self._read(self._files_k5(k5), read_cols, filter=band)
        ras = table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64)
        decs = table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64)
        sep = np.degrees(
            angular_separation(np.radians(ra), np.radians(dec), np.radians(ras), np.radians(decs))
        )
        keep = sep <= radius_deg
        out = table.filter(pa.array(keep)).select(cols).to_pandas()
        out["_dist_arcsec"] = sep[keep] * 3600.0
        return out


def _pixel_or_minus_one(ra: np.ndarray, dec: np.ndarray, order: int) -> np.ndarray:
    """Pixel of each position, -1 where the position is NaN or out of range (logged)."""
    good = healpix.valid_coordinates(ra, dec)
    out = np.full(ra.shape, -1, dtype=np.int64)
    out[good] = healpix.pixel_of(ra[good], dec[good], order)
    if not good.all():
        logger.warning(
            "%d rows with invalid ra/dec belong to no order-%d pixel", (~good).sum(), order
        )
    return out


# ---------------------------------------------------------------------------------------------
# Opening


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
    store = PartitionFiles(url.rstrip("/"), fs, root.rstrip("/"))
    with storage.access_errors(store.url):
        names = _top_level(store)
        file_schema, index = _file_schema(store, names)
    check_schema(file_schema, require, store.url)
    schema = partitions.partition_schema(file_schema)
    return AllWiseCatalog(store, schema, "_metadata" in names, index)


def _top_level(store: PartitionFiles) -> set[str]:
    """Names at the root's top level; FileNotFoundError naming the layout if there are none.

    One listing (the metadata files and at most 12 k0 directories) says what exists, so
    nothing is probed with failing requests.
    """
    try:
        listed = store.filesystem.ls(store.root, detail=False)
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in listed}
    except (FileNotFoundError, NotADirectoryError):
        names = set()
    if not names:
        raise FileNotFoundError(
            f"no AllWISE catalog at {store.url}: nothing there. Expected the layout {LAYOUT} "
            f"(e.g. {IRSA_ALLWISE_URL})"
        )
    return names


def _file_schema(store: PartitionFiles, names: set[str]) -> tuple[pa.Schema, Index | None]:
    """The files' schema, from ``_common_metadata``, else ``_metadata``, else one file's footer.

    The last case needs the index (from a listing), which is returned so it is not listed twice.
    """
    for name in ("_common_metadata", "_metadata"):
        if name in names:
            return store.footer_file(name).schema.to_arrow_schema(), None
    index = store.index_from_listing()
    if not index:
        raise FileNotFoundError(
            f"no AllWISE catalog at {store.url}: no partition files found. Expected the layout "
            f"{LAYOUT}"
        )
    first = next(iter(index.values()))[0]
    return store.footer(first).schema.to_arrow_schema(), index
