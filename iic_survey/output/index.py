"""Index catalogs on ``cntr`` and ``designation``: one source found by its id in one read.

A HATS index catalog, as hats-import's ``add_index`` writes one, maps each value of a column to
the partition (``Norder``, ``Npix``) of the main catalog that holds its row::

    iic_allwise_cntr_index/
        hats.properties                 dataproduct_type=index, hats_index_column=cntr (last)
        dataset/_common_metadata, _metadata
        dataset/index/part.<i>.parquet  columns cntr, Norder, Npix; sorted by cntr

``collection.properties`` lists the indexes (``all_indexes``, ``default_index=cntr``;
:func:`iic_survey.output.finalize.write_collection`), so ``lsdb.open_catalog(root)
.id_search(values={"cntr": x})`` finds them. The files are sorted by the id and cut into small
row groups, so ``dataset/_metadata`` (every row group's min and max) names the one row group
that can hold an id: :func:`locate` reads that footer, one row group of one index file, and
:func:`iic_survey.output.reader.read` then one partition of the main catalog.

:func:`build_indexes` runs after the margin, on a complete catalog only (it refuses a partial
one). It is resumable: an index with its ``hats.properties`` is done and kept; an index
interrupted before it is rebuilt from scratch. The build holds the id column and the pixel of
every row in memory (17 bytes a row for ``cntr``): fine up to a few hundred million rows.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from hats.catalog import TableProperties

from iic_survey.core.atomic import write_atomic
from iic_survey.output import hatsfiles
from iic_survey.output.finalize import write_collection
from iic_survey.output.schema import MAIN, catalog_dir, pixel_file, resolve
from iic_survey.output.staging import OutputError

logger = logging.getLogger(__name__)

INDEXED = ("cntr", "designation")
"""The columns indexed, the first the collection's default index."""
ROW_GROUP_ROWS = 65_536
"""Rows per row group of an index file. A lookup reads ``dataset/_metadata`` (about 370 bytes
per row group: ~4 MB for AllWISE's 747 M rows) and one row group (a few hundred kB)."""
FILE_ROWS = 8_388_608
"""Rows per index file."""
_ENCODING = {"cntr": "DELTA_BINARY_PACKED", "designation": "DELTA_BYTE_ARRAY"}
"""Sorted ids compress to a few bytes a row with these Parquet encodings (then zstd)."""
_PIXEL = ["Norder", "Npix"]
"""Dictionary-encoded: a catalog has few partitions, so a row's pixel costs a few bits."""


def index_name(column: str) -> str:
    """Folder of the index catalog on ``column``: ``iic_allwise_cntr_index``."""
    return f"{MAIN}_{column}_index"


