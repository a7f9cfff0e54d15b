"""The resumable, exactly-once writer of the classification catalog (a HATS catalog).

A run goes: :func:`prepare_output` (records the run's arguments in ``_run.json``, or resumes a
run with the same ones), :func:`write_plan` (planned rows per pixel), :func:`write_part` for
each chunk, :func:`commit_pixel` / :func:`commit_if_complete` for each pixel, and
:func:`finalize` (the HATS metadata, ``hats.properties`` last). The files and their schema are
described in :mod:`iic_survey.output_format`, whose names are re-exported here.

A pixel is the unit of output and of resume; a chunk (a few thousand rows) is the unit of data
flow. Workers stage each chunk as its own part file (named by a deterministic chunk id, so a retried
chunk overwrites itself: exactly once), and :func:`commit_pixel` turns a pixel's parts into its
final file once their rows add up to the planned count. Every step is a stateless function of
(path, filesystem), so any number of Ray tasks can stage and commit pixels in parallel: nothing
funnels the sky through one process. Locally a file appears by ``os.replace``; on object stores
(one PUT per object is atomic) a pixel counts as finished only once its ``_done`` marker exists.

Reading is in :mod:`iic_survey.export` (``read``, FITS/VOTable export); :func:`read` here
delegates.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Mapping
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from iic_survey import __version__, sky

# The format (schema, column docs, file layout) moved to output_format; importable from here too.
from iic_survey.output_format import COLUMN_DOCS as COLUMN_DOCS
from iic_survey.output_format import COLUMNS as COLUMNS
from iic_survey.output_format import FORMAT_NAME as FORMAT_NAME
from iic_survey.output_format import FORMAT_VERSION as FORMAT_VERSION
from iic_survey.output_format import OUTPUT_SCHEMA as OUTPUT_SCHEMA
from iic_survey.output_format import as_output_table as as_output_table
from iic_survey.output_format import marker_path as marker_path
from iic_survey.output_format import pixel_file as pixel_file
from iic_survey.output_format import resolve as resolve
from iic_survey.output_format import staging_dir as staging_dir

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


def _put(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` so that readers see either nothing or the whole object.

    Local: a dot-named temporary file in the same folder, then ``os.replace``. Object stores and
    memory: one put, which is atomic per object.
    """
    parent = path.rsplit("/", 1)[0]
    fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as f:
        return json.loads(f.read())


def _parquet_bytes(table: pa.Table, options: dict[str, Any] = _WRITE_OPTIONS) -> bytes:
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
    return dict(_read_json(fs, f"{root}/_run.json").get("args") or {})


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
            previous = _read_json(fs, run_file).get("args") if fs.exists(run_file) else None
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
    _put(fs, run_file, json.dumps(record, indent=1, sort_keys=True).encode())
    return False


def write_plan(
    out: str, order: int, counts: Mapping[int, int], fs: fsspec.AbstractFileSystem | None = None
) -> None:
    """Record the planned rows per pixel; :func:`finalize` and :func:`validate_catalog` check them.

    Raises
    ------
    OutputError
        If a different plan was recorded before (the input changed under a resumed run).
    """
    fs, root = resolve(out, fs)
    planned = {int(p): int(n) for p, n in sorted(counts.items()) if int(n) > 0}
    sky.check_pixels(np.array(list(planned), dtype=np.int64), order)
    plan = {"order": sky.check_order(order), "counts": {str(p): n for p, n in planned.items()}}
    path = f"{root}/_plan.json"
    if fs.exists(path) and _read_json(fs, path) != plan:
        raise OutputError(
            f"{out} was planned with different pixels or counts; the input catalog "
            f"or order changed: start a new output or pass overwrite"
        )
    _put(fs, path, json.dumps(plan).encode())


def read_plan(
    out: str, fs: fsspec.AbstractFileSystem | None = None
) -> tuple[int, dict[int, int]] | None:
    """(order, {pixel: planned rows}) recorded by :func:`write_plan`, or None."""
    fs, root = resolve(out, fs)
    if not fs.exists(f"{root}/_plan.json"):
        return None
    plan = _read_json(fs, f"{root}/_plan.json")
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
    _put(fs, part, _parquet_bytes(table, _PART_OPTIONS))
    return table.num_rows


