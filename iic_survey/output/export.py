"""A catalog selection as FITS or VOTable, with the catalog's units, descriptions and UCDs.

:func:`export` writes a DataFrame, or the rows of a :func:`~iic_survey.output.reader.read`
query, to ``.fits`` or ``.vot`` / ``.xml`` (the format follows the suffix), refusing selections
larger than ``max_rows``; :func:`to_astropy` is the conversion to an astropy Table (nulls
masked). Both formats carry what VO tools (TOPCAT, Aladin, STILTS) look for: a UCD per column
(:data:`~iic_survey.output.schema.UCDS`; VOTable ``ucd`` attributes, FITS ``TUCDn``) and the
coordinate system (a VOTable ``COOSYS`` that ``ra`` and ``dec`` reference; FITS ``RADESYS``
and ``EQUINOX``). :func:`cli` is ``python -m iic_survey export``.
"""

from __future__ import annotations

import argparse
import io
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core.atomic import write_atomic
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.core.paths import PathLike, as_path
from iic_survey.output.reader import read
from iic_survey.output.schema import COLUMN_DOCS, COOSYS

logger = logging.getLogger(__name__)
_FORMATS = {
    ".fits": "fits",
    ".fit": "fits",
    ".fits.gz": "fits",
    ".vot": "votable",
    ".xml": "votable",
    ".votable": "votable",
}


def to_astropy(df: pd.DataFrame, meta: dict[str, Any] | None = None) -> Any:
    """An astropy Table of ``df`` with the catalog's units, descriptions and UCDs (nulls masked).

    A column's UCD is in its ``meta["ucd"]``, where astropy's VOTable writer looks for it.
    """
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
            values,
            mask=null,
            unit=doc.get("unit") or None,
            description=doc.get("description"),
            meta={"ucd": doc["ucd"]} if doc.get("ucd") else None,
        )
    return table


def _fits_bytes(table: Any) -> bytes:
    """FITS of ``table`` with ``TCOMMn`` (descriptions) and ``TUCDn`` (UCDs) per column."""
    from astropy.io import fits

    sink = io.BytesIO()
    table.write(sink, format="fits")  # astropy keeps descriptions in its header block
    with fits.open(io.BytesIO(sink.getvalue())) as hdul:
        header = hdul[1].header
        for i, name in enumerate(table.colnames, start=1):
            after = f"TTYPE{i}"
            if table[name].description:  # TCOMMn: what TOPCAT and other readers show
                header.insert(after, (f"TCOMM{i}", table[name].description), after=True)
                after = f"TCOMM{i}"
            ucd = (table[name].meta or {}).get("ucd")
            if ucd:  # TUCDn: the FITS convention TOPCAT and STILTS read UCDs from
                header.insert(after, (f"TUCD{i}", ucd), after=True)
        if {"ra", "dec"} <= set(table.colnames):
            header["RADESYS"] = (COOSYS["system"], "frame of ra and dec")
            header["EQUINOX"] = (2000.0, "equinox of ra and dec")
        sink = io.BytesIO()
        hdul.writeto(sink)
    return sink.getvalue()


def _votable_bytes(table: Any) -> bytes:
    """VOTable of ``table``: UCDs, and a ``COOSYS`` (ICRS, J2000) that ``ra``/``dec`` reference."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import CooSys

    vot = from_table(table)
    fields = {f.name: f for f in vot.get_first_table().fields}
    if {"ra", "dec"} <= set(fields):
        vot.resources[0].coordinate_systems.append(CooSys(**COOSYS))
        for name in ("ra", "dec"):
            fields[name].ref = COOSYS["ID"]
    sink = io.BytesIO()
    vot.to_xml(sink)
    return sink.getvalue()


def export(
    source: pd.DataFrame | PathLike,
    dest: PathLike,
    *,
    overwrite: bool = False,
    max_rows: int = 5_000_000,
    **query: Any,
) -> str:
    """Write a selection to FITS (``.fits``) or VOTable (``.vot``/``.xml``), units kept.

    ``source`` is a DataFrame from :func:`~iic_survey.output.reader.read` or a catalog path; with
    a path, ``query`` goes to :func:`~iic_survey.output.reader.read` (``columns`` and the fields
    of :class:`~iic_survey.output.reader.Query`: ``classes``, ``min_confidence``, ``cone``,
    ``pixels``). Column
    descriptions go to the VOTable DESCRIPTION elements and to FITS ``TCOMMn`` keywords (and the
    astropy column header, which ``Table.read`` restores), UCDs to VOTable ``ucd`` attributes
    and FITS ``TUCDn``. ``source`` and ``dest`` may be fsspec URLs or UPaths (with storage
    options); ``dest`` is written atomically (:func:`iic_survey.core.atomic.write_atomic`).
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
        df = read(source, **query)
        meta["CATALOG"] = str(source)[-60:]
    if len(df) > max_rows:
        raise ValueError(
            f"{len(df)} rows selected, more than max_rows={max_rows}: narrow the "
            f"query (cone, classes, pixels) or raise max_rows"
        )
    out = as_path(dest)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass overwrite=True")
    table = to_astropy(df, meta)
    data = _fits_bytes(table) if _FORMATS[suffix] == "fits" else _votable_bytes(table)
    write_atomic(out, data)
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