def _check_complete(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """Refuse a catalog that is not finalized, or finalized as partial."""
    props_file = f"{catalog_dir(root)}/hats.properties"
    if not fs.exists(props_file):
        raise OutputError(
            f"{root} is not a finished catalog (no {MAIN}/hats.properties): finish the run "
            f"(it finalizes the catalog) before building its indexes"
        )
    extra = hatsfiles.read_properties(fs, catalog_dir(root)).extra_dict()
    if str(extra.get("iic_partial", "false")).lower() == "true":
        raise OutputError(
            f"{root} is a partial catalog (iic_partial=true: planned pixels are unfinished); "
            f"an index of it would miss their rows: resume the run to finish it first"
        )


def build_indexes(
    out: str, fs: fsspec.AbstractFileSystem | None = None, columns: Sequence[str] = INDEXED
) -> dict[str, int]:
    """Build the index catalog of each column not built yet, then ``collection.properties``.

    Returns the rows indexed per column. Raises :class:`OutputError` on a partial catalog.
    """
    fs, root = resolve(out, fs)
    _check_complete(fs, root)
    with fs.open(f"{catalog_dir(root)}/partition_info.csv", "rb") as f:
        info = pd.read_csv(f)
    parts = sorted(zip(info["Norder"].astype(int), info["Npix"].astype(int), strict=True))
    rows = {column: _build_one(fs, root, column, parts) for column in columns}
    write_collection(fs, root)
    return rows


def _build_one(
    fs: fsspec.AbstractFileSystem, root: str, column: str, parts: list[tuple[int, int]]
) -> int:
    """The index catalog of ``column`` (kept if complete, rebuilt if interrupted)."""
    catalog = catalog_dir(root, index_name(column))
    if fs.exists(f"{catalog}/hats.properties"):
        rows = int(hatsfiles.read_properties(fs, catalog).total_rows or 0)
        logger.info("index %s exists (%d rows): kept", index_name(column), rows)
        return rows
    if fs.exists(catalog):  # an interrupted build: its files are not trusted
        fs.rm(catalog, recursive=True)
    table = _gather(fs, root, column, parts)
    for i, start in enumerate(range(0, max(table.num_rows, 1), FILE_ROWS)):
        sink = io.BytesIO()
        pq.write_table(table.slice(start, FILE_ROWS), sink, row_group_size=ROW_GROUP_ROWS,
                       compression="zstd", compression_level=9, use_dictionary=_PIXEL,
                       column_encoding={column: _ENCODING.get(column, "PLAIN")})  # fmt: skip
        write_atomic(fs, f"{catalog}/dataset/index/part.{i}.parquet", sink.getvalue())
    rows = hatsfiles.write_index_metadata(fs, catalog)
    props = TableProperties.model_validate(
        {
            "obs_collection": index_name(column),
            "dataproduct_type": "index",
            "hats_nrows": rows,
            "hats_primary_table_url": MAIN,
            "hats_index_column": column,
        }
    )
    hatsfiles.write_properties(fs, catalog, props)
    logger.info("index %s: %d rows", index_name(column), rows)
    return rows


def _gather(
    fs: fsspec.AbstractFileSystem, root: str, column: str, parts: list[tuple[int, int]]
) -> pa.Table:
    """``column``, ``Norder``, ``Npix`` of every row with a value, sorted by ``column``."""
    tables = []
    for order, pixel in parts:
        with fs.open(pixel_file(root, order, pixel), "rb") as f:
            ids = pq.read_table(f, columns=[column]).column(column).drop_null()
        n = len(ids)
        tables.append(pa.table({column: ids,
                                "Norder": pa.array(np.full(n, order, np.uint8)),
                                "Npix": pa.array(np.full(n, pixel, np.uint64))}))  # fmt: skip
    table = pa.concat_tables(tables).combine_chunks()
    return table.sort_by([(column, "ascending")])


def locate(
    fs: fsspec.AbstractFileSystem, root: str, column: str, values: Sequence[Any]
) -> dict[Any, tuple[int, int]] | None:
    """``{value: (order, pixel)}`` of the values found in ``column``'s index; None: no index.

    Reads the index's ``dataset/_metadata`` and, per value, the row group whose min/max can
    hold it (one); values not in the catalog are absent from the result.
    """
    catalog = catalog_dir(root, index_name(column))
    if not fs.exists(f"{catalog}/hats.properties"):
        return None
    with fs.open(f"{catalog}/dataset/_metadata", "rb") as f:
        meta = pq.read_metadata(f)
    wanted: dict[str, set[int]] = {}
    for i in _candidate_groups(meta, column, values):
        wanted.setdefault(meta.row_group(i).column(0).file_path, set()).add(int(i))
    return _read_groups(fs, catalog, meta, column, values, wanted)


def _candidate_groups(meta: pq.FileMetaData, column: str, values: Sequence[Any]) -> set[int]:
    """The row groups whose ``column`` min/max can hold one of ``values`` (all without stats).

    The ids are sorted across the index, so the row groups' ranges are too (in id order): two
    binary searches per value, not a scan of every row group.
    """
    j = meta.schema.names.index(column)
    known, lows, highs = [], [], []
    out: set[int] = set()
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(j).statistics
        if stats is None or not stats.has_min_max:
            out.add(i)
        else:
            known.append(i)
            lows.append(stats.min)
            highs.append(stats.max)
    order = np.argsort(np.asarray(lows), kind="stable")
    lo, hi = np.asarray(lows)[order], np.asarray(highs)[order]
    v = np.asarray(list(values))
    first = np.searchsorted(hi, v, side="left")  # groups from here on end at or after v
    last = np.searchsorted(lo, v, side="right")  # groups before this start at or before v
    for a, b in zip(first.tolist(), last.tolist(), strict=True):
        out.update(np.asarray(known)[order[a:b]].tolist())
    return out


def _read_groups(
    fs: fsspec.AbstractFileSystem,
    catalog: str,
    meta: pq.FileMetaData,
    column: str,
    values: Sequence[Any],
    wanted: dict[str, set[int]],
) -> dict[Any, tuple[int, int]]:
    """The rows of ``values`` in the chosen row groups (global numbers in ``_metadata``)."""
    found: dict[Any, tuple[int, int]] = {}
    for path, groups in sorted(wanted.items()):
        first = min(i for i in range(meta.num_row_groups)
                    if meta.row_group(i).column(0).file_path == path)  # fmt: skip
        with fs.open(f"{catalog}/dataset/{path}", "rb") as f:
            table = pq.ParquetFile(f).read_row_groups(sorted(g - first for g in groups))
        table = table.filter(pc.is_in(table.column(column), pa.array(list(values))))
        for v, k, p in zip(*(table.column(c).to_pylist() for c in (column, "Norder", "Npix")),
                           strict=True):  # fmt: skip
            found[v] = (int(k), int(p))
    return found
