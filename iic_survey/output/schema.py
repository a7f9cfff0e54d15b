"""The classification catalog's format: its schema, column docs and file layout.

The output is a HATS collection (IVOA HATS note 1.0): the main catalog, a margin catalog and
``collection.properties``, so that ``lsdb.open_catalog(root)`` opens the catalog with its margin,
``hats.read_hats`` reads it, and plain ``pandas.read_parquet(f"{root}/{MAIN}/dataset")`` too::

    collection.properties                     written last: the collection is complete
    iic_allwise/                              the main catalog (:data:`MAIN`)
        hats.properties, properties           written last: the catalog is complete
        partition_info.csv                    Norder,Npix (orders vary: dense pixels are split)
        point_map.fits, skymap.fits           rows per order-9 pixel (coverage, MOC)
        data_thumbnail.parquet                one row per partition
        dataset/_common_metadata, _metadata   schema (+ units, descriptions), footers
        dataset/Norder=K/Dir=D/Npix=N.parquet one file per partition, sorted by _healpix_29
    iic_allwise_10arcs/                       the margin catalog (:func:`margin_name`), same layout
    _run.json                                 the run's arguments (refuses a mismatched resume)
    _plan.json                                planned rows per work pixel (optional)
    _done/Norder=K/Npix=N.json                commit marker of a work pixel: its partitions
    _staging/Norder=K/Npix=N/part-<chunk>.parquet   chunks waiting for their pixel's commit
    _strays/Norder=K/Npix=Q/from-P.parquet    rows staged in pixel P whose position lies in Q
    _margin/<margin>/Norder=K/Npix=N.json     commit marker of a margin partition

The work pixel (order ``K`` of the run) is the unit of staging, commit and resume; a committed
work pixel becomes one partition, or its children down to order 9 when it holds more rows than
the run's ``max_rows_per_partition`` (:mod:`iic_survey.output.partitions`). Every row's
``_healpix_29`` is the index of its own ra/dec, and every row lies in the partition holding that
index: a row staged in a pixel but positioned just across its edge is a *stray*, handed over to
the pixel its position says (:mod:`iic_survey.output.strays`).

Every pixel file has :data:`OUTPUT_SCHEMA`: the AllWISE identity, position and photometry of
each source, the calibrated class probabilities, the most probable class, confidence, entropy,
out-of-distribution score, outlier and quality flags, and the model version. :data:`COLUMNS`
is the single source of names, types, units and descriptions, :data:`UCDS` of their IVOA UCDs
(the README's column table and the exporters use :data:`COLUMN_DOCS`, made from both).
:func:`as_output_table` conforms one pixel's result rows to the schema, computing the HATS
spatial index ``_healpix_29``.

Writing these files is :mod:`iic_survey.output.staging` (set-up, staging),
:mod:`iic_survey.output.commit`, :mod:`iic_survey.output.finalize` and
:mod:`iic_survey.output.margin`; reading them is :mod:`iic_survey.output.reader`.
"""

from __future__ import annotations

import json
import logging
import os

import fsspec
import healpy as hp
import numpy as np
import pandas as pd
import pyarrow as pa

from iic_survey.core import healpix
from iic_survey.core.constants import CLASSES, SUBSETS
from iic_survey.core.flags import QualityFlag

logger = logging.getLogger(__name__)

FORMAT_NAME = "iic_survey.classification_catalog"
FORMAT_VERSION = 2
"""1: the first catalogs; 2: AllWISE quality columns (``w4mpro`` ... ``cc_flags``), ``subset``,
the ARTEFACT quality bit, probabilities calibrated per depth."""

_UNCLASSIFIABLE = "; null when unclassifiable (see quality_flags)"
_FLAG_BITS = ", ".join(f"{int(f)}={f.name}" for f in QualityFlag)

