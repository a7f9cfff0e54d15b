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
    """The catalog row itself is unusable (e.g. a duplicate cntr, or a ``cc_flags`` that is null
    or not four characters long); kept for the record."""
    ARTEFACT = 1024
    """AllWISE marks the W1 or W2 measurement as a likely spurious detection of an image
    artefact: an upper-case D (diffraction spike), H (halo), O (optical ghost) or P (latent)
    in the W1 or W2 character of ``cc_flags``. The row is classified; "clean" selections
    exclude it."""


UNCLASSIFIABLE = (
    QualityFlag.FETCH_FAILED
    | QualityFlag.BAND_MISSING
    | QualityFlag.BAD_COORDINATES
    | QualityFlag.BLANK
    | QualityFlag.BAD_INPUT
)
"""Rows with any of these bits get null probabilities: the image is not trustworthy input."""


NOT_CLEAN = (
    UNCLASSIFIABLE
    | QualityFlag.OFF_EDGE
    | QualityFlag.NAN_PIXELS
    | QualityFlag.NO_CENTRAL_SOURCE
    | QualityFlag.SATURATED
    | QualityFlag.ARTEFACT
)
"""Rows with any of these bits are not "clean": their image or their AllWISE measurement is
suspect (``W3_UNDETECTED`` is not among them: most faint sources have it, and the model was
trained on them). A row that is not clean is in the ``unsafe`` subset."""

ARTEFACT_CHARS = frozenset("DHOP")
"""Upper-case ``cc_flags`` characters that mark a spurious detection (lower case: contaminated
but real; ``0``: clean)."""


def unclassifiable(flags: np.ndarray) -> np.ndarray:
    """Boolean mask of rows whose flags forbid classification."""
    return (np.asarray(flags, dtype=np.int64) & int(UNCLASSIFIABLE)) != 0


def clean(flags: np.ndarray) -> np.ndarray:
    """Boolean mask of rows with none of the :data:`NOT_CLEAN` bits."""
    return (np.asarray(flags, dtype=np.int64) & int(NOT_CLEAN)) == 0


def cc_flags_bits(cc_flags: np.ndarray) -> np.ndarray:
    """``ARTEFACT`` or ``BAD_INPUT`` (0 otherwise) per AllWISE ``cc_flags`` string.

    ``cc_flags`` has one character per band, W1 W2 W3 W4; an upper-case D, H, O or P in the W1
    or W2 character is an artefact. A null, or a string that is not four characters long,
    cannot be read: BAD_INPUT (the row is kept, unclassified).
    """
    out = np.zeros(len(cc_flags), dtype=np.uint32)
    for i, cc in enumerate(cc_flags):
        if not isinstance(cc, str) or len(cc) != 4:
            out[i] = int(QualityFlag.BAD_INPUT)
        elif cc[0] in ARTEFACT_CHARS or cc[1] in ARTEFACT_CHARS:
            out[i] = int(QualityFlag.ARTEFACT)
    return out


def describe(flags: int) -> list[str]:
    """Names of the bits set in one ``quality_flags`` value, lowest bit first."""
    return [f.name for f in QualityFlag if f.name is not None and int(flags) & int(f)]
