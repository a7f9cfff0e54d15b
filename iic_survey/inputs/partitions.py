"""The catalog's partition layout: which file holds which HEALPix order-5 pixel, and its footers.

IRSA publishes the AllWISE catalog hive-partitioned by NESTED order-5 pixel::

    <root>/healpix_k0=<k0>/healpix_k5=<k5>/<name>.parquet   (k0 = k5 // 1024)
    <root>/_metadata            every row group's footer (file path, row count, statistics)
    <root>/_common_metadata     the schema, with units and descriptions in the field metadata

This module works at the level of files, below the pixels and cones of
:mod:`iic_survey.inputs.catalog`: parsing a relative path into its pixel (refusing paths that
break the layout), the index "order-5 pixel -> its files" built from ``_metadata`` (with row
counts, no data read) or from one listing, the footers of metadata and partition files, the
catalog's schema with the hive keys typed as integers, and reading a list of files as one
:mod:`pyarrow.dataset` with explicit, integer-typed hive keys. :class:`PartitionFiles` holds
where the files are; unreadable Parquet is a :class:`CorruptPartitionError` naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Sequence

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from iic_survey.core import healpix
from iic_survey.inputs import footer_bytes, storage
from iic_survey.inputs.allwise_schema import CatalogSchemaError
from iic_survey.inputs.storage import CatalogError

logger = logging.getLogger(__name__)

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

Index = dict[int, tuple[str, ...]]
"""Order-5 pixel -> relative paths of its files, both sorted."""


class CorruptPartitionError(CatalogError, OSError):
    """A partition file could not be read as Parquet; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read catalog partition {path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type[CorruptPartitionError], tuple[str, str]]:
        # Ray ships exceptions from workers to the driver by pickling them.
        return (type(self), (self.path, self.reason))


def parse_path(rel: str, url: str) -> int | None:
    """The order-5 pixel of a partition file at ``rel`` under the root, or None if not one.

    Raises :class:`CatalogError` for a path that looks like a partition but breaks the layout
    (pixel out of range, ``k0`` not ``k5 // 1024``).
    """
    m = _PART_RE.match(rel)
    if m is None:
        if rel.endswith(".parquet"):
            logger.debug("ignoring %s: not in the layout %s", rel, LAYOUT)
        return None
    k0, k5 = int(m.group(1)), int(m.group(2))
    if k5 >= healpix.npix(CATALOG_ORDER) or k0 != k5 // 1024:
        raise CatalogError(f"{url}/{rel} breaks the layout {LAYOUT}")
    return k5