# name: (arrow type, nullable, unit, description). The README's column table is made from this.
COLUMNS: dict[str, tuple[pa.DataType, bool, str, str]] = {
    "_healpix_29": (pa.int64(), False, "", "HEALPix NESTED order-29 index of (ra, dec), the "
                    "HATS spatial index (rows without coordinates: first index of their pixel)"),
    "cntr": (pa.int64(), False, "", "AllWISE unique source identifier (allwise_p3as_psd.cntr)"),
    "designation": (pa.string(), True, "", "AllWISE source designation (Jhhmmss.ss+ddmmss.s)"),
    "ra": (pa.float64(), True, "deg", "Right ascension (ICRS) from AllWISE"),
    "dec": (pa.float64(), True, "deg", "Declination (ICRS) from AllWISE"),
    "w1mpro": (pa.float64(), True, "mag", "AllWISE W1 (3.4 um) profile-fit magnitude (Vega)"),
    "w2mpro": (pa.float64(), True, "mag", "AllWISE W2 (4.6 um) profile-fit magnitude (Vega)"),
    "w3mpro": (pa.float64(), True, "mag", "AllWISE W3 (12 um) profile-fit magnitude (Vega)"),
    "w4mpro": (pa.float64(), True, "mag", "AllWISE W4 (22 um) profile-fit magnitude (Vega); "
               "a 95 % upper limit when w4snr < 2 (not used by the model)"),
    **{f"w{b}sigmpro": (pa.float32(), True, "mag", f"AllWISE W{b} profile-fit magnitude "
                        "uncertainty; null for an upper limit") for b in (1, 2, 3)},
    **{f"w{b}snr": (pa.float32(), True, "", f"AllWISE W{b} profile-fit signal-to-noise ratio")
       for b in (1, 2, 3)},
    "nb": (pa.int32(), True, "", "AllWISE number of blended PSF components fitted together "
           "with this source (1: unblended)"),
    "ext_flg": (pa.int32(), True, "", "AllWISE extended-source flag: 0 point-like; 1-5 "
                "resolved or associated with a 2MASS XSC source (see the AllWISE supplement)"),
    "ph_qual": (pa.string(), True, "", "AllWISE photometric quality per band, W1 W2 W3 W4: A "
                "SNR >= 10, B 3-10, C 2-3, U upper limit, X no measurement, Z saturated"),
    "cc_flags": (pa.string(), True, "", "AllWISE contamination and confusion flags per band, "
                 "W1 W2 W3 W4: 0 clean; upper-case D, H, O, P a likely spurious artefact "
                 "(diffraction spike, halo, ghost, latent; sets the ARTEFACT quality bit for "
                 "W1 or W2); lower case real but contaminated"),
    "p_galaxy": (pa.float32(), True, "", "Calibrated galaxy probability" + _UNCLASSIFIABLE),
    "p_quasar": (pa.float32(), True, "", "Calibrated quasar probability" + _UNCLASSIFIABLE),
    "p_star": (pa.float32(), True, "", "Calibrated star probability" + _UNCLASSIFIABLE),
    "class": (pa.dictionary(pa.int8(), pa.string()), True, "",
              "Most probable class (galaxy, quasar, star)" + _UNCLASSIFIABLE),
    "confidence": (pa.float32(), True, "", "Largest calibrated class probability"),
    "entropy": (pa.float32(), True, "", "Entropy of the class probabilities in nats (0..ln 3)"),
    "ood_score": (pa.float32(), True, "", "Out-of-distribution score of the image embedding "
                  "(larger = less like the training set)"),
    "is_outlier": (pa.bool_(), False, "", "Low confidence or out of distribution"),
    "subset": (pa.dictionary(pa.int8(), pa.string()), False, "", "Trust of the row: safe (clean, "
               "in distribution, W1 and colours inside the training set's range), extrapolation "
               "(W1 or a colour outside that range, e.g. fainter than the labelled set), unsafe "
               "(not clean: see NOT_CLEAN in iic_survey.core.flags; or out of distribution)"),
    "quality_flags": (pa.int32(), False, "", f"Bitmask of QualityFlag bits: {_FLAG_BITS}"),
    "model_version": (pa.string(), False, "", "Model identity (code version and weights hash)"),
}  # fmt: skip

_BANDS = {1: "em.IR.3-4um", 2: "em.IR.4-8um", 3: "em.IR.8-15um", 4: "em.IR.15-30um"}

