"""Small HATS-shaped partition files, many of them: the input of ``_metadata`` memory checks.

Finalize reads one footer per partition to write ``dataset/_metadata``; how its memory grows
with the number of partitions is checked (tests) and measured (``benchmarks/metadata.py``) on
catalogs written here: ``dataset/Norder=K/Dir=D/Npix=N.parquet`` for each pixel, a few rows of
``_healpix_29`` inside the pixel, a string id and ``columns`` float columns, with statistics (so
each footer is as wide as a real catalog's of that many columns).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def order_pixels(order: int, n: int) -> list[tuple[int, int]]:
    """The first ``n`` pixels of ``order`` (at most all ``12 * 4**order``)."""
    return [(order, p) for p in range(min(n, 12 * 4**order))]


def write_partition_files(
    root: str | pathlib.Path,
    pixels: Sequence[tuple[int, int]],
    columns: int = 40,
    rows: int = 3,
    seed: int = 0,
) -> None:
    """One Parquet file per ``(order, pixel)`` under ``root/dataset`` (HATS layout)."""
    rng = np.random.default_rng(seed)
    names = [f"c{i:03d}" for i in range(columns)]
    for order, pixel in pixels:
        shift = 2 * (29 - order)
        data = {
            "_healpix_29": (np.int64(pixel) << shift) + np.arange(rows, dtype=np.int64),
            "id": [f"J{order}-{pixel}-{i}" for i in range(rows)],
            **{name: rng.random(rows) for name in names},
        }
        folder = pathlib.Path(root, "dataset", f"Norder={order}", f"Dir={pixel // 10_000 * 10_000}")
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(data), folder / f"Npix={pixel}.parquet")
