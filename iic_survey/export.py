"""Getting rows out of a classification catalog: queries, checks, and FITS / VOTable export.

A query is two steps, like LSDB's searches: a coarse step picks the pixel files that can hold
matching rows (from ``partition_info.csv`` and the HEALPix maths in :mod:`iic_survey.sky`), and a
fine step picks the rows (Parquet filters for class and confidence, an exact angular distance
for cones). Only the files the first step keeps are opened. Before :func:`output.finalize`, the
committed pixels are those with a ``_done`` marker; a pixel file without one is ignored.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from iic_survey import CLASSES, __version__, sky
from iic_survey.flags import QualityFlag
from iic_survey.output import COLUMN_DOCS, OUTPUT_SCHEMA, commit_markers, read_plan, resolve

logger = logging.getLogger(__name__)

PROB_COLUMNS = tuple(f"p_{c}" for c in CLASSES)
_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".vot": "votable",
    ".xml": "votable",
    ".votable": "votable",
}


def _check_names(names: Sequence[str], allowed: Sequence[str], what: str) -> None:
    for name in names:
        if name not in allowed:
            close = difflib.get_close_matches(str(name), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {what} {name!r}{hint}; known: {', '.join(allowed)}")


def partitions(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None
) -> list[tuple[int, int]]:
    """(order, pixel) of every committed partition, sorted.

    A finalized catalog lists them in ``partition_info.csv``; an unfinished one in its commit
    markers.
    """
    fs, root = resolve(path, filesystem)
    info = f"{root}/partition_info.csv"
    if fs.exists(f"{root}/hats.properties") and fs.exists(info):
        with fs.open(info, "rb") as f:
            df = pd.read_csv(f)
        return sorted(zip(df["Norder"].astype(int), df["Npix"].astype(int), strict=True))
    found = commit_markers(root, fs)
    if not found and not fs.exists(f"{root}/_run.json"):
        raise FileNotFoundError(
            f"{path} is not an iic_survey catalog (no hats.properties, "
            f"partition_info.csv, _done markers or _run.json)"
        )
    return sorted((k, p) for k, pix in found.items() for p in pix)


def _pixel_file(root: str, order: int, pixel: int) -> str:
    return f"{root}/dataset/{sky.hats_path(order, pixel)}"


def _select(
    parts: list[tuple[int, int]],
    cone: tuple[float, float, float] | None,
    pixels: tuple[int, Sequence[int]] | None,
) -> list[tuple[int, int]]:
    """The coarse step: partitions that can hold rows in the cone and the pixel set."""
    keep = parts
    if cone is not None:
        ra, dec, r = (float(v) for v in cone)
        near = {k: set(sky.cone_pixels(ra, dec, r, k).tolist()) for k in {k for k, _ in keep}}
        keep = [(k, p) for k, p in keep if p in near[k]]
    if pixels is not None:
        q, qpix = sky.check_order(pixels[0]), sky.check_pixels(np.asarray(pixels[1]), pixels[0])
        wanted = set(qpix.tolist())
        out = []
        for k, p in keep:
            if q <= k:
                hit = int(sky.parent(p, k, q)[0]) in wanted
            else:
                hit = bool(np.any(sky.parent(qpix, q, k) == p))
            if hit:
                out.append((k, p))
        keep = out
    return keep


def angular_separation_deg(
    ra1: np.ndarray, dec1: np.ndarray, ra2: float, dec2: float
) -> np.ndarray:
    """Great-circle distance in degrees (Vincenty formula: stable at all separations)."""
    l1, b1, l2, b2 = (np.radians(np.asarray(v, dtype=np.float64)) for v in (ra1, dec1, ra2, dec2))
    dl = l1 - l2
    num = np.hypot(
        np.cos(b1) * np.sin(dl), np.cos(b2) * np.sin(b1) - np.sin(b2) * np.cos(b1) * np.cos(dl)
    )
    den = np.sin(b2) * np.sin(b1) + np.cos(b2) * np.cos(b1) * np.cos(dl)
    return np.asarray(np.degrees(np.arctan2(num, den)))


def read(
    path: str,
    columns: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
    min_confidence: float | None = None,
    cone: tuple[float, float, float] | None = None,
    pixels: tuple[int, Sequence[int]] | None = None,
    filesystem: fsspec.AbstractFileSystem | None = None,
) -> pd.DataFrame:
    """Rows of a catalog matching every given condition, opening only the files that can match.

    Parameters
    ----------
    path
        Catalog root (local path or fsspec URL such as ``s3://bucket/catalog``).
    columns
        Columns to return (default: all, in schema order).
    classes
        Keep rows whose ``class`` is one of these (rows without a class are dropped).
    min_confidence
        Keep rows with ``confidence >= min_confidence``.
    cone
        ``(ra, dec, radius)`` in degrees: keep rows within the radius (exact distance).
    pixels
        ``(order, [pixel, ...])`` NESTED HEALPix pixels at any order: keep rows inside them.
    filesystem
        An fsspec filesystem for ``path`` (default: inferred from the URL).

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
    filters: list[tuple[str, str, Any]] = []
    if classes is not None:
        _check_names(list(classes), CLASSES, "class")
        filters.append(("class", "in", list(classes)))
    if min_confidence is not None:
        filters.append(("confidence", ">=", float(min_confidence)))
    need = set(wanted) | ({"ra", "dec"} if cone else set()) | ({"_healpix_29"} if pixels else set())
    read_cols = [c for c in names if c in need]

    tables = []
    for order, pixel in _select(partitions(root, fs), cone, pixels):
        with fs.open(_pixel_file(root, order, pixel), "rb") as f:
            table = pq.read_table(f, columns=read_cols, filters=filters or None)
        mask = np.ones(table.num_rows, dtype=bool)
        if cone is not None:
            ra = table.column("ra").to_numpy(zero_copy_only=False)
            dec = table.column("dec").to_numpy(zero_copy_only=False)
            with np.errstate(invalid="ignore"):
                mask &= angular_separation_deg(ra, dec, cone[0], cone[1]) <= float(cone[2])
        if pixels is not None:
            q = sky.check_order(pixels[0])
            h29 = table.column("_healpix_29").to_numpy()
            mask &= np.isin(h29 >> (2 * (sky.MAX_ORDER - q)), np.asarray(pixels[1], np.int64))
        tables.append(table.filter(pa.array(mask)).select(wanted))
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
        with fs.open(_pixel_file(root, order, pixel), "rb") as f:
            yield order, pixel, _to_pandas(pq.read_table(f, columns=cols))


def read_properties(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None
) -> dict[str, str]:
    """The key/value pairs of ``hats.properties`` (empty if the catalog is not finalized)."""
    fs, root = resolve(path, filesystem)
    if not fs.exists(f"{root}/hats.properties"):
        return {}
    props = {}
    with fs.open(f"{root}/hats.properties", "rb") as f:
        for line in f.read().decode().splitlines():
            if line.strip() and not line.lstrip().startswith(("#", "!")):
                key, _, value = line.partition("=")
                value = re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m[1], m[1]), value)
                props[key.strip()] = value
    return props


