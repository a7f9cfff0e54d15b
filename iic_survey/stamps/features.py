"""The catalog's colour features and photometry flags: the model's input next to the image.

:func:`catalog_features` turns AllWISE photometry (``w1mpro`` .. ``w3snr``) into the
:data:`FEATURE_NAMES` columns (W1-W2, W2-W3, W1, their uncertainties, a W3-detected bit),
NaN-free: missing values get the documented fills :data:`W2_W3_FILL`, :data:`SIGMA_FILL` and
:data:`W1_FILL`. :func:`catalog_flags` says which rows had them (``W3_UNDETECTED``,
``BAD_INPUT``). Pure numpy over a frame, no I/O, so training and inference share it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from iic_survey.core.flags import QualityFlag, cc_flags_bits

# ---------------------------------------------------------------------------------------------
# Catalog features

FEATURE_NAMES: tuple[str, ...] = (
    "w1_w2",
    "w2_w3",
    "w1",
    "w1_sigma",
    "w2_sigma",
    "w3_sigma",
    "w3_detected",
)
"""Columns of :func:`catalog_features`: W1-W2, W2-W3, W1 (Vega mag), their three
uncertainties (mag), and 1/0 for a W3 detection."""

W3_SNR_MIN = 2.0
"""W3 counts as detected at ``w3snr >= 2`` with a measured ``w3sigmpro`` (AllWISE gives
``w3mpro`` as a 95 % upper limit and a null ``w3sigmpro`` otherwise)."""

W2_W3_FILL = 2.0
"""W2-W3 given to sources without a W3 detection: the middle of the AllWISE range, between
stars (~0) and AGN / star-forming galaxies (3-4), so it says nothing on its own; the
``w3_detected`` feature carries the information."""

SIGMA_FILL = 2.5 / math.log(10) / W3_SNR_MIN
"""Uncertainty (mag) given where the catalog has none: that of an SNR-2 detection (0.54 mag)."""

W1_FILL = 17.5
"""W1 (mag) for a row without one (never in AllWISE proper; such rows also get BAD_INPUT)."""

_FEATURE_COLUMNS = ("w1mpro", "w2mpro", "w3mpro", "w1sigmpro", "w2sigmpro", "w3sigmpro", "w3snr")


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    try:
        values = pd.to_numeric(df[name], errors="raise")
    except (ValueError, TypeError) as exc:
        raise ValueError(f"catalog column {name!r} is not numeric: {exc}") from None
    arr = np.asarray(pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan))
    return np.where(np.isfinite(arr), arr, np.nan)


def _columns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    missing = [c for c in _FEATURE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"catalog features need columns {missing}, absent from the frame")
    return {c: _column(df, c) for c in _FEATURE_COLUMNS}


def _w3_detected(c: dict[str, np.ndarray]) -> np.ndarray:
    return (c["w3snr"] >= W3_SNR_MIN) & np.isfinite(c["w3sigmpro"]) & np.isfinite(c["w3mpro"])


def w3_undetected(df: pd.DataFrame) -> np.ndarray:
    """True where W3 is an upper limit or noise-dominated (``w3snr < 2`` or null)."""
    return ~_w3_detected(_columns(df))


def catalog_flags(df: pd.DataFrame) -> np.ndarray:
    """Per-row flags from the catalog: W3_UNDETECTED; BAD_INPUT where W1 or W2 is null; from
    ``cc_flags`` when the frame has it, ARTEFACT (or BAD_INPUT for a null or malformed value,
    :func:`~iic_survey.core.flags.cc_flags_bits`)."""
    c = _columns(df)
    flags = np.zeros(len(df), dtype=np.uint32)
    if "cc_flags" in df.columns:
        flags |= cc_flags_bits(df["cc_flags"].to_numpy(dtype=object))
    flags[~_w3_detected(c)] |= np.uint32(QualityFlag.W3_UNDETECTED)
    flags[~np.isfinite(c["w1mpro"]) | ~np.isfinite(c["w2mpro"])] |= np.uint32(QualityFlag.BAD_INPUT)
    return flags


def catalog_features(df: pd.DataFrame) -> np.ndarray:
    """(N, len(FEATURE_NAMES)) float32 colour features, NaN-free, one row per catalog row.

    Missing values get documented fills (:data:`W2_W3_FILL`, :data:`SIGMA_FILL`,
    :data:`W1_FILL`, W1-W2 = 0) and :func:`catalog_flags` says which rows had them.
    """
    c = _columns(df)
    det = _w3_detected(c)
    w1, w2 = c["w1mpro"], c["w2mpro"]
    w1_w2 = np.where(np.isfinite(w1) & np.isfinite(w2), w1 - w2, 0.0)
    w2_w3 = np.where(det & np.isfinite(w2), w2 - c["w3mpro"], W2_W3_FILL)
    sig = [
        np.where(np.isfinite(c[f"w{b}sigmpro"]), c[f"w{b}sigmpro"], SIGMA_FILL) for b in (1, 2, 3)
    ]
    sig[2] = np.where(det, sig[2], SIGMA_FILL)
    w1f = np.where(np.isfinite(w1), w1, W1_FILL)
    out = np.stack([w1_w2, w2_w3, w1f, *sig, det.astype(np.float64)], axis=1).astype(np.float32)
    return out
