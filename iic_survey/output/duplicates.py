"""Exactly once across pixels: no ``cntr`` in two partition files of the catalog.

The pipeline refuses a ``cntr`` repeated within an input partition when it reads it; a source
listed in two input partitions reaches two output pixels, each correct on its own. Finalize
therefore checks the whole catalog before it marks it complete (:func:`check_unique_cntr`).

The check reads only the ``cntr`` column of every partition file, once, in the order given.
Each value goes to one of ``B`` buckets by a hash of its value, with the number of the file it
came from; a repeated ``cntr`` lands twice in the same bucket, so each bucket is checked on its
own (``np.unique``). With ``B = ceil(rows / 4 M)`` a bucket holds about 4 M entries (64 MB), so
memory stays bounded at any size; buckets beyond the first are spooled to local temporary
files (16 bytes a row: about 12 GB for AllWISE's 747 M rows, read back once). Time is linear
in the rows: one column read plus one pass of numpy work per row.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence

import fsspec
import numpy as np
import pyarrow.parquet as pq

from iic_survey.core.hashing import keyed_hash
from iic_survey.output.staging import OutputError

BUCKET_ROWS = 4_000_000
"""Entries per bucket (memory of the check: 16 bytes each)."""
_ENTRY = np.dtype([("cntr", "<i8"), ("file", "<i8")])


class DuplicateCntrError(OutputError):
    """A ``cntr`` is in more than one partition file; ``found`` maps a few to their files."""

    def __init__(self, found: dict[int, list[str]], n_repeated: int) -> None:
        shown = "; ".join(f"cntr {c} in {', '.join(files)}" for c, files in found.items())
        super().__init__(
            f"{n_repeated} cntr values are in more than one output pixel ({shown}): the input "
            f"catalog lists these sources in more than one partition. The catalog is not "
            f"marked complete; fix the input and rerun with --overwrite"
        )
        self.found = found
        self.n_repeated = n_repeated


def check_unique_cntr(
    fs: fsspec.AbstractFileSystem, paths: Sequence[str], total_rows: int | None = None
) -> int:
    """Raise :class:`DuplicateCntrError` if a ``cntr`` is in two of the files ``paths``.

    Returns the number of rows checked. ``total_rows`` (if known) sizes the buckets before the
    files are read.
    """
    n_buckets = max(1, math.ceil((total_rows or 0) / BUCKET_ROWS))
    with tempfile.TemporaryDirectory(prefix="iic-cntr-") as spool_dir:
        spools = [open(f"{spool_dir}/{b}", "w+b") for b in range(1, n_buckets)]  # noqa: SIM115
        first: list[np.ndarray] = []
        rows = 0
        try:
            for i, path in enumerate(paths):
                with fs.open(path, "rb") as f:
                    cntr = pq.read_table(f, columns=["cntr"])["cntr"].to_numpy()
                rows += len(cntr)
                entries = np.empty(len(cntr), dtype=_ENTRY)
                entries["cntr"], entries["file"] = cntr, i
                bucket = keyed_hash(cntr, "cntr-bucket") % np.uint64(n_buckets)
                first.append(entries[bucket == 0])
                for b, spool in enumerate(spools, start=1):
                    entries[bucket == b].tofile(spool)
            found, n_rep = _repeated(np.concatenate(first) if first else np.empty(0, _ENTRY))
            for spool in spools:
                spool.seek(0)
                more, k = _repeated(np.fromfile(spool, dtype=_ENTRY))
                found.update(more)
                n_rep += k
        finally:
            for spool in spools:
                spool.close()
    if n_rep:
        shown = dict(list(found.items())[:5])
        raise DuplicateCntrError({c: [paths[i] for i in f] for c, f in shown.items()}, n_rep)
    return rows


def _repeated(entries: np.ndarray) -> tuple[dict[int, list[int]], int]:
    """The repeated ``cntr`` of one bucket (up to 5, with their files) and how many there are."""
    if not len(entries):
        return {}, 0
    values, counts = np.unique(entries["cntr"], return_counts=True)
    rep = values[counts > 1]
    found = {}
    for c in rep[:5].tolist():
        found[int(c)] = sorted(set(entries["file"][entries["cntr"] == c].tolist()))
    return found, int(rep.size)
