"""The margin catalog: each partition's neighbouring rows within a few arcseconds of its edge.

LSDB crossmatches partition by partition; a source near an edge finds its partner in the
neighbouring partition only through the right catalog's margin. :func:`build_margin` writes,
for every partition P of the main catalog, the rows of *other* partitions that lie within
``arcsec`` of P (``<root>/iic_allwise_<arcsec>arcs/dataset/Norder=K/Dir=D/Npix=P.parquet``, the
main schema, sorted by ``_healpix_29``), and :func:`finalize_margin` its HATS metadata and
``hats.properties`` (``dataproduct_type=margin``, ``hats_primary_table_url``,
``hats_margin_threshold``), then ``collection.properties`` naming it.

It scales like the main catalog: one task per partition (:func:`margin_pixel`, run by whatever
``map_fn`` the caller gives: Ray tasks in a run) reads only P's neighbours, batch by batch, and
keeps the rows in the edge band: the rows whose order-:func:`margin_order` pixel borders P
(``hats.pixel_math.pixel_margins.get_margin``, the coarse step) and whose angular distance to
P's boundary is at most ``arcsec`` (:func:`distance_to_pixel_deg`, the fine step). No task holds
more than a batch of a neighbour and P's margin rows. It is exactly once and resumable like a
commit: a partition's margin file is written atomically, then its marker
(``_margin/<name>/Norder=K/Npix=P.json``); a rerun skips marked partitions and rewrites the same
bytes for the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import fsspec
import healpy as hp
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hats.catalog import TableProperties
from hats.pixel_math.healpix_shim import order2mindist
from hats.pixel_math.pixel_margins import get_margin

from iic_survey.core import healpix
from iic_survey.core.atomic import write_atomic
from iic_survey.output import hatsfiles
from iic_survey.output.finalize import write_collection
from iic_survey.output.schema import (
    MAIN,
    OUTPUT_SCHEMA,
    catalog_dir,
    margin_name,
    pixel_file,
    resolve,
)
from iic_survey.output.staging import (
    OutputError,
    commit_markers,
    file_metadata,
    fresh,
    parquet_bytes,
    read_json,
)

logger = logging.getLogger(__name__)

DEFAULT_MARGIN_ARCSEC = 10.0
"""Default ``--margin-arcsec``: beyond AllWISE's ~6″ PSF and the 2-3″ crossmatch radii in use."""

_Pixel = tuple[int, int]


def margin_order(arcsec: float) -> int:
    """The deepest order whose pixels are at least twice ``arcsec`` across (the coarse step)."""
    if not 0 < float(arcsec) <= 3600:
        raise ValueError(f"margin must be in (0, 3600] arcseconds, got {arcsec}")
    k = 0
    while k < healpix.MAX_ORDER and order2mindist(k + 1) * 60 >= 2 * float(arcsec):
        k += 1
    return k


def neighbours(pixel: _Pixel, parts: Iterable[_Pixel], arcsec: float) -> list[_Pixel]:
    """Partitions of ``parts`` (any orders) that can hold rows within ``arcsec`` of ``pixel``."""
    order, pix = pixel
    morder = max(margin_order(arcsec), order)
    band = np.asarray(get_margin(order, pix, morder - order), dtype=np.int64)
    by_order: dict[int, set[int]] = {}
    for k, p in parts:
        by_order.setdefault(int(k), set()).add(int(p))
    found = []
    for k, pixels in sorted(by_order.items()):
        if k > morder:  # a partition deeper than the band's pixels: compare at its own order
            cand = set(np.concatenate([healpix.children(int(m), morder, k) for m in band]).tolist())
        else:
            cand = set((band >> (2 * (morder - k))).tolist())
        found += [(k, p) for p in sorted(pixels & cand) if (k, p) != (order, pix)]
    return found


def distance_to_pixel_deg(ra: np.ndarray, dec: np.ndarray, order: int, pixel: int) -> np.ndarray:
    """Angular distance (deg) from each position outside a pixel to the pixel's boundary.

    The boundary is sampled every <= 0.05 deg (``healpy.boundaries``) and each piece treated as
    a great-circle arc (the error is below 0.02″ at every order); positions inside the pixel get
    their distance to the boundary too, so callers drop them first.
    """
    side = np.degrees(np.sqrt(4 * np.pi / healpix.npix(order)))
    step = max(2, int(np.ceil(side / 0.05)))
    a = hp.boundaries(healpix.nside(order), int(pixel), step=step, nest=True).T  # (S, 3)
    b = np.roll(a, -1, axis=0)
    n = np.cross(a, b)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    x = hp.ang2vec(np.asarray(ra, np.float64), np.asarray(dec, np.float64), lonlat=True)
    x = np.atleast_2d(x)  # (N, 3)
    out = np.empty(len(x))
    for lo in range(0, len(x), 4096):
        xi = x[lo : lo + 4096]
        s = xi @ n.T  # (N, S)
        proj = xi[:, None, :] - s[..., None] * n[None]
        inside = (np.einsum("nsk,sk->ns", np.cross(a[None], proj), n) >= 0) & (
            np.einsum("nsk,sk->ns", np.cross(proj, b[None]), n) >= 0
        )
        ends = np.minimum(np.arccos(np.clip(xi @ a.T, -1, 1)), np.arccos(np.clip(xi @ b.T, -1, 1)))
        d = np.where(inside, np.arcsin(np.minimum(np.abs(s), 1.0)), ends)
        out[lo : lo + 4096] = np.degrees(d.min(axis=1))
    return out


