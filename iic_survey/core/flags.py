"""The per-source quality bitmask carried from cutouts to the output catalog.

Every stage that can lose information about a source sets a bit here instead of dropping the
row, so the catalog keeps one row per input source and says why a row could not be classified.
The bit values are part of the output contract (they are written into the catalog and
documented in the README): never renumber a bit, only add new ones.
"""

from __future__ import annotations

import enum

import numpy as np


class QualityFlag(enum.IntFlag):
    """Bits of the ``quality_flags`` column."""

    FETCH_FAILED = 1
    """The cutout could not be fetched after retries (network or archive fault)."""
    OFF_EDGE = 2
    """The stamp reaches past the tile edge and was padded (no better tile held the source)."""
    NAN_PIXELS = 4
    """The stamp had NaN pixels (masked, padded or missing data); they were filled."""
    NO_CENTRAL_SOURCE = 8
    """No significant W1 flux at the stamp centre (the paper's failure class 4)."""
    SATURATED = 16
    """The source is bright enough to saturate the Atlas image (W1 < 8 mag or flat-topped core)."""
    W3_UNDETECTED = 32
    """W3 is an upper limit or noise-dominated (W3 SNR < 2)."""
    BAND_MISSING = 64
    """At least one band's tile was not found in the archive."""
    BAD_COORDINATES = 128
    """ra/dec is NaN or out of range; no cutout was attempted."""
    BLANK = 256
    """A band's stamp is constant (blank or zero-filled data)."""
    BAD_INPUT = 512
    """The catalog row itself is unusable (e.g. a duplicate cntr); kept for the record."""


UNCLASSIFIABLE = (
    QualityFlag.FETCH_FAILED
    | QualityFlag.BAND_MISSING
    | QualityFlag.BAD_COORDINATES
    | QualityFlag.BLANK
    | QualityFlag.BAD_INPUT
)
"""Rows with any of these bits get null probabilities: the image is not trustworthy input."""


def unclassifiable(flags: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose flags forbid classification."""
    return (np.asarray(flags, dtype=np.int64) & int(UNCLASSIFIABLE)) != 0


def describe(flags: int) -> list[str]:
    """Names of the bits set in one ``quality_flags`` value, lowest bit first."""
    return [f.name for f in QualityFlag if f.name is not None and int(flags) & int(f)]