UCDS: dict[str, str] = {
    "_healpix_29": "pos.healpix",
    "cntr": "meta.id;meta.main",
    "designation": "meta.id",
    "ra": "pos.eq.ra;meta.main",
    "dec": "pos.eq.dec;meta.main",
    **{f"w{b}mpro": f"phot.mag;{em}" for b, em in _BANDS.items()},
    **{f"w{b}sigmpro": f"stat.error;phot.mag;{_BANDS[b]}" for b in (1, 2, 3)},
    **{f"w{b}snr": f"stat.snr;{_BANDS[b]}" for b in (1, 2, 3)},
    "nb": "meta.number",
    "ext_flg": "meta.code;src.morph",
    "ph_qual": "meta.code.qual;phot",
    "cc_flags": "meta.code.qual",
    "p_galaxy": "stat.probability;src.class",
    "p_quasar": "stat.probability;src.class",
    "p_star": "stat.probability;src.class",
    "class": "src.class",
    "confidence": "stat.probability;stat.max",
    "entropy": "stat.value;src.class",
    "ood_score": "stat.value",
    "is_outlier": "meta.code",
    "subset": "meta.code.class",
    "quality_flags": "meta.code.qual",
    "model_version": "meta.version",
}
"""Column name -> IVOA UCD1+ (Unified Content Descriptor): how VO tools (TOPCAT, Aladin,
STILTS) find the position (``pos.eq.ra;meta.main``), the identifier (``meta.id;meta.main``),
the magnitudes (``phot.mag;em.IR.3-4um`` ...), the class (``src.class``) and the probabilities
(``stat.probability``) without knowing our column names. Every word is in the IVOA UCD list
(``astropy.io.votable.ucd.check_ucd`` with the controlled vocabulary accepts each)."""

COOSYS = {"ID": "icrs", "system": "ICRS", "equinox": "J2000", "epoch": "J2000"}
"""The coordinate system ``ra`` and ``dec`` are in (AllWISE: ICRS, epoch J2000), as a VOTable
``COOSYS`` element's attributes."""

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field(
            name,
            typ,
            nullable=nullable,
            metadata={"unit": unit, "description": desc, "ucd": UCDS[name]},
        )
        for name, (typ, nullable, unit, desc) in COLUMNS.items()
    ],
    metadata={
        "iic_survey.format": FORMAT_NAME,
        "iic_survey.format_version": str(FORMAT_VERSION),
        "iic_survey.classes": json.dumps(list(CLASSES)),
        "iic_survey.quality_flags": json.dumps({f.name: int(f) for f in QualityFlag}),
    },
)
"""Arrow schema of every pixel file; units, descriptions and UCDs live in the field metadata."""

COLUMN_DOCS: dict[str, dict[str, str]] = {
    name: {"type": str(typ), "unit": unit, "description": desc, "ucd": UCDS[name]}
    for name, (typ, _, unit, desc) in COLUMNS.items()
}
"""Column name -> {type, unit, description, ucd}, for the README table and the exporters."""


# ---------------------------------------------------------------- layout


