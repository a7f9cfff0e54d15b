"""Adaptive partitions: a work pixel with too many rows is written as its children.

HATS catalogs keep files of similar size by splitting dense pixels (hats-import's AllWISE
example: at most 1,000,000 rows a file, orders up to 7). Here the run's work pixel stays the
unit of staging, commit and resume, and its commit decides the files: the pixel's rows, sorted
by ``_healpix_29``, are one partition when they are at most ``max_rows``; otherwise each of the
four children at the next order is considered in turn, down to :data:`MAX_PARTITION_ORDER`.
Because the rows are sorted by the order-29 index, every descendant's rows are one contiguous
slice, so the split is a few binary searches and a function of the rows alone: a commit that is
redone after a crash writes the same files.
"""

from __future__ import annotations

import numpy as np

from iic_survey.core import healpix

MAX_PARTITION_ORDER = 9
"""Deepest order a dense pixel is split to (order 9: 6.9 arcmin pixels)."""

DEFAULT_MAX_ROWS = 2_000_000
"""Default ``--max-rows-per-partition``: ~155 MB files at the 77.5 bytes a row (zstd) the
catalog's files take (benchmarks/RESULTS.md, "Margin and partitions"), inside the 100-300 MB HATS
recommends; an average order-5 AllWISE pixel (~60,000 rows) stays whole and only the densest
(Galactic plane, ecliptic poles: millions) are split."""


def check_max_rows(max_rows: int) -> int:
    """``max_rows`` as an int, or raise unless it is >= 1."""
    if isinstance(max_rows, bool) or int(max_rows) != max_rows or int(max_rows) < 1:
        raise ValueError(f"max_rows_per_partition must be an integer >= 1, got {max_rows!r}")
    return int(max_rows)


def split(
    h29: np.ndarray, order: int, pixel: int, max_rows: int, max_order: int = MAX_PARTITION_ORDER
) -> list[tuple[int, int, int, int]]:
    """The partitions of one work pixel's rows: ``(order, pixel, start, stop)`` slices.

    ``h29`` is the sorted ``_healpix_29`` of rows that all lie in ``pixel`` at ``order``. Empty
    children are left out; a pixel at ``max_order`` (or deeper) is never split, however many
    rows it holds.
    """
    h29 = np.asarray(h29, dtype=np.int64)
    max_rows = check_max_rows(max_rows)
    out: list[tuple[int, int, int, int]] = []
    todo = [(healpix.check_order(order), int(pixel), 0, len(h29))]
    while todo:
        k, p, lo, hi = todo.pop(0)
        if hi - lo <= max_rows or k >= max_order:
            out.append((k, p, lo, hi))
            continue
        first = p << 2
        shift = 2 * (healpix.MAX_ORDER - (k + 1))
        edges = np.searchsorted(h29[lo:hi] >> shift, np.arange(first, first + 5)) + lo
        children = [
            (k + 1, first + i, int(edges[i]), int(edges[i + 1]))
            for i in range(4)
            if edges[i + 1] > edges[i]
        ]
        todo = children + todo  # depth first: partitions come out in _healpix_29 order
    return out
