"""Committing a pixel: its staged chunks become its sorted partition files, then its marker.

:func:`commit_pixel` checks the staged rows against the planned count and that no ``cntr``
repeats, sorts by ``_healpix_29``, hands the rows positioned in a neighbour to it (a stray file,
:mod:`iic_survey.output.strays`), writes the rest as one partition or, past the run's
``max_rows_per_partition``, as its children (:mod:`iic_survey.output.partitions`), each file
atomically, then the ``_done`` marker (rows, partitions with bytes and sha256, strays, rows per
order-9 pixel for the coverage maps), and removes the staging folder. It is idempotent and safe
to race, so whichever writer task stages a pixel's last chunk commits it
(:func:`commit_if_complete`), and a resumed run skips pixels for which :func:`is_finished`
holds. A crash before the marker leaves files a rerun rewrites byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from iic_survey.core import healpix
from iic_survey.core.atomic import write_atomic
from iic_survey.core.flags import clean, unclassifiable
from iic_survey.output import partitions
from iic_survey.output.schema import (
    OUTPUT_SCHEMA,
    marker_path,
    pixel_file,
    resolve,
    staging_dir,
    stray_file,
)
from iic_survey.output.staging import (
    OutputError,
    file_metadata,
    fresh,
    parquet_bytes,
    part_files,
    read_json,
    run_args,
    staged_rows,
)

SKYMAP_ORDER = 9
"""Order of the row counts each marker keeps, summed into ``point_map.fits``/``skymap.fits``."""

logger = logging.getLogger(__name__)


def is_finished(
    out: str, order: int, pixel: int, fs: fsspec.AbstractFileSystem | None = None
) -> bool:
    """Whether a pixel has been committed (its marker exists)."""
    fs, root = resolve(out, fs)
    return bool(fs.exists(fresh(fs, marker_path(root, order, pixel))))


def commit_pixel(
    out: str,
    order: int,
    pixel: int,
    expected_rows: int,
    fs: fsspec.AbstractFileSystem | None = None,
) -> int:
    """Turn a pixel's staged parts into its final, sorted file; return its row count.

    Idempotent and safe to race: a pixel already committed with ``expected_rows`` rows is left as
    it is (leftover parts are removed), and two concurrent commits write identical bytes.

    Raises
    ------
    OutputError
        If the staged rows do not add up to ``expected_rows`` (a chunk is missing or was staged
        twice under different ids), if a ``cntr`` repeats, or if the pixel was committed before
        with a different count.
    """
    if int(expected_rows) < 1:
        raise ValueError(f"pixel {pixel}: expected_rows must be >= 1 (do not plan empty pixels)")
    fs, root = resolve(out, fs)
    marker = fresh(fs, marker_path(root, order, pixel))
    if fs.exists(marker):
        return _already_committed(fs, root, order, pixel, int(expected_rows))
    parts = part_files(fs, root, order, pixel)
    try:
        tables = []
        for part in parts:
            with fs.open(part, "rb") as f:
                tables.append(pq.read_table(f, schema=OUTPUT_SCHEMA))
    except FileNotFoundError:
        if fs.exists(fresh(fs, marker)):  # a concurrent commit finished first, removed the parts
            return _already_committed(fs, root, order, pixel, int(expected_rows))
        raise
    table = pa.concat_tables(tables) if tables else OUTPUT_SCHEMA.empty_table()
    if table.num_rows != int(expected_rows):
        raise OutputError(
            f"pixel {pixel} (order {order}): {table.num_rows} rows staged in "
            f"{len(parts)} parts, {expected_rows} planned; a chunk is missing or "
            f"duplicated under another chunk id"
        )
    cntr = table.column("cntr").to_numpy()
    uniq, counts = np.unique(cntr, return_counts=True)
    if len(uniq) != len(cntr):
        raise OutputError(
            f"pixel {pixel} (order {order}): {len(cntr) - len(uniq)} repeated cntr "
            f"values (e.g. {uniq[counts > 1][:5].tolist()}); each source must be "
            f"staged once"
        )
    table = table.sort_by([("_healpix_29", "ascending"), ("cntr", "ascending")])
    table = table.replace_schema_metadata(file_metadata(fs, root))
    inside, strays = _hand_over_strays(fs, root, order, pixel, table)
    info = {
        "order": order,
        "pixel": int(pixel),
        "rows": table.num_rows,
        "partitions": write_partitions(fs, root, order, pixel, inside),
        "strays": strays,
        "histogram": histogram(inside),
        # per order-9 pixel: rows classified, and clean ones (the catalog's selection masks)
        **quality_histograms(inside),
    }
    write_atomic(fs, marker, json.dumps(info, sort_keys=True).encode())
    _remove_staging(fs, root, order, pixel)
    logger.debug("committed pixel %d (order %d): %d rows", pixel, order, table.num_rows)
    return table.num_rows


def max_rows_of(fs: fsspec.AbstractFileSystem, root: str) -> int:
    """The run's ``max_rows_per_partition`` (from ``_run.json``; the default if unset)."""
    value = run_args(root, fs).get("max_rows_per_partition")
    return partitions.check_max_rows(value if value else partitions.DEFAULT_MAX_ROWS)


