"""AllWISE's full column set (300 columns), for catalogs whose files and ``_metadata`` have the
real width.

The names follow the AllWISE Source Catalog's data dictionary (Cutri et al. 2013, Explanatory
Supplement, Sec. II.1.a), which is built from a few per-band patterns; :data:`COLUMN_NAMES`
spells them out in IRSA's Parquet order, and a test checks them against the 300 names IRSA's
``_common_metadata`` lists (``../shared/data/allwise-parquet-columns.txt``). The columns the
synthetic sky models (:mod:`iic_survey.synthetic.catalog`) keep their types, units and
descriptions; the others are filled with plausible values of a type chosen here (IRSA's
tutorials print only a few types: ``ra`` double, ``ext_flg`` int64), so the files cost what
real ones cost to open, list and summarise, not what real values would compress to.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from iic_survey.synthetic import catalog

_B = (1, 2, 3, 4)


def _per_band(*suffixes: str) -> list[str]:
    return [f"w{b}{s}" for b in _B for s in suffixes]


COLUMN_NAMES: tuple[str, ...] = (
    "designation", "ra", "dec", "sigra", "sigdec", "sigradec", "glon", "glat", "elon", "elat",
    "wx", "wy", "cntr", "source_id", "coadd_id", "src",
    *_per_band("mpro", "sigmpro", "snr", "rchi2"),
    "rchi2", "nb", "na", *_per_band("sat"), "satnum",
    "ra_pm", "dec_pm", "sigra_pm", "sigdec_pm", "sigradec_pm", "pmra", "sigpmra", "pmdec",
    "sigpmdec", *_per_band("rchi2_pm"), "rchi2_pm", "pmcode",
    "cc_flags", "rel", "ext_flg", "var_flg", "ph_qual", "det_bit", "moon_lev",
    *_per_band("nm", "m"), *_per_band("cov"), *_per_band("cc_map", "cc_map_str"),
    "best_use_cntr", "ngrp",
    *_per_band("flux", "sigflux", "sky", "sigsk", "conf"),
    *_per_band("mag", "sigm", "flg", "mcor"),
    *(f"w{b}{s}_{k}" for k in range(1, 9) for b in _B for s in ("mag", "sigm", "flg")),
    *_per_band("magp", "sigp1", "sigp2", "k", "ndf", "mlq", "mjdmin", "mjdmax", "mjdmean"),
    "rho12", "rho23", "rho34", "q12", "q23", "q34", "xscprox",
    *_per_band("rsemi", "ba", "pa", "gmag", "gerr", "gflg"),
    "tmass_key", "r_2mass", "pa_2mass", "n_2mass", "j_m_2mass", "j_msig_2mass", "h_m_2mass",
    "h_msig_2mass", "k_m_2mass", "k_msig_2mass", "x", "y", "z", "spt_ind", "htm20",
    "healpix_k0", "healpix_k5",
)  # fmt: skip
"""The 300 columns of IRSA's AllWISE Parquet, in its order."""

_STRINGS = {"pmcode", "rel", "det_bit", "moon_lev", "satnum", *_per_band("cc_map_str")}
_INTS = {
    "best_use_cntr", "ngrp", "tmass_key", "n_2mass", "htm20", "spt_ind", "healpix_k0",
    "healpix_k5", *_per_band("nm", "m", "cc_map", "flg", "ndf", "mlq", "gflg"),
    *(f"w{b}flg_{k}" for k in range(1, 9) for b in _B),
}  # fmt: skip


def _filler_type(name: str) -> pa.DataType:
    if name in _STRINGS:
        return pa.string()
    if name in _INTS:
        return pa.int64()
    return pa.float64()


def full_schema() -> pa.Schema:
    """All 300 columns: the modelled ones as :func:`catalog.catalog_schema` has them."""
    modelled = catalog.catalog_schema()
    fields = []
    for name in COLUMN_NAMES:
        if name in modelled.names:
            fields.append(modelled.field(name))
        else:
            desc = f"AllWISE column {name} (filled, not modelled, by the synthetic sky)"
            fields.append(pa.field(name, _filler_type(name), metadata={b"description": desc}))
    return pa.schema(fields, metadata=modelled.metadata)


def full_table(rows: pd.DataFrame, rng: np.random.Generator, k5: np.ndarray) -> pa.Table:
    """``rows`` (modelled columns) widened to :func:`full_schema`; ``k5``: each row's partition."""
    schema = full_schema()
    n = len(rows)
    columns = []
    for field in schema:
        if field.name in rows.columns:
            columns.append(pa.array(rows[field.name], type=field.type, from_pandas=True))
        elif field.name in ("healpix_k0", "healpix_k5"):
            k5 = np.asarray(k5, dtype=np.int64)
            columns.append(pa.array(k5 // 1024 if field.name == "healpix_k0" else k5))
        elif field.type == pa.string():
            columns.append(pa.array(np.full(n, "0000", dtype=object), type=pa.string()))
        elif field.type == pa.int64():
            columns.append(pa.array(rng.integers(0, 100, n, dtype=np.int64)))
        else:
            columns.append(pa.array(rng.normal(size=n).round(3)))
    return pa.Table.from_arrays(columns, schema=schema)