# ---------------------------------------------------------------- checks


def validate_catalog(
    path: str, filesystem: fsspec.AbstractFileSystem | None = None, tol: float = 1e-3
) -> list[str]:
    """Everything wrong with a catalog, as readable sentences (empty when it is sound).

    Checks the pixel sets (plan, markers, partition_info.csv, files), each file against its marker
    (rows, sha256), row order and position inside the pixel, ``cntr`` unique across the catalog,
    the probabilities (all three or none, in [0, 1], summing to 1 within ``tol``), and that
    ``class`` and ``confidence`` agree with them. Reads every file once: at sky scale it needs
    memory for all ``cntr`` values (8 bytes a row).
    """
    fs, root = resolve(path, filesystem)
    problems: list[str] = []
    markers = commit_markers(root, fs)
    done = {(k, p): m for k, pix in markers.items() for p, m in pix.items()}
    on_disk = set()
    for f in fs.glob(f"{root}/dataset/Norder=*/Dir=*/Npix=*.parquet"):
        m = re.search(r"Norder=(\d+)/Dir=\d+/Npix=(\d+)\.parquet$", f)
        if m:
            on_disk.add((int(m[1]), int(m[2])))
    if set(done) != on_disk:
        problems.append(
            f"pixel files without marker: {sorted(on_disk - set(done))[:10]}; "
            f"markers without file: {sorted(set(done) - on_disk)[:10]}"
        )
    props = read_properties(root, fs)
    if not props:
        problems.append("no hats.properties: the catalog was not finalized")
    elif set(partitions(root, fs)) != set(done):
        problems.append("partition_info.csv does not list exactly the committed pixels")
    plan = read_plan(root, fs)
    if plan is not None:
        k, counts = plan
        missing = sorted(p for p in counts if (k, p) not in done)
        if missing:
            problems.append(f"{len(missing)} planned pixels missing: {missing[:10]}")
        for (order, p), marker in sorted(done.items()):
            if order == k and counts.get(p) != marker["rows"]:
                problems.append(f"pixel {p}: {marker['rows']} rows, {counts.get(p)} planned")

    all_cntr, total = [], 0
    for (order, pixel), marker in sorted(done.items()):
        if (order, pixel) not in on_disk:
            continue
        data = fs.cat_file(_pixel_file(root, order, pixel))
        table = pq.read_table(io.BytesIO(data))
        total += table.num_rows
        where = f"pixel {pixel} (order {order})"
        if hashlib.sha256(data).hexdigest() != marker.get("sha256"):
            problems.append(f"{where}: file checksum differs from its marker")
        if table.num_rows != marker.get("rows"):
            problems.append(f"{where}: {table.num_rows} rows, marker says {marker.get('rows')}")
        problems += [f"{where}: {p}" for p in _row_problems(table, order, pixel, tol)]
        all_cntr.append(table.column("cntr").to_numpy())
    cntr = np.concatenate(all_cntr) if all_cntr else np.zeros(0, np.int64)
    uniq, counts_ = np.unique(cntr, return_counts=True)
    if len(uniq) != len(cntr):
        problems.append(
            f"{len(cntr) - len(uniq)} repeated cntr values across pixels "
            f"(e.g. {uniq[counts_ > 1][:5].tolist()})"
        )
    if props and int(props.get("hats_nrows", -1)) != total:
        problems.append(f"hats_nrows={props.get('hats_nrows')} but the files hold {total} rows")
    return problems


