"""A catalog's ``dataset/_metadata`` written one partition footer at a time, in flat memory.

hats' :func:`hats.io.write_parquet_metadata` collects every partition's footer
(``pyarrow.parquet.FileMetaData``) before it joins them: at 12,288 partitions the driver held
2.9x its 100-partition memory (issue 25). This module writes the same files from one pass over
the partitions that holds one footer at a time:

* ``dataset/_metadata``: what ``pq.write_metadata(schema, ..., metadata_collector=footers)``
  writes: the schema-only footer of the dataset's schema (its version, schema, key-value
  metadata, writer and column orders) with every partition's row groups appended, each column
  chunk naming its file, in HEALPix breadth-first order as hats sorts them. A partition's row
  groups are its footer's field 4 (:mod:`iic_survey.core.parquet_footer`), copied as bytes to
  a spool file; the output is composed from the head, the spool and the tail.
* ``dataset/_common_metadata``: the schema-only footer (hats writes the same).
* ``data_thumbnail.parquet``: the first row of each partition (of a random sample when there are
  more than ``thumbnail_threshold``), sorted by ``_healpix_29``, written with hats' own table
  options. Its rows are copied out of the files as read and kept as a few compact chunks.

The tests compare all three with what hats writes on the same catalog.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.io import file_io, paths
from hats.pixel_math.healpix_pixel_function import get_pixel_argsort
from hats.pixel_math.spatial_index import SPATIAL_INDEX_COLUMN
from upath import UPath

from iic_survey.core import parquet_footer as pf
from iic_survey.core.atomic import atomic_output, write_atomic

_NUM_ROWS, _ROW_GROUPS = 3, 4
_LIST_FIELD_DELTA1 = 0x19  # field header: id delta 1, type list
_I64_FIELD_DELTA1 = 0x16  # field header: id delta 1, type i64
_ROWS_PER_CHUNK, _CHUNKS_PER_TABLE = 16, 64
_SPOOL_BLOCK = 1 << 20
"""Bytes copied at a time from the spool into ``_metadata``."""


def _footer_bytes(metadata: pq.FileMetaData) -> bytes:
    """The Thrift ``FileMetaData`` struct of ``metadata`` (no magic, no length)."""
    buf = io.BytesIO()
    metadata.write_metadata_file(buf)
    return pf.footer_struct(buf.getvalue())


def _row_groups(struct: bytes) -> tuple[int, bytes]:
    """Count and encoded elements of a footer's row-group list (field 4)."""
    fields = pf.top_level_fields(struct)
    if _ROW_GROUPS not in fields:
        raise ValueError("a Parquet footer without row groups (field 4)")
    _, value, end = fields[_ROW_GROUPS]
    n, _elem, first = pf.read_list_header(struct, value)
    return n, struct[first:end]


class _Joiner:
    """Row groups of many footers, spooled to a temporary file, joined under one schema footer."""

    def __init__(self, schema_footer: bytes) -> None:
        fields = pf.top_level_fields(schema_footer)
        if list(fields)[:4] != [1, 2, _NUM_ROWS, _ROW_GROUPS]:
            raise ValueError(f"schema footer fields {list(fields)}, expected 1, 2, 3, 4 first")
        self._head = schema_footer[: fields[2][2]]
        self._tail = schema_footer[fields[_ROW_GROUPS][2] :]
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by write)
        self.row_groups = self.rows = 0

    def add(self, metadata: pq.FileMetaData) -> None:
        n, groups = _row_groups(_footer_bytes(metadata))
        self._spool.write(groups)
        self.row_groups += n
        self.rows += metadata.num_rows

    def write(self, out: BinaryIO) -> None:
        body = (
            self._head
            + bytes([_I64_FIELD_DELTA1])
            + pf.encode_zigzag(self.rows)
            + bytes([_LIST_FIELD_DELTA1])
            + pf.list_header(self.row_groups, pf.STRUCT)
        )
        length = len(body) + self._spool.tell() + len(self._tail)
        out.write(pf.MAGIC + body)
        self._spool.seek(0)
        while block := self._spool.read(_SPOOL_BLOCK):
            out.write(block)
        out.write(self._tail + length.to_bytes(4, "little") + pf.MAGIC)
        self._spool.close()


