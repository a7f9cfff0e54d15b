"""Rows positioned just across their pixel's edge: handed over to the pixel they lie in.

The input catalog assigns rows to its partitions with its own code; a source within float
rounding of an edge can sit in partition P while its ra/dec (and so its ``_healpix_29``) lie in
the neighbour Q. The rule, one for every row: **a row lives in the partition that holds the
``_healpix_29`` of its own position.** The commit of P writes such rows to
``_strays/Norder=K/Npix=Q/from-P.parquet`` before P's marker (which lists them), so each stray
is counted once, with P's planned rows. :func:`merge_strays`, a step of
:func:`iic_survey.output.finalize.finalize`, then rewrites Q's partitions with them (or makes Q
a partition of its own when no run classifies Q), records the merged sources in Q's marker,
and removes Q's files that the new partitions replace. The merge keeps one row per ``cntr``,
so a merge redone after a crash (files written, marker not yet) gives the same files.
"""

from __future__ import annotations

import json
import logging
import re

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from iic_survey.core.atomic import write_atomic
from iic_survey.output.commit import histogram, write_partitions
from iic_survey.output.schema import OUTPUT_SCHEMA, catalog_dir, marker_path, pixel_file, stray_file
from iic_survey.output.staging import file_metadata

logger = logging.getLogger(__name__)


def pending(
    fs: fsspec.AbstractFileSystem, root: str, order: int, done: dict[int, dict]
) -> dict[int, list[int]]:
    """{destination pixel: [committed source pixels]} of every stray handed over so far."""
    found: dict[int, list[int]] = {}
    for pixel, marker in done.items():
        for stray in marker.get("strays", []):
            found.setdefault(int(stray["pixel"]), []).append(int(pixel))
    return {q: sorted(src) for q, src in sorted(found.items())}


def merge_strays(
    fs: fsspec.AbstractFileSystem,
    root: str,
    order: int,
    done: dict[int, dict],
    planned: set[int],
) -> int:
    """Merge every handed-over stray into its destination; return the pixels rewritten.

    A destination that is planned but not yet committed (a partial run) waits for a later
    finalize; one outside the plan becomes a partition of its own (its marker has 0 rows).
    """
    rewritten = 0
    for dest, sources in pending(fs, root, order, done).items():
        if dest in planned and dest not in done:
            continue
        marker = done.get(dest, {"order": order, "pixel": dest, "rows": 0, "partitions": []})
        if marker.get("merged_strays") == sources:
            _remove_replaced(fs, root, order, dest, marker["partitions"])
            continue
        tables = [_read(fs, pixel_file(root, e["order"], e["pixel"])) for e in marker["partitions"]]
        tables += [_read(fs, stray_file(root, order, dest, s)) for s in sources]
        merged = _unique_sorted(pa.concat_tables(tables).replace_schema_metadata(None))
        merged = merged.replace_schema_metadata(file_metadata(fs, root))
        marker = {
            **marker,
            "partitions": write_partitions(fs, root, order, dest, merged),
            "histogram": histogram(merged),
            "merged_strays": sources,
        }
        write_atomic(
            fs, marker_path(root, order, dest), json.dumps(marker, sort_keys=True).encode()
        )
        _remove_replaced(fs, root, order, dest, marker["partitions"])
        done[dest] = marker
        rewritten += 1
        logger.info("pixel %d: merged the strays of pixels %s", dest, sources)
    return rewritten


def _read(fs: fsspec.AbstractFileSystem, path: str) -> pa.Table:
    with fs.open(path, "rb") as f:
        return pq.read_table(f, schema=OUTPUT_SCHEMA)


def _unique_sorted(table: pa.Table) -> pa.Table:
    """One row per ``cntr`` (the first), sorted by ``_healpix_29`` then ``cntr``."""
    table = table.sort_by([("cntr", "ascending")])
    cntr = table.column("cntr")
    if len(cntr) > 1:
        keep = pc.not_equal(cntr.slice(1), cntr.slice(0, len(cntr) - 1))
        table = table.filter(pa.concat_arrays([pa.array([True]), keep.combine_chunks()]))
    return table.sort_by([("_healpix_29", "ascending"), ("cntr", "ascending")])


def _remove_replaced(
    fs: fsspec.AbstractFileSystem, root: str, order: int, dest: int, entries: list[dict]
) -> None:
    """Delete files inside ``dest`` that its marker's partitions no longer list."""
    keep = {pixel_file(root, e["order"], e["pixel"]) for e in entries}
    fs.invalidate_cache()
    for path in fs.glob(f"{catalog_dir(root)}/dataset/Norder=*/Dir=*/Npix=*.parquet"):
        m = re.search(r"Norder=(\d+)/Dir=\d+/Npix=(\d+)\.parquet$", path)
        inside = m and int(m[1]) >= order and int(m[2]) >> (2 * (int(m[1]) - order)) == dest
        if inside and fs._strip_protocol(path) not in keep and path not in keep:
            fs.rm(path)