def _row_problems(table: pa.Table, order: int, pixel: int, tol: float) -> list[str]:
    out = []
    h29 = table.column("_healpix_29").to_numpy()
    if np.any(np.diff(h29) < 0):
        out.append("rows are not sorted by _healpix_29")
    if np.any(h29 >> (2 * (sky.MAX_ORDER - order)) != pixel):
        out.append("rows with _healpix_29 outside the pixel")
    probs = np.stack(
        [table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in PROB_COLUMNS],
        axis=1,
    )
    null = np.isnan(probs)
    if np.any(null.any(axis=1) != null.all(axis=1)):
        out.append("rows with some but not all probabilities null")
    ok = ~null.any(axis=1)
    p = probs[ok]
    if np.any((p < -tol) | (p > 1 + tol)):
        out.append("probabilities outside [0, 1]")
    if np.any(np.abs(p.sum(axis=1) - 1) > tol):
        out.append(
            f"{int(np.sum(np.abs(p.sum(axis=1) - 1) > tol))} rows whose probabilities "
            f"do not sum to 1"
        )
    cls = table.column("class").cast(pa.string()).to_numpy(zero_copy_only=False)
    if np.any(pd.isna(cls) != ~ok):
        out.append("class is null where probabilities exist, or set where they are null")
    if ok.any():
        best = np.asarray(CLASSES, dtype=object)[np.argmax(p, axis=1)]
        conf = table.column("confidence").to_numpy(zero_copy_only=False)[ok]
        if np.any(best != cls[ok]):
            out.append(
                f"{int(np.sum(best != cls[ok]))} rows whose class is not the most probable one"
            )
        if np.any(np.abs(conf - p.max(axis=1)) > tol):
            out.append("confidence differs from the largest probability")
    return out


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


# ---------------------------------------------------------------- FITS / VOTable