class _Thumbnail:
    """One row per partition, kept compact as it grows.

    A one-row batch as read keeps its file's decoded pages, and every array of it is a few
    small allocations: rows are copied out (``take``), joined into one chunk every
    ``_ROWS_PER_CHUNK`` rows, and the chunks into one table every ``_CHUNKS_PER_TABLE``.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self._rows: list[pa.RecordBatch] = []
        self._chunks: list[pa.Table] = [schema.empty_table()]

    def add(self, batch: pa.RecordBatch) -> None:
        self._rows.append(batch.take([0]))
        if len(self._rows) >= _ROWS_PER_CHUNK:
            self._compact()

    def _compact(self) -> None:
        if self._rows:
            self._chunks.append(pa.Table.from_batches(self._rows, self.schema).combine_chunks())
            self._rows = []
        if len(self._chunks) >= _CHUNKS_PER_TABLE:
            self._chunks = [pa.concat_tables(self._chunks).combine_chunks()]

    def to_bytes(self) -> bytes:
        self._compact()
        table = pa.concat_tables(self._chunks).combine_chunks()
        if SPATIAL_INDEX_COLUMN in table.column_names:
            table = table.sort_by(SPATIAL_INDEX_COLUMN)
        buf = io.BytesIO()
        pq.write_table(table, buf, **file_io.get_parquet_write_table_kwargs(table.schema))
        return buf.getvalue()


def _schema_footer(schema: pa.Schema) -> bytes:
    """The footer file ``pq.write_metadata(schema, ...)`` writes (``_common_metadata``)."""
    buf = io.BytesIO()
    pq.write_metadata(schema, buf)
    return buf.getvalue()


def _ordered(rel_paths: Sequence[str], order_by_healpix: bool) -> list[str]:
    if not order_by_healpix:
        return list(rel_paths)
    pixels = [paths.get_healpix_from_path(rel) for rel in rel_paths]
    return [rel_paths[i] for i in np.asarray(get_pixel_argsort(pixels))]


def write_streamed_metadata(
    catalog: UPath,
    schema: pa.Schema,
    files: Sequence[str],
    *,
    order_by_healpix: bool = True,
    thumbnail: set[str] | None = None,
) -> int:
    """Write a catalog's ``dataset/_common_metadata`` and ``dataset/_metadata`` (and
    ``data_thumbnail.parquet`` when ``thumbnail`` is given), as hats' ``write_parquet_metadata``.

    Parameters
    ----------
    catalog
        The catalog's root folder.
    schema
        The dataset's schema (hats takes pyarrow's dataset schema).
    files
        The partition files, relative to ``{catalog}/dataset``.
    order_by_healpix
        Row groups in HEALPix breadth-first order (as hats), else in ``files`` order.
    thumbnail
        The files (of ``files``) whose first row goes into the thumbnail; None: no thumbnail.

    Each file is opened once (its footer, and its first row for the thumbnail); one footer is
    held at a time. Returns the total rows.
    """
    dataset_dir = catalog / "dataset"
    common = _schema_footer(schema)
    joiner, rows = _Joiner(pf.footer_struct(common)), _Thumbnail(schema)
    for rel in _ordered(files, order_by_healpix):
        # a string join: one per partition, 12,288 of them on the full sky
        with catalog.fs.open(f"{dataset_dir.path}/{rel}", "rb") as f:
            pfile = pq.ParquetFile(f)
            metadata = pfile.metadata
            metadata.set_file_path(rel)
            joiner.add(metadata)
            if thumbnail is not None and rel in thumbnail:
                rows.add(next(pfile.iter_batches(batch_size=1)))
    write_atomic(dataset_dir / "_common_metadata", common)
    with atomic_output(dataset_dir / "_metadata") as out:
        joiner.write(out)
    if thumbnail is not None:
        write_atomic(catalog / "data_thumbnail.parquet", rows.to_bytes())
    return joiner.rows