def margin_rows(
    fs: fsspec.AbstractFileSystem, root: str, pixel: _Pixel, near: Sequence[_Pixel], arcsec: float
) -> pa.Table:
    """The rows of the partitions ``near`` within ``arcsec`` of ``pixel``, sorted."""
    order, pix = pixel
    morder = max(margin_order(arcsec), order)
    band = np.asarray(get_margin(order, pix, morder - order), dtype=np.int64)
    shift = 2 * (healpix.MAX_ORDER - morder)
    kept = []
    for k, p in near:
        with fs.open(pixel_file(root, k, p), "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=65_536):
                t = pa.Table.from_batches([batch])
                ra = t.column("ra").to_numpy(zero_copy_only=False).astype(np.float64)
                dec = t.column("dec").to_numpy(zero_copy_only=False).astype(np.float64)
                coarse = np.isin(t.column("_healpix_29").to_numpy() >> shift, band)
                coarse &= healpix.valid_coordinates(ra, dec)
                idx = np.flatnonzero(coarse)
                if idx.size:
                    d = distance_to_pixel_deg(ra[idx], dec[idx], order, pix)
                    keep = idx[d <= (float(arcsec) + 0.02) / 3600]
                    kept.append(t.take(pa.array(keep)).cast(OUTPUT_SCHEMA))
    table = pa.concat_tables(kept) if kept else OUTPUT_SCHEMA.empty_table()
    return table.sort_by([("_healpix_29", "ascending"), ("cntr", "ascending")])


def _marker_path(root: str, name: str, order: int, pixel: int) -> str:
    return f"{root}/_margin/{name}/Norder={order}/Npix={pixel}.json"


def margin_pixel(
    out: str,
    arcsec: float,
    pixel: _Pixel,
    near: Sequence[_Pixel],
    fs: fsspec.AbstractFileSystem | None = None,
) -> dict[str, Any]:
    """Write one partition's margin file (if it has rows), then its marker; return the marker."""
    fs, root = resolve(out, fs)
    name = margin_name(arcsec)
    marker = fresh(fs, _marker_path(root, name, *pixel))
    if fs.exists(marker):
        return dict(read_json(fs, marker))
    table = margin_rows(fs, root, pixel, near, arcsec)
    info: dict[str, Any] = {"order": pixel[0], "pixel": pixel[1], "rows": table.num_rows}
    if table.num_rows:
        data = parquet_bytes(table.replace_schema_metadata(file_metadata(fs, root)))
        write_atomic(fs, pixel_file(root, *pixel, name=name), data)
        info.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                    file=healpix.hats_path(*pixel))  # fmt: skip
    write_atomic(fs, marker, json.dumps(info, sort_keys=True).encode())
    return info


def main_partitions(fs: fsspec.AbstractFileSystem, root: str) -> list[_Pixel]:
    """Every committed partition of the main catalog (from the markers), sorted."""
    return sorted(
        (int(e["order"]), int(e["pixel"]))
        for pix in commit_markers(root, fs).values()
        for m in pix.values()
        for e in m["partitions"]
    )


def build_margin(
    out: str,
    arcsec: float = DEFAULT_MARGIN_ARCSEC,
    fs: fsspec.AbstractFileSystem | None = None,
    map_fn: Callable[[Callable[..., Any], list[tuple[Any, ...]]], Iterable[Any]] | None = None,
) -> int:
    """Build the margin of every main partition (resumable), then its metadata; return its rows.

    ``map_fn(function, argument_tuples)`` runs :func:`margin_pixel` once per partition (default:
    one after another in this process; a run passes Ray tasks). Call it after
    :func:`iic_survey.output.finalize.finalize`, which merges the strays.
    """
    fs, root = resolve(out, fs)
    parts = main_partitions(fs, root)
    if not parts:
        raise OutputError(f"{out} has no committed partitions; nothing to build a margin of")
    todo = [(root, float(arcsec), p, neighbours(p, parts, arcsec), fs) for p in parts]
    run = map_fn or (lambda fn, args: [fn(*a) for a in args])
    markers = list(run(margin_pixel, todo))
    return finalize_margin(root, arcsec, fs, markers)


def finalize_margin(
    out: str, arcsec: float, fs: fsspec.AbstractFileSystem, markers: Sequence[dict[str, Any]]
) -> int:
    """The margin's ``_metadata``, ``partition_info.csv``, ``hats.properties``; the collection."""
    fs, root = resolve(out, fs)
    name = margin_name(arcsec)
    entries = [m for m in markers if m["rows"]]
    if not entries:
        logger.warning("the margin of %s arcsec holds no rows: none written", arcsec)
        return 0
    catalog = catalog_dir(root, name)
    rows = hatsfiles.write_dataset_metadata(fs, catalog)
    hatsfiles.write_partition_info(fs, catalog, [(e["order"], e["pixel"]) for e in entries])
    keys = hatsfiles.read_properties(fs, catalog_dir(root)).model_dump(
        by_alias=True, exclude_none=True
    )
    for key in ("hats_skymap_order", "moc_sky_fraction"):  # the margin has no coverage maps
        keys.pop(key, None)
    props = TableProperties(
        **{
            **keys,
            "obs_collection": name,
            "dataproduct_type": "margin",
            "hats_primary_table_url": MAIN,
            "hats_margin_threshold": float(arcsec),
            "hats_nrows": rows,
            "hats_max_rows": max(int(e["rows"]) for e in entries),
            "hats_estsize": sum(int(e["bytes"]) for e in entries) // 1024,
        }
    )
    hatsfiles.write_properties(fs, catalog, props)
    write_collection(fs, root)
    logger.info("margin %s: %d rows in %d partitions", name, rows, len(entries))
    return rows