def resolve(
    path: str | os.PathLike[str], fs: fsspec.AbstractFileSystem | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and protocol-less root path of a catalog path or URL."""
    if fs is None:
        fs, root = fsspec.core.url_to_fs(str(path))
    else:
        root = fs._strip_protocol(str(path))
    return fs, str(root).rstrip("/") or "/"


MAIN = "iic_allwise"
"""Folder (and ``obs_collection``) of the main catalog inside the output root."""


def margin_name(arcsec: float) -> str:
    """Folder of the margin catalog of ``arcsec`` arcseconds: ``iic_allwise_10arcs``."""
    return f"{MAIN}_{float(arcsec):g}arcs".replace(".", "p")


def catalog_dir(root: str, name: str = MAIN) -> str:
    """Folder of a catalog of the collection (the main one by default)."""
    return f"{root}/{name}"


def pixel_file(root: str, order: int, pixel: int, name: str = MAIN) -> str:
    """Path of a partition file: ``<root>/<name>/dataset/Norder=K/Dir=D/Npix=N.parquet``."""
    return f"{root}/{name}/dataset/{healpix.hats_path(order, pixel)}"


def staging_dir(root: str, order: int, pixel: int) -> str:
    """Folder of a pixel's staged chunk files."""
    return f"{root}/_staging/Norder={healpix.check_order(order)}/Npix={int(pixel)}"


def marker_path(root: str, order: int, pixel: int) -> str:
    """Path of a work pixel's commit marker."""
    return f"{root}/_done/Norder={healpix.check_order(order)}/Npix={int(pixel)}.json"


def stray_file(root: str, order: int, dest: int, source: int) -> str:
    """Rows staged in work pixel ``source`` whose position lies in work pixel ``dest``."""
    folder = f"{root}/_strays/Norder={healpix.check_order(order)}/Npix={int(dest)}"
    return f"{folder}/from-{int(source)}.parquet"


# ---------------------------------------------------------------- rows -> schema


_DICTIONARIES = {"class": CLASSES, "subset": SUBSETS}


def _dictionary_array(values: pd.Series, name: str, categories: tuple[str, ...]) -> pa.Array:
    """A dictionary column whose dictionary is always ``categories`` (in that order)."""
    raw = values.astype(object)
    unknown = raw.notna() & ~raw.isin(categories)
    if unknown.any():
        raise ValueError(
            f"{name!r} holds values outside {categories}: "
            f"{sorted(set(raw[unknown].astype(str)))[:5]}"
        )
    codes = np.asarray(pd.Categorical(raw, categories=list(categories)).codes, dtype=np.int8)
    return pa.DictionaryArray.from_arrays(
        pa.array(codes, mask=codes < 0, type=pa.int8()), pa.array(categories, type=pa.string())
    )


def as_output_table(rows: pd.DataFrame | pa.Table, order: int, pixel: int) -> pa.Table:
    """Conform result rows of one pixel to :data:`OUTPUT_SCHEMA`.

    ``_healpix_29`` is computed from ra/dec when absent. Probabilities given as NaN become null.

    Raises
    ------
    ValueError
        On missing or unknown columns, nulls in a non-nullable column, an unknown class name, or
        rows whose position lies outside ``pixel``.
    """
    df = rows.to_pandas() if isinstance(rows, pa.Table) else rows
    missing = [c for c in COLUMNS if c not in df.columns and c != "_healpix_29"]
    extra = [c for c in df.columns if c not in COLUMNS]
    if missing or extra:
        raise ValueError(
            f"result rows do not match the output schema: missing {missing}, "
            f"unknown {extra}; see iic_survey.output.schema.COLUMNS"
        )
    arrays: list[pa.Array] = []
    for field in OUTPUT_SCHEMA:
        if field.name == "_healpix_29" and field.name not in df.columns:
            arr = pa.array(_healpix_29_of(df, order, pixel), type=pa.int64())
        elif field.name in _DICTIONARIES:
            arr = _dictionary_array(df[field.name], field.name, _DICTIONARIES[field.name])
        else:
            arr = pa.array(df[field.name], from_pandas=True).cast(field.type)
        if not field.nullable and arr.null_count:
            raise ValueError(f"column {field.name!r} has {arr.null_count} nulls but is required")
        arrays.append(arr)
    return _keep_inside(pa.Table.from_arrays(arrays, schema=OUTPUT_SCHEMA), order, pixel)


def _keep_inside(table: pa.Table, order: int, pixel: int) -> pa.Table:
    """Refuse rows far from the pixel; keep those just across its edge, index unchanged.

    The input catalog assigns rows to pixels with its own code; a source within rounding
    distance of an edge can land in a neighbour. Such a row keeps the ``_healpix_29`` of its own
    position: the commit hands it over to the pixel that index lies in (a *stray*,
    :mod:`iic_survey.output.strays`), so index, position and partition always agree. Rows
    outside the pixel and its neighbours, or more than a few, mean a real bug and raise.
    """
    shift = 2 * (healpix.MAX_ORDER - order)
    h29 = table.column("_healpix_29").to_numpy()
    outside = (h29 >> shift) != int(pixel)
    n_out = int(outside.sum())
    if n_out == 0:
        return table
    neighbours = hp.get_all_neighbours(healpix.nside(order), int(pixel), nest=True)
    far = outside & ~np.isin(h29 >> shift, neighbours)
    if far.any() or n_out > max(3, 0.01 * len(h29)):
        raise ValueError(
            f"{n_out} of {len(h29)} rows lie outside pixel {pixel} at order {order} "
            f"(e.g. cntr {table.column('cntr').to_numpy()[outside][:3].tolist()})"
        )
    logger.info("pixel %d: %d rows just across its edge go to their own pixel", pixel, n_out)
    return table


def _healpix_29_of(df: pd.DataFrame, order: int, pixel: int) -> np.ndarray:
    ra = df["ra"].to_numpy(dtype=np.float64, na_value=np.nan)
    dec = df["dec"].to_numpy(dtype=np.float64, na_value=np.nan)
    ok = healpix.valid_coordinates(ra, dec)
    out = np.full(len(ra), int(pixel) << (2 * (healpix.MAX_ORDER - order)), dtype=np.int64)
    if ok.any():
        out[ok] = healpix.healpix_29(ra[ok], dec[ok])
    return out
