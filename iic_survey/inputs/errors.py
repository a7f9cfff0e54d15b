"""The image archive's errors: what can go wrong with a tile, as types a caller can act on.

Reading Atlas tiles (:mod:`iic_survey.inputs.archive`), cutting stamps from them and asking IBE
for cutouts (:mod:`iic_survey.inputs.ibe`) all raise these. Each also derives from the builtin
that fits (``FileNotFoundError``, ``ValueError``, ``OSError``, ``PermissionError``), so generic
handlers keep working. :class:`TileMissing` and :class:`TileCorrupt` become per-row quality
flags, :class:`TileFetchError` is retried, and :class:`ArchiveAccessDenied` is always raised:
it is a configuration problem, not a fault of one row.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base class of the archive's errors."""


class TileMissing(ArchiveError, FileNotFoundError):  # noqa: N818 (the contract's name)
    """The tile (or that band of it) is not in the archive."""


class TileCorrupt(ArchiveError, ValueError):  # noqa: N818 (the contract's name)
    """The file is there but unusable: truncated, not FITS, no celestial WCS or no MAGZP."""


class TileFetchError(ArchiveError, OSError):
    """A network fault (time-out, 5xx, short read) that may pass if the read is retried."""


class ArchiveAccessDenied(ArchiveError, PermissionError):  # noqa: N818 (reads as a verdict)
    """The archive refused access (HTTP 401/403, S3 AccessDenied): fix the configuration."""