def _parts(fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int) -> list[str]:
    folder = staging_dir(root, order, pixel)
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
    for part in _parts(fs, root, order, pixel):
        with fs.open(part, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def is_finished(
    out: str, order: int, pixel: int, fs: fsspec.AbstractFileSystem | None = None
) -> bool:
    """Whether a pixel has been committed (its marker exists)."""
    fs, root = resolve(out, fs)
    return bool(fs.exists(marker_path(root, order, pixel)))


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
    marker = marker_path(root, order, pixel)
    if fs.exists(marker):
        return _already_committed(fs, root, order, pixel, int(expected_rows))
    parts = _parts(fs, root, order, pixel)
    try:
        tables = []
        for part in parts:
            with fs.open(part, "rb") as f:
                tables.append(pq.read_table(f, schema=OUTPUT_SCHEMA))
    except FileNotFoundError:
        if fs.exists(marker):  # a concurrent commit finished first and removed the parts
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
    table = table.replace_schema_metadata(_file_metadata(fs, root))
    data = _parquet_bytes(table)
    _put(fs, pixel_file(root, order, pixel), data)
    info = {
        "order": order,
        "pixel": int(pixel),
        "rows": table.num_rows,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "file": sky.hats_path(order, pixel),
    }
    _put(fs, marker, json.dumps(info, sort_keys=True).encode())
    _remove_staging(fs, root, order, pixel)
    logger.debug("committed pixel %d (order %d): %d rows", pixel, order, table.num_rows)
    return table.num_rows


def _already_committed(
    fs: fsspec.AbstractFileSystem, root: str, order: int, pixel: int, expected_rows: int
) -> int:
    rows = int(_read_json(fs, marker_path(root, order, pixel))["rows"])
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

    Meant to be called by a writer task after each :func:`write_part`: the task that stages the
    last chunk commits the pixel.
    """
    fs, root = resolve(out, fs)
    if fs.exists(marker_path(root, order, pixel)):
        return True
    if staged_rows(root, order, pixel, fs) < int(expected_rows):
        return False
    commit_pixel(root, order, pixel, expected_rows, fs)
    return True


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
            found.setdefault(int(m[1]), {})[int(m[2])] = _read_json(fs, path)
    return found


def finished_pixels(
    out: str, order: int, fs: fsspec.AbstractFileSystem | None = None
) -> np.ndarray:
    """Sorted pixels at ``order`` whose commit marker exists (the resume set)."""
    fs, root = resolve(out, fs)
    return np.array(
        sorted(commit_markers(root, fs).get(sky.check_order(order), {})), dtype=np.int64
    )


def _file_metadata(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, str]:
    """Schema metadata of every file: the format keys plus the run's provenance."""
    meta = {k.decode(): v.decode() for k, v in (OUTPUT_SCHEMA.metadata or {}).items()}
    if fs.exists(f"{root}/_run.json"):
        run = _read_json(fs, f"{root}/_run.json")
        meta["iic_survey.run_args"] = json.dumps(run.get("args"), sort_keys=True)
        meta["iic_survey.code_version"] = str(run.get("code_version", __version__))
    return meta


# ---------------------------------------------------------------- finalize


def _properties_text(props: Mapping[str, Any]) -> str:
    lines = ["#HATS catalog"]
    for key, value in props.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", key):
            raise ValueError(f"property key {key!r} must be [A-Za-z0-9_.-]+")
        text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        lines.append(f"{key}={text}")
    return "\n".join(lines) + "\n"


def finalize(
    out: str,
    fs: fsspec.AbstractFileSystem | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    allow_partial: bool = False,
) -> str:
    """Write the HATS metadata of the committed pixels and remove the staging area.

    Writes ``dataset/_metadata`` and ``dataset/_common_metadata`` (from the committed files'
    footers), ``partition_info.csv`` and, last, ``hats.properties``. ``properties`` adds or
    overrides keys (e.g. ``obs_collection``, ``iic_model_sha256``, ``iic_input_catalog``).

    Raises
    ------
    OutputError
        If a planned pixel is unfinished (unless ``allow_partial``), if a pixel file has no
        commit marker, or if pixels of more than one order were committed.

    Returns
    -------
    str
        The catalog's URL.
    """
    fs, root = resolve(out, fs)
    markers = commit_markers(root, fs)
    if not markers:
        raise OutputError(f"{out} has no committed pixels; nothing to finalize")
    if len(markers) > 1:
        raise OutputError(
            f"{out} has pixels committed at orders {sorted(markers)}; one run writes one order"
        )
    order, done = next(iter(markers.items()))
    plan = read_plan(root, fs)
    if plan is not None:
        missing = sorted(set(plan[1]) - set(done))
        wrong = sorted(p for p in done if plan[1].get(p) != done[p]["rows"])
        if plan[0] != order or wrong or (missing and not allow_partial):
            raise OutputError(
                f"{out}: {len(missing)} planned pixels unfinished (e.g. "
                f"{missing[:5]}), {len(wrong)} not in the plan or with another "
                f"count (plan order {plan[0]}, pixels at order {order}); resume "
                f"the run, or pass allow_partial"
            )
    fs.invalidate_cache()
    files = fs.glob(f"{root}/dataset/Norder=*/Dir=*/Npix=*.parquet")
    orphans = sorted(set(files) - {pixel_file(root, order, p) for p in done})
    if orphans:
        raise OutputError(
            f"{len(orphans)} pixel files have no commit marker (an interrupted "
            f"commit; e.g. {orphans[:3]}): resume the run to commit them"
        )

    collector, rows = [], {}
    for pixel in sorted(done):
        with fs.open(pixel_file(root, order, pixel), "rb") as f:
            md = pq.ParquetFile(f).metadata
        md.set_file_path(sky.hats_path(order, pixel))
        collector.append(md)
        rows[pixel] = md.num_rows
    schema = OUTPUT_SCHEMA.with_metadata(_file_metadata(fs, root))
    for name, with_footers in (("_common_metadata", False), ("_metadata", True)):
        sink = io.BytesIO()
        pq.write_metadata(schema, sink, metadata_collector=collector if with_footers else None)
        _put(fs, f"{root}/dataset/{name}", sink.getvalue())
    csv = "Norder,Npix\n" + "".join(f"{order},{p}\n" for p in sorted(done))
    _put(fs, f"{root}/partition_info.csv", csv.encode())

    run = _read_json(fs, f"{root}/_run.json") if fs.exists(f"{root}/_run.json") else {}
    size_kib = sum(int(m["bytes"]) for m in done.values()) // 1024
    props: dict[str, Any] = {
        "obs_collection": "iic_survey_allwise_classes",
        "dataproduct_type": "object",
        "hats_nrows": sum(rows.values()),
        "hats_col_ra": "ra",
        "hats_col_dec": "dec",
        "hats_col_healpix": "_healpix_29",
        "hats_col_healpix_order": sky.MAX_ORDER,
        "hats_npix_suffix": ".parquet",
        "hats_order": order,
        "hats_max_rows": max(rows.values()),
        "hats_estsize": size_kib,
        "moc_sky_fraction": f"{len(done) / sky.npix(order):.5g}",
        "hats_builder": f"iic_survey v{__version__}",
        "hats_creation_date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%MUTC"),
        "hats_version": "v1.0",
        "obs_title": "AllWISE star/galaxy/quasar classification (IICnet)",
        "iic_code_version": run.get("code_version", __version__),
        "iic_run_args": json.dumps(run.get("args", {}), sort_keys=True),
        "iic_partial": str(bool(plan and set(plan[1]) - set(done))).lower(),
    }
    props.update(properties or {})
    _put(fs, f"{root}/hats.properties", _properties_text(props).encode())
    if fs.exists(f"{root}/_staging"):
        fs.rm(f"{root}/_staging", recursive=True)
    url = fs.unstrip_protocol(root) if not isinstance(fs, LocalFileSystem) else root
    logger.info("finalized %s: %d pixels, %d rows", url, len(done), props["hats_nrows"])
    return str(url)


# ---------------------------------------------------------------- reading (in export.py)


def read(path: str, **kwargs: Any) -> pd.DataFrame:
    """Read rows of a catalog: see :func:`iic_survey.export.read` (kept here for the contract)."""
    from iic_survey import export  # export builds on this module

    return export.read(path, **kwargs)
