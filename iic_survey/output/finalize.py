"""Finalizing the catalog: the HATS metadata that makes the committed pixels one catalog.

:func:`finalize` checks that the committed work pixels are the planned ones (one order, every
partition file listed by a marker), merges the strays into the pixels their positions say
(:mod:`iic_survey.output.strays`), then writes the main catalog's ``dataset/_common_metadata``,
``dataset/_metadata``, ``data_thumbnail.parquet``, ``partition_info.csv``, ``point_map.fits``
and ``skymap.fits`` and, last, its ``hats.properties`` (all with the ``hats`` library,
:mod:`iic_survey.output.hatsfiles`); then ``collection.properties`` with whichever margin is
complete (:mod:`iic_survey.output.margin`). A catalog with its ``hats.properties`` is complete,
which is what readers (``hats``, ``lsdb``, :mod:`iic_survey.output.reader`) rely on. Every file
is a function of the committed rows and ``_run.json`` (its creation time is the run's), so a
finalize redone after a crash writes the same bytes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from hats import __version__ as hats_version
from hats.catalog import TableProperties

from iic_survey.core import healpix
from iic_survey.core.constants import __version__
from iic_survey.output import duplicates, hatsfiles, strays
from iic_survey.output.commit import SKYMAP_ORDER
from iic_survey.output.schema import MAIN, OUTPUT_SCHEMA, catalog_dir, pixel_file, resolve
from iic_survey.output.staging import OutputError, commit_markers, read_json, read_plan

logger = logging.getLogger(__name__)

_Markers = dict[int, dict[str, Any]]
"""Commit markers of one order: {work pixel: marker (rows, partitions, strays, histogram)}."""

DEFAULT_COLUMNS = ("ra", "dec", "cntr", "designation", "class", "confidence", "p_galaxy",
                   "p_quasar", "p_star", "is_outlier", "quality_flags")  # fmt: skip
"""``hats_cols_default``: the columns LSDB loads when a user names none."""

PROVENANCE = {
    "obs_title": "AllWISE star/galaxy/quasar classification (IICnet)",
    "bib_reference": "Zhao et al. 2023, RAA 23, 085010: IICnet (arXiv:2305.10217)",
    "bib_reference_url": "https://arxiv.org/abs/2305.10217",
    "prov_progenitor": "AllWISE Source Catalog (IRSA allwise_p3as_psd) and AllWISE Atlas images",
    "creator_did": f"ivo://iic_survey/{MAIN}",
    "hats_cols_sort": "_healpix_29",
    "hats_version": "v1.0",
}
"""Provenance keys of ``hats.properties`` (the IVOA HATS note's recommended ones)."""


def finalize(
    out: str,
    fs: fsspec.AbstractFileSystem | None = None,
    properties: Mapping[str, Any] | None = None,
    *,
    allow_partial: bool = False,
) -> str:
    """Write the main catalog's HATS metadata and ``collection.properties``; return its URL.

    ``properties`` adds or overrides keys of ``hats.properties`` (e.g. ``iic_model``,
    ``iic_input_catalog``). The margin is built separately
    (:func:`iic_survey.output.margin.build_margin`); ``collection.properties`` names it once
    it is complete.

    Raises
    ------
    OutputError
        If a planned pixel is unfinished (unless ``allow_partial``), if a partition file has no
        commit marker, or if work pixels of more than one order were committed.
    """
    fs, root = resolve(out, fs)
    order, done = _committed_order(out, commit_markers(root, fs))
    plan = read_plan(root, fs)
    if plan is not None:
        _check_plan(out, plan, order, done, allow_partial)
    strays.merge_strays(fs, root, order, done, set(plan[1]) if plan else set(done))
    entries = [e for m in done.values() for e in m["partitions"]]
    _check_no_orphans(fs, root, entries)
    duplicates.check_unique_cntr(
        fs, [pixel_file(root, e["order"], e["pixel"]) for e in entries], _rows(done)
    )
    catalog = catalog_dir(root)
    rows = hatsfiles.write_dataset_metadata(fs, catalog)
    hatsfiles.write_partition_info(fs, catalog, [(e["order"], e["pixel"]) for e in entries])
    counts = hatsfiles.coverage_map([m.get("histogram", []) for m in done.values()], SKYMAP_ORDER)
    hatsfiles.write_coverage(fs, catalog, counts)
    partial = bool(plan and set(plan[1]) - set(done))
    props = main_properties(fs, root, entries, counts, partial)
    props = props.copy_and_update(**dict(properties or {}))
    if props.total_rows != rows:
        raise OutputError(f"{out}: the markers count {props.total_rows} rows, the files {rows}")
    hatsfiles.write_properties(fs, catalog, props)
    if fs.exists(f"{root}/_staging"):
        fs.rm(f"{root}/_staging", recursive=True)
    write_collection(fs, root)
    logger.info("finalized %s: %d partitions, %d rows", out, len(entries), rows)
    return _url(fs, root)


def _rows(done: _Markers) -> int:
    return sum(int(m["rows"]) for m in done.values())


def _url(fs: fsspec.AbstractFileSystem, root: str) -> str:
    return root if isinstance(fs, LocalFileSystem) else str(fs.unstrip_protocol(root))


def write_collection(fs: fsspec.AbstractFileSystem, root: str) -> None:
    """``collection.properties``: the main catalog, every complete margin and every complete
    index catalog (``<MAIN>_<column>_index``, :mod:`iic_survey.output.index`; last step)."""
    fs.invalidate_cache()
    margins = sorted(
        p.rstrip("/").rsplit("/", 1)[-1]
        for p in fs.glob(f"{root}/{MAIN}_*arcs")
        if fs.exists(f"{p}/hats.properties")
    )
    indexes = {
        name[len(MAIN) + 1 : -len("_index")]: name
        for name in sorted(
            p.rstrip("/").rsplit("/", 1)[-1] for p in fs.glob(f"{root}/{MAIN}_*_index")
        )
        if fs.exists(f"{root}/{name}/hats.properties")
    }
    hatsfiles.write_collection(fs, root, f"{MAIN}_collection", MAIN, margins, indexes)


def _committed_order(out: str, markers: dict[int, _Markers]) -> tuple[int, _Markers]:
    """The one order work pixels were committed at, and their markers."""
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
    """Raise unless the committed pixels are the planned ones with their planned counts.

    A pixel made only of strays (0 staged rows, outside the plan) is allowed.
    """
    missing = sorted(set(plan[1]) - set(done))
    wrong = sorted(p for p in done if plan[1].get(p, 0) != done[p]["rows"])
    if plan[0] != order or wrong or (missing and not allow_partial):
        raise OutputError(
            f"{out}: {len(missing)} planned pixels unfinished (e.g. "
            f"{missing[:5]}), {len(wrong)} not in the plan or with another "
            f"count (plan order {plan[0]}, pixels at order {order}); resume "
            f"the run, or pass allow_partial"
        )


def _check_no_orphans(fs: fsspec.AbstractFileSystem, root: str, entries: list[dict]) -> None:
    """Raise if a partition file has no commit marker (a commit interrupted before it)."""
    fs.invalidate_cache()
    files = {
        fs._strip_protocol(f)
        for f in fs.glob(f"{catalog_dir(root)}/dataset/Norder=*/Dir=*/Npix=*.parquet")
    }
    orphans = sorted(
        files - {fs._strip_protocol(pixel_file(root, e["order"], e["pixel"])) for e in entries}
    )
    if orphans:
        raise OutputError(
            f"{len(orphans)} pixel files have no commit marker (an interrupted "
            f"commit; e.g. {orphans[:3]}): resume the run to commit them"
        )


def main_properties(
    fs: fsspec.AbstractFileSystem,
    root: str,
    entries: list[dict],
    counts: Any,
    partial: bool,
) -> TableProperties:
    """The main catalog's ``hats.properties``: HATS's keys, provenance, the run's record."""
    run = read_json(fs, f"{root}/_run.json") if fs.exists(f"{root}/_run.json") else {}
    # model_validate, not keyword arguments: hats' model takes extra keys (ours, PROVENANCE)
    # that its signature does not name.
    return TableProperties.model_validate(
        {
            "obs_collection": MAIN,
            "dataproduct_type": "object",
            "hats_nrows": sum(int(e["rows"]) for e in entries),
            "hats_col_ra": "ra",
            "hats_col_dec": "dec",
            "hats_col_healpix": "_healpix_29",
            "hats_col_healpix_order": healpix.MAX_ORDER,
            "hats_cols_default": [c for c in DEFAULT_COLUMNS if c in OUTPUT_SCHEMA.names],
            "hats_npix_suffix": ".parquet",
            "hats_skymap_order": SKYMAP_ORDER,
            "hats_order": max(int(e["order"]) for e in entries),
            "hats_max_rows": max(int(e["rows"]) for e in entries),
            "hats_estsize": sum(int(e["bytes"]) for e in entries) // 1024,
            "moc_sky_fraction": round(float((counts > 0).mean()), 6),
            "hats_builder": f"iic_survey v{__version__}, hats v{hats_version}",
            "hats_creation_date": _creation_date(run),
            **PROVENANCE,
            "iic_code_version": run.get("code_version", __version__),
            "iic_run_args": json.dumps(run.get("args", {}), sort_keys=True),
            "iic_partial": str(partial).lower(),
        }
    )


def _creation_date(run: Mapping[str, Any]) -> str:
    """The run's start (``_run.json``) in HATS's format: the same on every finalize."""
    created = str(run.get("created") or "1970-01-01T00:00:00+00:00")
    return created[:16] + "UTC"
