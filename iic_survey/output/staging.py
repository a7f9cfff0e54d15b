"""Setting up and staging the classification catalog (a HATS catalog): resumable, exactly once.

A run goes: :func:`prepare_output` (records the run's arguments in ``_run.json``, or resumes a
run with the same ones), :func:`write_plan` (planned rows per pixel), :func:`write_part` for
each chunk, :func:`iic_survey.output.commit.commit_pixel` /
:func:`~iic_survey.output.commit.commit_if_complete` for each pixel, and
:func:`iic_survey.output.finalize.finalize` (the HATS metadata, ``hats.properties`` last). The
files and their schema are described in :mod:`iic_survey.output.schema`.

A pixel is the unit of output and of resume; a chunk (a few thousand rows) is the unit of data
flow. Workers stage each chunk as its own part file (named by a deterministic chunk id, so a retried
chunk overwrites itself: exactly once), and the commit turns a pixel's parts into its final file
once their rows add up to the planned count. Every step is a stateless function of
(path, filesystem), so any number of Ray tasks can stage and commit pixels in parallel: nothing
funnels the sky through one process. Files are written by
:func:`iic_survey.core.atomic.write_atomic` (``os.replace`` locally; on object stores one PUT per
object is atomic), and a pixel counts as finished only once its ``_done`` marker exists
(:func:`commit_markers`).

This module also holds the small pieces the commit and finalize steps share: :func:`read_json`,
:func:`parquet_bytes`, :func:`part_files` and :func:`file_metadata`. Reading the catalog is
:mod:`iic_survey.output.reader`.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import re
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from iic_survey.core import healpix
from iic_survey.core.atomic import write_atomic
from iic_survey.core.constants import __version__
from iic_survey.output.schema import (
    FORMAT_NAME,
    FORMAT_VERSION,
    OUTPUT_SCHEMA,
    as_output_table,
    resolve,
    staging_dir,
)

logger = logging.getLogger(__name__)

_CHUNK_ID = re.compile(r"^[A-Za-z0-9_.=-]{1,128}$")
# Dictionary-encode only the low-cardinality strings: trying it on every float column makes
# writing three times slower and the files larger (measured: 76 vs 101 bytes a row).
_WRITE_OPTIONS: dict[str, Any] = {
    "compression": "zstd",
    "use_dictionary": ["class", "model_version"],
    "row_group_size": 200_000,
}
_PART_OPTIONS: dict[str, Any] = {**_WRITE_OPTIONS, "compression": "snappy"}  # short-lived files


class OutputError(RuntimeError):
    """The output location or a pixel's staged parts are not in the state the call needs."""


# ---------------------------------------------------------------- low-level I/O


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    """The JSON document at ``path`` (a run record, plan or commit marker)."""
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def parquet_bytes(table: pa.Table, options: dict[str, Any] = _WRITE_OPTIONS) -> bytes:
    """``table`` as the bytes of a Parquet file, written with the catalog's options."""
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


# ---------------------------------------------------------------- run set-up and plan


def _canonical(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, sort_keys=True, default=str))
    except (TypeError, ValueError) as err:
        raise ValueError(f"run arguments must be JSON-serialisable: {err}") from err


def run_args(out: str, fs: fsspec.AbstractFileSystem | None = None) -> dict[str, Any]:
    """The arguments a run recorded in ``_run.json`` (catalog, images, model ...); {} if none."""
    fs, root = resolve(out, fs)
    if not fs.exists(f"{root}/_run.json"):
        return {}
    return dict(read_json(fs, f"{root}/_run.json").get("args") or {})


def prepare_output(
    out: str,
    run_args: Mapping[str, Any],
    overwrite: bool = False,
    fs: fsspec.AbstractFileSystem | None = None,
) -> bool:
    """Make ``out`` ready for a run with ``run_args``; return True when resuming one.

    An empty or absent path starts a new catalog. A path holding an output of this code with the
    same arguments resumes it. Anything else is refused, unless ``overwrite``: then a previous
    output (or a single file) is deleted. A non-empty folder that is not an output is never
    deleted, even with ``overwrite``: remove it yourself.

    Raises
    ------
    OutputError
        If ``out`` holds something else, or an output from different arguments.
    """
    fs, root = resolve(out, fs)
    args = _canonical(dict(run_args))
    run_file = f"{root}/_run.json"
    if fs.exists(root):
        if fs.isfile(root):
            if not overwrite:
                raise OutputError(f"{out} is a file; pass overwrite to replace it")
            fs.rm(root)
        elif fs.ls(root, detail=False):
            ours = fs.exists(run_file) or fs.exists(f"{root}/hats.properties")
            if not ours:
                raise OutputError(
                    f"{out} is a non-empty folder that is not an iic_survey output "
                    f"(no _run.json or hats.properties); choose another path or "
                    f"delete it yourself"
                )
            previous = read_json(fs, run_file).get("args") if fs.exists(run_file) else None
            if overwrite:
                logger.info("overwrite: deleting the previous output at %s", out)
                fs.rm(root, recursive=True)
            elif previous != args:
                diff = sorted(
                    k
                    for k in set(args) | set(previous or {})
                    if (previous or {}).get(k) != args.get(k)
                )
                raise OutputError(
                    f"{out} holds an output from different arguments (differing: "
                    f"{diff}); pass overwrite, or rerun with the same arguments to "
                    f"resume"
                )
            else:
                logger.info(
                    "resuming the run at %s: %d pixels already finished",
                    out,
                    sum(len(v) for v in commit_markers(root, fs).values()),
                )
                return True
    fs.makedirs(root, exist_ok=True)
    record = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "code_version": __version__,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": args,
    }
    write_atomic(fs, run_file, json.dumps(record, indent=1, sort_keys=True).encode())
    return False