def to_astropy(df: pd.DataFrame, meta: dict[str, Any] | None = None) -> Any:
    """An astropy Table of ``df`` with the catalog's units and descriptions (nulls masked)."""
    from astropy.table import MaskedColumn, Table

    table = Table(meta=dict(meta or {}))
    for name in df.columns:
        s = df[name]
        null = s.isna().to_numpy()
        if not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            values = np.array(
                ["" if n else str(v) for v, n in zip(s, null, strict=True)], dtype=str
            )
        elif pd.api.types.is_bool_dtype(s):
            values = s.fillna(False).to_numpy(dtype=bool)
        elif pd.api.types.is_integer_dtype(s):
            values = s.to_numpy(dtype=np.dtype(s.dtype.name.lower()), na_value=0)
        else:
            values = s.to_numpy(dtype=np.dtype(s.dtype.name.lower()), na_value=np.nan)
        doc = COLUMN_DOCS.get(str(name), {})
        table[str(name)] = MaskedColumn(
            values, mask=null, unit=doc.get("unit") or None, description=doc.get("description")
        )
    return table


def export(
    source: pd.DataFrame | str,
    dest: str,
    *,
    overwrite: bool = False,
    max_rows: int = 5_000_000,
    filesystem: fsspec.AbstractFileSystem | None = None,
    **query: Any,
) -> str:
    """Write a selection to FITS (``.fits``) or VOTable (``.vot``/``.xml``), units kept.

    ``source`` is a DataFrame from :func:`read` or a catalog path; with a path, ``query`` goes to
    :func:`read` (``columns``, ``classes``, ``min_confidence``, ``cone``, ``pixels``). Column
    descriptions go to the VOTable DESCRIPTION elements and to FITS ``TCOMMn`` keywords (and the
    astropy column header, which ``Table.read`` restores). ``dest`` may be an fsspec URL.
    """
    suffix = next(
        (s for s in sorted(_FORMATS, key=len, reverse=True) if str(dest).lower().endswith(s)), None
    )
    if suffix is None:
        raise ValueError(f"cannot tell the format of {dest!r}: use one of {sorted(_FORMATS)}")
    meta: dict[str, Any] = {"ORIGIN": "iic_survey", "IICVERS": __version__}
    if isinstance(source, pd.DataFrame):
        if query:
            raise TypeError(f"query arguments {sorted(query)} need a catalog path, not a frame")
        df = source
    else:
        df = read(source, filesystem=filesystem, **query)
        meta["CATALOG"] = str(source)[-60:]
    if len(df) > max_rows:
        raise ValueError(
            f"{len(df)} rows selected, more than max_rows={max_rows}: narrow the "
            f"query (cone, classes, pixels) or raise max_rows"
        )
    fs, out = resolve(dest)
    if fs.exists(out) and not overwrite:
        raise FileExistsError(f"{dest} exists; pass overwrite=True")
    table = to_astropy(df, meta)
    sink = io.BytesIO()
    if _FORMATS[suffix] == "fits":
        from astropy.io import fits

        table.write(sink, format="fits")  # astropy keeps descriptions in its header block
        with fits.open(io.BytesIO(sink.getvalue())) as hdul:
            header = hdul[1].header
            for i, name in enumerate(table.colnames, start=1):
                if table[name].description:  # TCOMMn: what TOPCAT and other readers show
                    header.insert(f"TTYPE{i}", (f"TCOMM{i}", table[name].description), after=True)
            sink = io.BytesIO()
            hdul.writeto(sink)
    else:
        table.write(sink, format="votable")
    fs.makedirs(fs._parent(out), exist_ok=True)
    fs.pipe_file(out, sink.getvalue())
    logger.info("wrote %d rows to %s", len(df), dest)
    return str(dest)


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m iic_survey export CATALOG DEST [--class quasar] [--cone RA DEC R] ...``."""
    parser = argparse.ArgumentParser(prog="iic_survey export", description=export.__doc__)
    parser.add_argument("catalog", help="catalog path or URL")
    parser.add_argument("dest", help="output .fits, .vot or .xml")
    parser.add_argument("--columns", help="comma-separated columns (default: all)")
    parser.add_argument("--class", dest="classes", action="append", choices=CLASSES)
    parser.add_argument("--min-confidence", type=float)
    parser.add_argument("--cone", nargs=3, type=float, metavar=("RA", "DEC", "RADIUS_DEG"))
    parser.add_argument("--max-rows", type=int, default=5_000_000)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    dest = export(
        args.catalog,
        args.dest,
        overwrite=args.overwrite,
        max_rows=args.max_rows,
        columns=args.columns.split(",") if args.columns else None,
        classes=args.classes,
        min_confidence=args.min_confidence,
        cone=tuple(args.cone) if args.cone else None,
    )
    logger.info("exported to %s", dest)
    return 0