@dataclasses.dataclass(frozen=True)
class PartitionFiles:
    """Where a catalog's files are, and the file-level reads: index, footers, tables.

    Paths handed in and out are relative to ``root``; messages name files by ``url``. It holds
    no state beyond that, so it pickles with its filesystem.
    """

    url: str
    """The catalog root as given (no trailing slash), for messages."""
    filesystem: fsspec.AbstractFileSystem
    """The fsspec filesystem the files are read through."""
    root: str
    """The root as a path on ``filesystem`` (no trailing slash)."""

    def group(self, paths: Iterable[str]) -> Index:
        """Listed paths (absolute or relative to the root) grouped by pixel; others dropped."""
        files: dict[int, list[str]] = {}
        for p in sorted(paths):
            rel = p[len(self.root) :].lstrip("/") if p.startswith(self.root) else p
            k5 = parse_path(rel, self.url)
            if k5 is not None:
                files.setdefault(k5, []).append(rel)
        return {k: tuple(v) for k, v in sorted(files.items())}

    def index_from_listing(self) -> Index:
        """The index from one recursive listing of the root."""
        with storage.access_errors(self.url):
            found = self.filesystem.find(self.root)
        return self._logged(self.group(found))

    def index_from_metadata(self, first_column: str) -> tuple[Index, dict[str, int]]:
        """The index and each file's row count from ``<root>/_metadata``, reading no data.

        The file is scanned in windows (:func:`~iic_survey.inputs.footer_bytes.scan_metadata`),
        never parsed whole: IRSA's is ~0.6 GB. A file it names without a readable count (a
        writer that orders fields otherwise) is counted from its own footer.
        """
        with storage.access_errors(self.url):
            reader = _RangedReader(self.filesystem, f"{self.root}/_metadata")
            counts, paths = footer_bytes.scan_metadata(reader, first_column)
        files: dict[int, list[str]] = {}
        for rel in sorted(paths):
            k5 = parse_path(rel, self.url)
            if k5 is not None:
                files.setdefault(k5, []).append(rel)
        uncounted = sorted(paths - set(counts))
        if uncounted:
            logger.info("%d files named by _metadata counted from their footers", len(uncounted))
            counts.update({rel: self.footer(rel).num_rows for rel in uncounted})
        return self._logged({k: tuple(v) for k, v in sorted(files.items())}), counts

    def reconcile(self, index: Index) -> dict[str, int]:
        """Check an index read from ``_metadata`` against one listing of the files.

        Raises :class:`CatalogError` naming the first few files ``_metadata`` lists that are
        missing, before any work. A file on disk that it does not list is added to ``index``
        (in place) with a warning; returns those files' row counts, from their own footers.
        """
        listed = self.index_from_listing()
        indexed = {rel for rels in index.values() for rel in rels}
        on_disk = {rel for rels in listed.values() for rel in rels}
        missing = sorted(indexed - on_disk)
        if missing:
            raise CatalogError(
                f"catalog {self.url}: {len(missing)} partition files listed in _metadata are "
                f"missing: {[f'{self.url}/{m}' for m in missing[:5]]}; restore them or rebuild "
                f"_metadata"
            )
        extra = sorted(on_disk - indexed)
        if extra:
            logger.warning(
                "catalog %s: %d partition files are not listed in _metadata (e.g. %s); "
                "planning them from their own footers",
                self.url,
                len(extra),
                extra[:3],
            )
        for k5, rels in listed.items():
            if set(rels) - indexed:
                index[k5] = rels
        return {rel: self.footer(rel).num_rows for rel in extra}

    def _logged(self, files: Index) -> Index:
        n_files = sum(len(v) for v in files.values())
        logger.info("catalog %s: %d pixels in %d files", self.url, len(files), n_files)
        return files

    def list_pixel(self, k5: int) -> list[str]:
        """One pixel's files, from a listing of its directory alone."""
        d = f"{self.root}/healpix_k0={k5 // 1024}/healpix_k5={k5}"
        with storage.access_errors(self.url):
            try:
                listed = self.filesystem.ls(d, detail=False)
            except FileNotFoundError:
                listed = []
        return [rel for rels in self.group(listed).values() for rel in rels]

    def footer(self, rel: str) -> pq.FileMetaData:
        """The footer of one partition file (its end only, without read-ahead)."""
        path = f"{self.root}/{rel}"
        with storage.access_errors(self.url):
            try:
                f = self.filesystem.open(path, "rb", cache_type="none")
            except TypeError:
                f = self.filesystem.open(path, "rb")
            with f:
                try:
                    return pq.read_metadata(f)
                except pa.ArrowException as exc:
                    raise CorruptPartitionError(f"{self.url}/{rel}", str(exc)) from exc

    def footer_file(self, name: str) -> pq.FileMetaData:
        """Parse ``_metadata`` / ``_common_metadata``: all footer, so fetched whole at once."""
        data = self.filesystem.cat_file(f"{self.root}/{name}")
        try:
            return pq.read_metadata(pa.BufferReader(data))
        except pa.ArrowException as exc:
            raise CorruptPartitionError(f"{self.url}/{name}", str(exc)) from exc

    def dataset(self, rels: Sequence[str], schema: pa.Schema) -> ds.FileSystemDataset:
        """The files as one dataset with ``schema`` and their typed hive keys."""
        parts = []
        for rel in rels:
            k5 = parse_path(rel, self.url)
            if k5 is None:
                raise CatalogError(f"{self.url}/{rel} is not in the layout {LAYOUT}")
            parts.append((pc.field("healpix_k0") == k5 // 1024) & (pc.field("healpix_k5") == k5))
        return ds.FileSystemDataset.from_paths(
            [f"{self.root}/{rel}" for rel in rels],
            schema=schema,
            format=ds.ParquetFileFormat(),
            filesystem=storage.arrow_filesystem(self.filesystem),
            partitions=parts,
        )

    def read(
        self,
        rels: Sequence[str],
        schema: pa.Schema,
        columns: list[str],
        filter: pc.Expression | None = None,
    ) -> pa.Table:
        """``columns`` of the rows of files ``rels`` that pass ``filter``, as one table.

        Undecodable bytes raise :class:`CorruptPartitionError` naming the file; a failing
        storage keeps its own error type (for retries), with a note naming the files.
        """
        if not rels:
            return schema.empty_table().select(columns)
        try:
            with storage.access_errors(self.url):
                return self.dataset(rels, schema).to_table(columns=columns, filter=filter)
        except (CatalogError, FileNotFoundError, MemoryError):
            raise
        except (pa.ArrowException, OSError) as exc:
            if isinstance(exc, OSError) and not _from_arrow(exc):
                # The storage failed (network, 5xx): keep the type for retry logic, name files.
                exc.add_note(f"while reading catalog files {[f'{self.url}/{r}' for r in rels]}")
                raise
            bad = self._culprit(rels, schema, columns, exc)
            raise CorruptPartitionError(f"{self.url}/{bad}", str(exc).strip()) from exc

    def _culprit(
        self, rels: Sequence[str], schema: pa.Schema, columns: list[str], exc: Exception
    ) -> str:
        """The file behind a failed multi-file read (re-read one by one), for the message."""
        for rel in rels:
            if rel in str(exc):
                return rel
        if len(rels) > 1:
            for rel in rels:
                try:
                    self.dataset([rel], schema).to_table(columns=columns)
                except Exception:
                    return rel
        return rels[0] if len(rels) == 1 else f"one of {len(rels)} files"


@dataclasses.dataclass
class _RangedReader:
    """``read(n)`` over a file by ranged requests (``cat_file``), from its start to its end.

    Unlike ``filesystem.open``, it relies on no cached size or ETag, so a long-lived process
    reads a ``_metadata`` that was rewritten since it was last listed.
    """

    filesystem: fsspec.AbstractFileSystem
    path: str
    pos: int = 0
    size: int = -1

    def __post_init__(self) -> None:
        self.filesystem.invalidate_cache(self.path)
        self.size = int(self.filesystem.size(self.path))

    def read(self, n: int) -> bytes:
        end = min(self.pos + n, self.size)
        if end <= self.pos:
            return b""
        data = self.filesystem.cat_file(self.path, start=self.pos, end=end)
        self.pos += len(data)
        return data


def _from_arrow(exc: BaseException) -> bool:
    """Whether an error was raised by Arrow's own reader (bad bytes), not by the storage.

    Arrow reports undecodable Parquet pages as a plain ``OSError`` without errno; errors from
    the fsspec filesystem come through as the Python exceptions they were.
    """
    return isinstance(exc, pa.ArrowException) or (type(exc) is OSError and exc.errno is None)


def partition_schema(file_schema: pa.Schema) -> pa.Schema:
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