def write_partitions(
    fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int, table: pa.Table
) -> list[dict[str, object]]:
    """Write a work pixel's sorted rows as its partition files; their marker entries."""
    if table.num_rows == 0:
        return []
    h29 = table.column("_healpix_29").to_numpy()
    entries = []
    for k, p, lo, hi in partitions.split(h29, order, pixel, max_rows_of(fs, root)):
        data = parquet_bytes(table.slice(lo, hi - lo))
        write_atomic(fs, pixel_file(root, k, p), data)
        entries.append(
            {
                "order": k,
                "pixel": p,
                "rows": hi - lo,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "file": healpix.hats_path(k, p),
            }
        )
    return entries


def histogram(table: pa.Table) -> list[list[int]]:
    """``[[order-9 pixel, rows], ...]`` of a table's rows (by ``_healpix_29``)."""
    h29 = table.column("_healpix_29").to_numpy()
    pix, n = np.unique(h29 >> (2 * (healpix.MAX_ORDER - SKYMAP_ORDER)), return_counts=True)
    return [[int(a), int(b)] for a, b in zip(pix, n, strict=True)]


def quality_histograms(table: pa.Table) -> dict[str, list[list[int]]]:
    """``histogram_classified`` and ``histogram_clean`` of a table's rows (see :func:`histogram`):
    rows not :func:`~iic_survey.core.flags.unclassifiable`, and :func:`~iic_survey.core.flags.
    clean` ones."""
    flags = table.column("quality_flags").to_numpy()
    return {
        "histogram_classified": histogram(table.filter(pa.array(~unclassifiable(flags)))),
        "histogram_clean": histogram(table.filter(pa.array(clean(flags)))),
    }


def _hand_over_strays(
    fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int, table: pa.Table
) -> tuple[pa.Table, list[dict[str, int]]]:
    """Write the rows positioned in another pixel as stray files; the rows that stay."""
    owner = table.column("_healpix_29").to_numpy() >> (2 * (healpix.MAX_ORDER - order))
    if np.all(owner == int(pixel)):
        return table, []
    strays = []
    for dest in np.unique(owner[owner != int(pixel)]).tolist():
        rows = table.filter(pa.array(owner == dest))
        write_atomic(fs, stray_file(root, order, dest, pixel), parquet_bytes(rows))
        strays.append({"pixel": int(dest), "rows": rows.num_rows})
    logger.info(
        "pixel %d: %d rows handed over to %s",
        pixel,
        len(owner) - int(np.sum(owner == pixel)),
        [s["pixel"] for s in strays],
    )
    return table.filter(pa.array(owner == int(pixel))), strays


def _already_committed(
    fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int, expected_rows: int
) -> int:
    rows = int(read_json(fs, marker_path(root, order, pixel))["rows"])
    if rows != expected_rows:
        raise OutputError(
            f"pixel {pixel} (order {order}) was committed with {rows} rows, but "
            f"{expected_rows} are planned now: the input changed; start a new output"
        )
    _remove_staging(fs, root, order, pixel)
    return rows


def _remove_staging(fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(staging_dir(root, order, pixel), recursive=True)


def commit_if_complete(
    out: str,
    order: int,
    pixel: int,
    expected_rows: int,
    fs: fsspec.AbstractFileSystem | None = None,
) -> bool:
    """Commit a pixel when its staged rows reach ``expected_rows``; return whether it is finished.

    Meant to be called by a writer task after each
    :func:`~iic_survey.output.staging.write_part`: the task that stages the last chunk commits
    the pixel.
    """
    fs, root = resolve(out, fs)
    if fs.exists(fresh(fs, marker_path(root, order, pixel))):
        return True
    if staged_rows(root, order, pixel, fs) < int(expected_rows):
        return False
    commit_pixel(root, order, pixel, expected_rows, fs)
    return True
