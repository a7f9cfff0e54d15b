"""Benchmark of the collection's extra cost: the margin and id-index catalogs against the main one.

Measured in one run, side by side on the same rows, in this process (one core):

1. **Main catalog**: stage the rows of every order-5 pixel as chunks, commit each pixel
   (:func:`iic_survey.output.commit.commit_pixel`) and finalize
   (:func:`iic_survey.output.finalize.finalize`: ``_metadata``, thumbnail, coverage maps,
   properties, all through ``hats``).
2. **Margin** (10″): :func:`iic_survey.output.margin.build_margin`, one partition after another
   (a run gives each partition its own Ray task), then its metadata.
3. **Id indexes** (``cntr``, ``designation``): :func:`iic_survey.output.index.build_indexes`,
   the HATS index catalogs a lookup reads (issue 27: less than 5 % of the main catalog's bytes).

Reported: the margin's time and bytes as fractions of the main catalog's, its rows as a
fraction of the main rows, and the bytes a row takes in the main files (what
``--max-rows-per-partition``'s default is sized from). The rows are uniform on a cap of the
sky at about a fifth of AllWISE's mean density (12,000 rows an order-5 pixel instead of
60,000); the fraction of rows in a 10″ band of an order-5 pixel does not depend on density.

Run from the repository root::

    .venv/bin/python -m benchmarks.collection                 # prints the results
    .venv/bin/python -m benchmarks.collection --write-results # also updates benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from benchmarks.common import cpu_name
from benchmarks.results import write_section
from iic_survey.core import healpix
from iic_survey.output import commit, index, margin, partitions, schema, staging
from iic_survey.output import finalize as output_finalize
from iic_survey.testing.catalog import fake_results

SECTION = "## Margin and partitions (benchmarks/collection.py)"
ORDER = 5


def _main_catalog(out: str, rows) -> float:
    """Stage, commit and finalize ``rows`` as the pipeline would; seconds taken."""
    t0 = time.perf_counter()
    pix = healpix.pixel_of(rows["ra"].to_numpy(), rows["dec"].to_numpy(), ORDER)
    counts = {int(p): int(n) for p, n in zip(*np.unique(pix, return_counts=True), strict=True)}
    staging.prepare_output(out, {"healpix_order": ORDER, "model": "bench"})
    staging.write_plan(out, ORDER, counts)
    for p, n in counts.items():
        part = rows[pix == p]
        for i, lo in enumerate(range(0, n, 2048)):
            staging.write_part(out, ORDER, p, f"{p}-{i:05d}", part.iloc[lo : lo + 2048])
        commit.commit_pixel(out, ORDER, p, n)
    output_finalize.finalize(out)
    return time.perf_counter() - t0


def _bytes(folder: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in (folder / "dataset").rglob("Npix=*.parquet"))


def _index_bytes(folder: pathlib.Path) -> int:
    """Bytes of an index catalog's data files (not its ``_metadata``)."""
    return sum(f.stat().st_size for f in (folder / "dataset" / "index").glob("part.*.parquet"))


def measure(n_rows: int, radius_deg: float, arcsec: float) -> dict[str, float]:
    rows, _ = fake_results(n_rows, seed=15, centre=(150.0, 20.0), radius_deg=radius_deg)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench_collection_"))
    try:
        out = str(tmp / "catalog")
        t_main = _main_catalog(out, rows)
        t0 = time.perf_counter()
        m_rows = margin.build_margin(out, arcsec)
        t_margin = time.perf_counter() - t0
        main_bytes = _bytes(tmp / "catalog" / schema.MAIN)
        margin_bytes = _bytes(tmp / "catalog" / schema.margin_name(arcsec))
        n_parts = len(list((tmp / "catalog" / schema.MAIN / "dataset").rglob("Npix=*.parquet")))
        t0 = time.perf_counter()
        index.build_indexes(out)
        t_index = time.perf_counter() - t0
        index_bytes = {
            c: _index_bytes(tmp / "catalog" / index.index_name(c)) for c in index.INDEXED
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "rows": n_rows,
        "partitions": n_parts,
        "t_main": t_main,
        "t_margin": t_margin,
        "main_bytes": main_bytes,
        "margin_bytes": margin_bytes,
        "margin_rows": m_rows,
        "bytes_per_row": main_bytes / n_rows,
        "t_index": t_index,
        **{f"index_bytes_{c}": float(b) for c, b in index_bytes.items()},
    }


def report(r: dict[str, float], arcsec: float, load: tuple[float, float]) -> str:
    per_row = r["bytes_per_row"]
    size = partitions.DEFAULT_MAX_ROWS * per_row / 1e6
    today = datetime.date.today().isoformat()
    return "\n".join(
        [
            SECTION,
            "",
            f"Run {today} on {cpu_name()} ({os.cpu_count()} CPUs, "
            f"load average {load[0]:.2f} before, {load[1]:.2f} after: shared with other work), "
            f"one process, the same {r['rows']:,} rows (uniform, order-5 partitions: "
            f"{r['partitions']}) for both.",
            "",
            "| | main catalog | margin (10″) | margin / main |",
            "|---|---|---|---|",
            f"| time (stage + commit + finalize; build + finalize) | {r['t_main']:.2f} s | "
            f"{r['t_margin']:.2f} s | {r['t_margin'] / r['t_main']:.3f} |",
            f"| bytes of partition files | {r['main_bytes']:,} | {r['margin_bytes']:,} | "
            f"{r['margin_bytes'] / r['main_bytes']:.4f} |",
            f"| rows | {r['rows']:,} | {r['margin_rows']:,} | {r['margin_rows'] / r['rows']:.4f} |",
            "",
            f"The id indexes (HATS index catalogs, built after the margin in {r['t_index']:.2f} s "
            f"for both): bytes of their data files against the main catalog's partition files "
            f"(goal, issue 27: < 5 %):",
            "",
            "| index | bytes | bytes per row | of the main catalog |",
            "|---|---:|---:|---:|",
            *(
                f"| `{c}` | {r[f'index_bytes_{c}']:,.0f} | "
                f"{r[f'index_bytes_{c}'] / r['rows']:.2f} | "
                f"**{100 * r[f'index_bytes_{c}'] / r['main_bytes']:.2f} %** |"
                for c in index.INDEXED
            ),
            "",
            f"A row takes {per_row:.1f} bytes in the main files (zstd), so the default "
            f"`--max-rows-per-partition` of {partitions.DEFAULT_MAX_ROWS:,} gives files of at "
            f"most ~{size:.0f} MB, inside HATS's 100-300 MB; an average order-5 AllWISE pixel "
            f"(~60,000 rows, ~{60_000 * per_row / 1e6:.1f} MB) stays whole. The margin's time "
            f"is mostly reading each partition's neighbours (every neighbour file is read once "
            f"per partition it borders); in a run it is spread over one Ray task per partition.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400_000)
    p.add_argument("--radius-deg", type=float, default=6.0)
    p.add_argument("--margin-arcsec", type=float, default=margin.DEFAULT_MARGIN_ARCSEC)
    p.add_argument("--write-results", action="store_true")
    args = p.parse_args(argv)
    before = os.getloadavg()[0]
    r = measure(args.rows, args.radius_deg, args.margin_arcsec)
    text = report(r, args.margin_arcsec, (before, os.getloadavg()[0]))
    print(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
