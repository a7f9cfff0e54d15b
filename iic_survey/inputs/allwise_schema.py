"""The AllWISE catalog's column contract: which columns exist, which are needed, of what type.

A catalog opened by :mod:`iic_survey.inputs.catalog` (IRSA's, a copy, or a synthetic sky) is checked
against this before any work starts: :data:`REQUIRED_COLUMNS` must be there for any read,
:data:`PIPELINE_COLUMNS` for a classification run, and every known column must have the kind
of type in :data:`COLUMN_KINDS` (any width of that kind). Errors name what is missing and,
where a column of a close name exists, suggest it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pyarrow as pa

from iic_survey.core.config import closest
from iic_survey.inputs.storage import CatalogError

PIPELINE_COLUMNS: tuple[str, ...] = (
    "cntr",
    "designation",
    "ra",
    "dec",
    "w1mpro",
    "w2mpro",
    "w3mpro",
    "w4mpro",
    "w1sigmpro",
    "w2sigmpro",
    "w3sigmpro",
    "w1snr",
    "w2snr",
    "w3snr",
    "nb",
    "ext_flg",
    "ph_qual",
    "cc_flags",
    "coadd_id",
    "wx",
    "wy",
)
"""Columns the classification pipeline reads (identity, position, photometry, the quality
columns it carries into the output, tile position)."""

REQUIRED_COLUMNS: tuple[str, ...] = ("cntr", "ra", "dec")
"""Columns every catalog must have: without them no row can be identified or placed."""

_FLOAT, _INT, _STR = "floating-point", "integer", "string"
COLUMN_KINDS: dict[str, str] = {
    "cntr": _INT,
    "designation": _STR,
    "ra": _FLOAT,
    "dec": _FLOAT,
    "glon": _FLOAT,
    "glat": _FLOAT,
    **{f"w{b}{s}": _FLOAT for b in (1, 2, 3, 4) for s in ("mpro", "sigmpro", "snr", "rchi2")},
    "ext_flg": _INT,
    "ph_qual": _STR,
    "cc_flags": _STR,
    "var_flg": _STR,
    "nb": _INT,
    "na": _INT,
    "coadd_id": _STR,
    "wx": _FLOAT,
    "wy": _FLOAT,
}
"""The kind of type each known AllWISE column must have (any width of that kind is accepted)."""


class CatalogSchemaError(CatalogError, ValueError):
    """The catalog lacks a required column, or a column has the wrong type."""


def _kind_ok(kind: str, typ: pa.DataType) -> bool:
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if kind == _FLOAT:
        return bool(pa.types.is_floating(typ))
    if kind == _INT:
        return bool(pa.types.is_integer(typ))
    return bool(
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    )


def check_schema(schema: pa.Schema, required: Iterable[str], where: str) -> None:
    """Raise :class:`CatalogSchemaError` listing missing required columns and wrong types."""
    names = set(schema.names)
    missing = [c for c in dict.fromkeys(required) if c not in names]
    if missing:
        raise CatalogSchemaError(
            f"catalog {where} lacks required column(s) {missing}; it has {len(names)} columns"
            f"{suggest_columns(missing, names)}"
        )
    wrong = [
        f"{f.name}: {f.type} (expected {COLUMN_KINDS[f.name]})"
        for f in schema
        if f.name in COLUMN_KINDS and not _kind_ok(COLUMN_KINDS[f.name], f.type)
    ]
    if wrong:
        raise CatalogSchemaError(f"catalog {where} has columns of the wrong type: {wrong}")


def suggest_columns(missing: Sequence[str], names: Iterable[str]) -> str:
    """`` (did you mean: 'a' -> 'b'?)`` for the missing names with a close match, else ``""``.

    The catalog's errors list several missing columns at once, so the hint pairs each with its
    closest name (:func:`iic_survey.core.config.closest`).
    """
    names = list(names)
    hints = [f"{m!r} -> {near!r}" for m in missing if (near := closest(m, names)) is not None]
    return f" (did you mean: {', '.join(hints)}?)" if hints else ""
