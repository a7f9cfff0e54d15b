"""Getting rows out of a classification catalog: queries, pixel by pixel reads, a summary.

A query (:class:`Query`) is two steps, like LSDB's searches: a coarse step picks the pixel files
that can hold matching rows (from ``partition_info.csv`` and the HEALPix maths in
:mod:`iic_survey.core.healpix`; for a cone, also the coverage map ``point_map.fits``: a partition
without rows near the cone is not opened), and a fine step picks the rows (Parquet filters for
class and confidence, an exact angular distance for cones). Only the files the first step keeps are
opened. Before :func:`iic_survey.output.finalize.finalize`, the committed pixels are those with
a ``_done`` marker; a pixel file without one is ignored. FITS / VOTable export is
:mod:`iic_survey.output.export`; checking a whole catalog is :mod:`iic_survey.output.validate`.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from astropy.coordinates import angular_separation
from hats.io import file_io
from hats.pixel_math.healpix_shim import npix2order

from iic_survey.core import healpix
from iic_survey.core.config import did_you_mean
from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import QualityFlag
from iic_survey.output import hatsfiles, index
from iic_survey.output.schema import MAIN, OUTPUT_SCHEMA, catalog_dir, pixel_file, resolve
from iic_survey.output.staging import commit_markers

logger = logging.getLogger(__name__)
PROB_COLUMNS = tuple(f"p_{c}" for c in CLASSES)


def _check_names(names: Sequence[str], allowed: Sequence[str], what: str) -> None:
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"unknown {what} {name!r}{did_you_mean(name, allowed)}; known: {', '.join(allowed)}"
            )


@dataclasses.dataclass(frozen=True)
class Query:
    """Which rows :func:`read` keeps: those matching every condition given (None: no condition)."""

    classes: Sequence[str] | None = None
    """Keep rows whose ``class`` is one of these (rows without a class are dropped)."""
    min_confidence: float | None = None
    """Keep rows with ``confidence >= min_confidence``."""
    cone: tuple[float, float, float] | None = None
    """``(ra, dec, radius)`` in degrees: keep rows within the radius (exact distance)."""
    pixels: tuple[int, Sequence[int]] | None = None
    """``(order, [pixel, ...])`` NESTED HEALPix pixels at any order: keep rows inside them."""
    ids: Sequence[int | str] | None = None
    """AllWISE ids: keep the rows with these ``cntr`` (integers) or ``designation`` (strings,
    ``"J..."``) values. The catalog's index catalogs (:mod:`iic_survey.output.index`) say which
    partitions to open; without them every partition is read."""

    def __post_init__(self) -> None:
        if self.classes is not None:
            _check_names(list(self.classes), CLASSES, "class")
        if self.ids is not None:
            if isinstance(self.ids, (str, bytes, int)):
                raise TypeError(f"ids must be a list of ids, got {self.ids!r}")
            bad = [v for v in self.ids if not isinstance(v, (int, np.integer, str))]
            if bad:
                raise TypeError(f"ids are cntr integers or designation strings, got {bad[:3]}")

    def id_values(self) -> dict[str, list[Any]]:
        """The ids by the column they are looked up in: ``{"cntr": [..], "designation": [..]}``."""
        ids = list(self.ids or [])
        by: dict[str, list[Any]] = {"cntr": [int(v) for v in ids if not isinstance(v, str)],
              "designation": [v for v in ids if isinstance(v, str)]}  # fmt: skip
        return {k: v for k, v in by.items() if v}

    def filters(self) -> list[tuple[str, str, Any]]:
        """The Parquet filters of the class and confidence conditions."""
        filters: list[tuple[str, str, Any]] = []
        if self.classes is not None:
            filters.append(("class", "in", list(self.classes)))
        if self.min_confidence is not None:
            filters.append(("confidence", ">=", float(self.min_confidence)))
        return filters

    def row_mask(self, table: pa.Table) -> np.ndarray:
        """The fine step for cones, pixels and ids: which rows of ``table`` match all three."""
        mask = np.ones(table.num_rows, dtype=bool)
        if self.cone is not None:
            ra0, dec0 = np.radians(float(self.cone[0])), np.radians(float(self.cone[1]))
            ra = np.radians(table.column("ra").to_numpy(zero_copy_only=False).astype(np.float64))
            dec = np.radians(table.column("dec").to_numpy(zero_copy_only=False).astype(np.float64))
            with np.errstate(invalid="ignore"):  # rows without a position are never inside
                sep = np.degrees(angular_separation(ra0, dec0, ra, dec))
                mask &= sep <= float(self.cone[2])
        if self.pixels is not None:
            q = healpix.check_order(self.pixels[0])
            h29 = table.column("_healpix_29").to_numpy()
            mask &= np.isin(
                h29 >> (2 * (healpix.MAX_ORDER - q)), np.asarray(self.pixels[1], np.int64)
            )
        if self.ids is not None:
            hit = np.zeros(table.num_rows, dtype=bool)
            for column, values in self.id_values().items():
                hit |= np.asarray(pc.is_in(table.column(column), pa.array(values)).fill_null(False))
            mask &= hit
        return mask


def partitions(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None
) -> list[tuple[int, int]]:
    """(order, pixel) of every committed partition of the main catalog, sorted.

    A finalized catalog lists them in ``partition_info.csv``; an unfinished one in its commit
    markers (each work pixel's partitions: itself, or its children when it was split).
    """
    fs, root = resolve(path, filesystem)
    info = f"{catalog_dir(root)}/partition_info.csv"
    if fs.exists(f"{catalog_dir(root)}/hats.properties") and fs.exists(info):
        with fs.open(info, "rb") as f:
            df = pd.read_csv(f)
        return sorted(zip(df["Norder"].astype(int), df["Npix"].astype(int), strict=True))
    found = commit_markers(root, fs)
    if not found and not fs.exists(f"{root}/_run.json"):
        raise FileNotFoundError(
            f"{path} is not an iic_survey catalog (no {MAIN}/hats.properties, "
            f"partition_info.csv, _done markers or _run.json)"
        )
    return sorted(
        (int(e["order"]), int(e["pixel"]))
        for pix in found.values()
        for marker in pix.values()
        for e in marker["partitions"]
    )


def _select(
    parts: list[tuple[int, int]],
    cone: tuple[float, float, float] | None,
    pixels: tuple[int, Sequence[int]] | None,
) -> list[tuple[int, int]]:
    """The coarse step: partitions that can hold rows in the cone and the pixel set."""
    keep = parts
    if cone is not None:
        ra, dec, r = (float(v) for v in cone)
        near = {k: set(healpix.cone_pixels(ra, dec, r, k).tolist()) for k in {k for k, _ in keep}}
        keep = [(k, p) for k, p in keep if p in near[k]]
    if pixels is not None:
        q, qpix = (
            healpix.check_order(pixels[0]),
            healpix.check_pixels(np.asarray(pixels[1]), pixels[0]),
        )
        wanted = set(qpix.tolist())
        out = []
        for k, p in keep:
            if q <= k:
                hit = int(healpix.parent(p, k, q)[0]) in wanted
            else:
                hit = bool(np.any(healpix.parent(qpix, q, k) == p))
            if hit:
                out.append((k, p))
        keep = out
    return keep


def _covered(
    fs: fsspec.AbstractFileSystem,
    root: str,
    parts: list[tuple[int, int]],
    cone: tuple[float, float, float],
) -> list[tuple[int, int]]:
    """The partitions whose rows (``point_map.fits``: rows per order-9 pixel) reach the cone.

    A partition can overlap a cone and still hold no row near it (a coast, a survey edge, a
    split pixel's empty corner): the coverage map says so without opening the file. Without a
    coverage map (an unfinished catalog) every partition is kept.
    """
    point_map = f"{catalog_dir(root)}/point_map.fits"
    if not parts or not fs.exists(point_map):
        return parts
    counts = file_io.read_fits_image(hatsfiles.upath(fs, point_map))
    order = int(npix2order(len(counts)))
    ra, dec, radius = (float(v) for v in cone)
    hit = np.intersect1d(healpix.cone_pixels(ra, dec, radius, order), np.flatnonzero(counts))
    near = {k: set((hit >> (2 * (order - k))).tolist()) for k in {k for k, _ in parts}}
    return [(k, p) for k, p in parts if k > order or p in near[k]]


def _indexed(
    fs: fsspec.AbstractFileSystem, root: str, parts: list[tuple[int, int]], query: Query
) -> list[tuple[int, int]]:
    """The partitions that hold the query's ids, from the index catalogs (all without one)."""
    keep: set[tuple[int, int]] = set()
    for column, values in query.id_values().items():
        found = index.locate(fs, root, column, values)
        if found is None:
            logger.warning("%s has no %s index: reading every partition", root, column)
            return parts
        keep |= set(found.values())
        missing = [v for v in values if v not in found]
        if missing:
            logger.info("no source with %s %s in %s", column, missing[:10], root)
    return [p for p in parts if p in keep]


def read(
    path: str,
    columns: Sequence[str] | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
    **conditions: Any,
) -> pd.DataFrame:
    """Rows of a catalog matching every given condition, opening only the files that can match.

    Parameters
    ----------
    path
        Catalog root (local path or fsspec URL such as ``s3://bucket/catalog``).
    columns
        Columns to return (default: all, in schema order).
    filesystem
        An fsspec filesystem for ``path`` (default: inferred from the URL).
    **conditions
        The fields of :class:`Query`: ``classes``, ``min_confidence``, ``cone`` (``(ra, dec,
        radius)`` in degrees), ``pixels`` (``(order, [pixel, ...])``) and ``ids`` (``cntr``
        integers and / or ``designation`` strings: found through the index catalogs, reading
        one index row group and the partitions that hold them).

    Returns
    -------
    pandas.DataFrame
        Rows ordered by partition then ``_healpix_29``; ``class`` is a categorical with the
        categories in ``CLASSES`` order.
    """
    fs, root = resolve(path, filesystem)
    names = list(OUTPUT_SCHEMA.names)
    wanted = names if columns is None else list(columns)
    _check_names(wanted, names, "column")
    query = Query(**conditions)
    need = set(wanted) | ({"ra", "dec"} if query.cone else set())
    need |= {"_healpix_29"} if query.pixels else set()
    need |= set(query.id_values())
    read_cols = [c for c in names if c in need]
    tables = []
    parts = _select(partitions(root, fs), query.cone, query.pixels)
    if query.cone is not None:
        parts = _covered(fs, root, parts, query.cone)
    if query.ids is not None:
        parts = _indexed(fs, root, parts, query)
    for order, pixel in parts:
        with fs.open(pixel_file(root, order, pixel), "rb") as f:
            table = pq.read_table(f, columns=read_cols, filters=query.filters() or None)
        tables.append(table.filter(pa.array(query.row_mask(table))).select(wanted))
    if not tables:
        tables = [OUTPUT_SCHEMA.empty_table().select(wanted)]
    table = pa.concat_tables([t.cast(tables[0].schema) for t in tables])
    return _to_pandas(table)


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    if "class" in table.column_names:
        i = table.column_names.index("class")
        table = table.set_column(i, "class", table.column("class").cast(pa.string()))
    df = table.to_pandas()
    if "class" in df.columns:
        df["class"] = pd.Categorical(df["class"], categories=list(CLASSES))
    return df


def iter_pixels(
    path: str,
    columns: Sequence[str] | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> Iterator[tuple[int, int, pd.DataFrame]]:
    """(order, pixel, rows) for each committed partition in turn: flat memory at any sky size."""
    fs, root = resolve(path, filesystem)
    cols = list(OUTPUT_SCHEMA.names if columns is None else columns)
    _check_names(cols, OUTPUT_SCHEMA.names, "column")
    for order, pixel in partitions(root, fs):
        with fs.open(pixel_file(root, order, pixel), "rb") as f:
            yield order, pixel, _to_pandas(pq.read_table(f, columns=cols))


def read_properties(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None
) -> dict[str, str]:
    """The key/value pairs of the main catalog's ``hats.properties`` (empty if not finalized)."""
    fs, root = resolve(path, filesystem)
    file = f"{catalog_dir(root)}/hats.properties"
    if not fs.exists(file):
        return {}
    props = {}
    with fs.open(file, "rb") as f:
        for line in f.read().decode().splitlines():
            if line.strip() and not line.lstrip().startswith(("#", "!")):
                key, _, value = line.partition("=")
                value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), value)
                props[key.strip()] = value
    return props


def summary_text(path: str, filesystem: fsspec.AbstractFileSystem | None = None) -> str:
    """A few lines on a catalog: rows per class, outliers and quality flags."""
    counts = dict.fromkeys((*CLASSES, "unclassified"), 0)
    flags = dict.fromkeys((f.name for f in QualityFlag), 0)
    rows = outliers = npart = 0
    orders = set()
    for order, _, df in iter_pixels(path, ["class", "is_outlier", "quality_flags"], filesystem):
        npart += 1
        orders.add(order)
        rows += len(df)
        outliers += int(df["is_outlier"].sum())
        vc = df["class"].value_counts()
        for c in CLASSES:
            counts[c] += int(vc.get(c, 0))
        counts["unclassified"] += int(df["class"].isna().sum())
        q = df["quality_flags"].to_numpy()
        for f in QualityFlag:
            flags[str(f.name)] += int(np.count_nonzero(q & int(f)))
    pct = (lambda n: f"{100 * n / rows:.2f} %") if rows else (lambda n: "-")
    lines = [f"catalog: {path}", f"rows: {rows} in {npart} pixels (order {sorted(orders)})"]
    lines += [f"  {c:<13} {n:>12}  {pct(n)}" for c, n in counts.items()]
    lines.append(f"outliers: {outliers} ({pct(outliers)})")
    lines.append("quality flags (rows with the bit set):")
    lines += [f"  {name:<18} {n:>12}  {pct(n)}" for name, n in flags.items() if n]
    return "\n".join(lines)
