"""Finalizing the catalog: the HATS metadata that makes the committed pixels one catalog.

:func:`finalize` checks that the committed pixels are the planned ones (one order, every pixel
file with its marker), then writes ``dataset/_common_metadata`` and ``dataset/_metadata`` (from
the pixel files' footers), ``partition_info.csv`` and, last, ``hats.properties``: a catalog with
that file is complete, which is what readers (``hats``, ``lsdb``, :mod:`iic_survey.output.reader`)
rely on.
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
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from iic_survey.core import sky
from iic_survey.core.atomic import write_atomic
from iic_survey.core.constants import __version__
from iic_survey.output.schema import (
    OUTPUT_SCHEMA,
    pixel_file,
    resolve,
)
from iic_survey.output.writer import (
    OutputError,
    commit_markers,
    file_metadata,
    read_json,
    read_plan,
)

logger = logging.getLogger(__name__)

_Markers = dict[int, dict[str, Any]]
"""Commit markers of one order: {pixel: marker (rows, bytes, sha256, file)}."""


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
    order, done = _committed_order(out, commit_markers(root, fs))
    plan = read_plan(root, fs)
    if plan is not None:
        _check_plan(out, plan, order, done, allow_partial)
    _check_no_orphans(fs, root, order, done)
    rows = _write_dataset_metadata(fs, root, order, done)
    partial = bool(plan and set(plan[1]) - set(done))
    props = _hats_properties(fs, root, order, done, rows, partial)
    props.update(properties or {})
    write_atomic(fs, f"{root}/hats.properties", _properties_text(props).encode())
    if fs.exists(f"{root}/_staging"):
        fs.rm(f"{root}/_staging", recursive=True)
    url = fs.unstrip_protocol(root) if not isinstance(fs, LocalFileSystem) else root
    logger.info("finalized %s: %d pixels, %d rows", url, len(done), props["hats_nrows"])
    return str(url)


def _committed_order(out: str, markers: dict[int, _Markers]) -> tuple[int, _Markers]:
    """The one order pixels were committed at, and its markers."""
    if not markers:
        raise OutputError(f"{out} has no committed pixels; nothing to finalize")
    if len(markers) > 1:
        raise OutputError(
            f"{out} has pixels committed at orders {sorted(markers)}; one run writes one order"
        )
    return next(iter(markers.items()))


def _check_plan(
    out: str, plan: tuple[int, dict[int, int]], order: int, done: _Markers, allow_partial: bool
) -> None:
    """Raise unless the committed pixels are the planned ones with their planned counts."""
    missing = sorted(set(plan[1]) - set(done))
    wrong = sorted(p for p in done if plan[1].get(p) != done[p]["rows"])
    if plan[0] != order or wrong or (missing and not allow_partial):
        raise OutputError(
            f"{out}: {len(missing)} planned pixels unfinished (e.g. "
            f"{missing[:5]}), {len(wrong)} not in the plan or with another "
            f"count (plan order {plan[0]}, pixels at order {order}); resume "
            f"the run, or pass allow_partial"
        )


def _check_no_orphans(fs: fsspec.AbstractFileSystem, root: str, order: int, done: _Markers) -> None:
    """Raise if a pixel file has no commit marker (a commit interrupted between the two)."""
    fs.invalidate_cache()
    files = fs.glob(f"{root}/dataset/Norder=*/Dir=*/Npix=*.parquet")
    orphans = sorted(set(files) - {pixel_file(root, order, p) for p in done})
    if orphans:
        raise OutputError(
            f"{len(orphans)} pixel files have no commit marker (an interrupted "
            f"commit; e.g. {orphans[:3]}): resume the run to commit them"
        )


def _write_dataset_metadata(
    fs: fsspec.AbstractFileSystem, root: str, order: int, done: _Markers
) -> dict[int, int]:
    """Write ``_common_metadata``, ``_metadata`` and ``partition_info.csv``; rows per pixel."""
    collector, rows = [], {}
    for pixel in sorted(done):
        with fs.open(pixel_file(root, order, pixel), "rb") as f:
            md = pq.ParquetFile(f).metadata
        md.set_file_path(sky.hats_path(order, pixel))
        collector.append(md)
        rows[pixel] = md.num_rows
    schema = OUTPUT_SCHEMA.with_metadata(file_metadata(fs, root))
    for name, with_footers in (("_common_metadata", False), ("_metadata", True)):
        sink = io.BytesIO()
        pq.write_metadata(schema, sink, metadata_collector=collector if with_footers else None)
        write_atomic(fs, f"{root}/dataset/{name}", sink.getvalue())
    csv = "Norder,Npix\n" + "".join(f"{order},{p}\n" for p in sorted(done))
    write_atomic(fs, f"{root}/partition_info.csv", csv.encode())
    return rows


def _hats_properties(
    fs: fsspec.AbstractFileSystem,
    root: str,
    order: int,
    done: _Markers,
    rows: dict[int, int],
    partial: bool,
) -> dict[str, Any]:
    """The catalog's ``hats.properties`` keys: HATS's own, then the run's provenance."""
    run = read_json(fs, f"{root}/_run.json") if fs.exists(f"{root}/_run.json") else {}
    size_kib = sum(int(m["bytes"]) for m in done.values()) // 1024
    return {
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
        "iic_partial": str(partial).lower(),
    }