def write_plan(
    out: str, order: int, counts: Mapping[int, int], fs: fsspec.AbstractFileSystem | None = None
) -> None:
    """Record the planned rows per pixel, for the commits to be checked against.

    :func:`iic_survey.output.finalize.finalize` and
    :func:`iic_survey.output.validate.validate_catalog` compare the committed pixels with it.

    Raises
    ------
    OutputError
        If a different plan was recorded before (the input changed under a resumed run).
    """
    fs, root = resolve(out, fs)
    planned = {int(p): int(n) for p, n in sorted(counts.items()) if int(n) > 0}
    healpix.check_pixels(np.array(list(planned), dtype=np.int64), order)
    plan = {"order": healpix.check_order(order), "counts": {str(p): n for p, n in planned.items()}}
    path = f"{root}/_plan.json"
    if fs.exists(path) and read_json(fs, path) != plan:
        raise OutputError(
            f"{out} was planned with different pixels or counts; the input catalog "
            f"or order changed: start a new output or pass overwrite"
        )
    write_atomic(fs, path, json.dumps(plan).encode())


def read_plan(
    out: str, fs: fsspec.AbstractFileSystem | None = None
) -> tuple[int, dict[int, int]] | None:
    """(order, {pixel: planned rows}) recorded by :func:`write_plan`, or None."""
    fs, root = resolve(out, fs)
    if not fs.exists(f"{root}/_plan.json"):
        return None
    plan = read_json(fs, f"{root}/_plan.json")
    return int(plan["order"]), {int(p): int(n) for p, n in plan["counts"].items()}


# ---------------------------------------------------------------- staging and commit


def write_part(
    out: str,
    order: int,
    pixel: int,
    chunk_id: str,
    rows: pd.DataFrame | pa.Table,
    fs: fsspec.AbstractFileSystem | None = None,
) -> int:
    """Stage one chunk of a pixel's result rows; return the number of rows staged.

    ``chunk_id`` must be deterministic (e.g. ``f"{pixel}-{i:05d}"``): a retried chunk then
    replaces its own part file, so each row is staged exactly once.
    """
    if not _CHUNK_ID.match(str(chunk_id)):
        raise ValueError(f"chunk id {chunk_id!r} must match {_CHUNK_ID.pattern}")
    fs, root = resolve(out, fs)
    table = as_output_table(rows, order, pixel)
    part = f"{staging_dir(root, order, pixel)}/part-{chunk_id}.parquet"
    write_atomic(fs, part, parquet_bytes(table, _PART_OPTIONS))
    return table.num_rows


def fresh(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """``path``, after dropping what ``fs`` has cached of its listing and its parents'.

    fsspec keeps one filesystem instance per process and its options, and s3fs caches every
    listing in it (``exists`` answers from a cached parent listing too). A Ray worker reused
    across runs, or across pixels that other workers commit, would otherwise decide what to
    read, commit, merge or delete from a listing of the past (a rerun's cleared parts read as
    present: ``NoSuchKey``). Call it on every path whose listing or existence decides such a
    thing; on local and memory filesystems it costs nothing.
    """
    fs.invalidate_cache(path)
    return path


def part_files(fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int) -> list[str]:
    """The staged part files of a pixel, sorted (none if nothing is staged), listed afresh."""
    folder = fresh(fs, staging_dir(root, order, pixel))
    if not fs.exists(folder):
        return []
    return sorted(
        p
        for p in fs.ls(folder, detail=False)
        if re.fullmatch(r"part-.*\.parquet", p.rsplit("/", 1)[1])
    )


def staged_rows(
    out: str, order: int, pixel: int, fs: fsspec.AbstractFileSystem | None = None
) -> int:
    """Rows staged so far for a pixel (from the part files' footers)."""
    fs, root = resolve(out, fs)
    total = 0
    for part in part_files(fs, root, order, pixel):
        with fs.open(part, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def commit_markers(
    out: str, fs: fsspec.AbstractFileSystem | None = None
) -> dict[int, dict[int, dict[str, Any]]]:
    """{order: {pixel: marker}} of every committed pixel (marker: rows, bytes, sha256, file)."""
    fs, root = resolve(out, fs)
    # Markers are written by other processes (Ray workers); fsspec caches listings per
    # filesystem instance (s3fs does, child folders included), so a stale listing would hide
    # finished pixels: drop the whole listing cache.
    fs.invalidate_cache()
    found: dict[int, dict[int, dict[str, Any]]] = {}
    for path in fs.glob(f"{root}/_done/Norder=*/Npix=*.json"):
        m = re.search(r"Norder=(\d+)/Npix=(\d+)\.json$", path)
        if m:
            found.setdefault(int(m[1]), {})[int(m[2])] = read_json(fs, path)
    return found


def finished_pixels(
    out: str, order: int, fs: fsspec.AbstractFileSystem | None = None
) -> np.ndarray:
    """Sorted pixels at ``order`` whose commit marker exists (the resume set)."""
    fs, root = resolve(out, fs)
    return np.array(
        sorted(commit_markers(root, fs).get(healpix.check_order(order), {})), dtype=np.int64
    )


def file_metadata(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """Schema metadata of every file: the format keys plus the run's provenance."""
    meta = {k.decode(): v.decode() for k, v in (OUTPUT_SCHEMA.metadata or {}).items()}
    if fs.exists(f"{root}/_run.json"):
        run = read_json(fs, f"{root}/_run.json")
        meta["iic_survey.run_args"] = json.dumps(run.get("args"), sort_keys=True)
        meta["iic_survey.code_version"] = str(run.get("code_version", __version__))
    return meta
