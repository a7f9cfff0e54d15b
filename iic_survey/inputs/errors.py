"""TODO docstring for inputs.errors (from archive)."""

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
