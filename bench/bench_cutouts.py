"""Benchmark of the cutout stage: tile-batched vs per-source reads, and vs CPU inference.

Two ratios, each measured within one run on the same machine and data:

1. **Batching.** All sources of the fullest order-5 pixel of a synthetic sky are cut with
   :func:`iic_survey.stamps.cutter.cut_sources` (each tile and band read once), against the
   naive way: open the tile and read a 37x37 ``.section`` per source and band. Goal: >= 50x.
2. **Headroom over inference.** Cutouts + :func:`iic_survey.stamps.rgb.make_rgb` on one core (one
   thread), against IICnet's CPU inference rate (torch with 1 thread, batch 256, eval mode,
   BatchNorm folded when the model offers it). Goal: >= 5x, so that cutting never limits a CPU
   run.

Run from the repository root::

    .venv/bin/python bench/bench_cutouts.py                 # prints the results
    .venv/bin/python bench/bench_cutouts.py --write-results # also updates bench/RESULTS.md

The sky is written once (``--sky``, default ``$TMPDIR/iic_bench_sky``) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from results_md import write_section

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Cutouts (bench/bench_cutouts.py)"
logger = logging.getLogger("bench_cutouts")


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest wall time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} / {five:.2f} / {fifteen:.2f}"


def _sky(path: str, n_sources: int) -> Any:
    from iic_survey.synthetic import sky as synthetic

    if (pathlib.Path(path) / "sky.json").is_file():
        return synthetic.SkyManifest.load(path)
    logger.info("writing a synthetic sky (%d sources) to %s", n_sources, path)
    return synthetic.write_sky(path, synthetic.SkyConfig(n_sources=n_sources))


def _fullest_pixel(catalog_url: str) -> tuple[int, pd.DataFrame]:
    """The order-5 pixel with the most rows, and its rows sorted by coadd_id (as the pipeline)."""
    files = sorted(pathlib.Path(catalog_url).glob("healpix_k0=*/healpix_k5=*/part0.snappy.parquet"))
    counts = {f: pd.read_parquet(f, columns=["cntr"]).shape[0] for f in files}
    best = max(counts, key=lambda f: counts[f])
    pixel = int(best.parent.name.split("=")[1])
    cols = ["cntr", "ra", "dec", "coadd_id", "wx", "wy", "w1mpro"]
    df = pd.read_parquet(best, columns=cols).sort_values("coadd_id", kind="stable")
    return pixel, df.reset_index(drop=True)


def per_source(df: pd.DataFrame, archive: Any, bands: tuple[int, ...], size: int) -> np.ndarray:
    """The naive way: for every source and band, open its tile and read one small section."""
    from iic_survey.inputs.archive import tile_geometry

    h = size // 2
    out = np.full((len(df), len(bands), size, size), np.nan, dtype=np.float32)
    for i, row in enumerate(df.itertuples(index=False)):
        for b, band in enumerate(bands):
            with archive.open_tile(row.coadd_id, band) as hdu:
                geom = tile_geometry(hdu.header)
                x, y = geom.wcs.world_to_pixel_values(row.ra, row.dec)
                ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                ny, nx = geom.shape
                if h <= ix < nx - h and h <= iy < ny - h:
                    out[i, b] = hdu.section[iy - h : iy + h + 1, ix - h : ix + h + 1]
    return out


def inference_rate(batch: int, repeats: int) -> tuple[float, str]:
    """IICnet CPU images/s with one torch thread."""
    import torch

    from iic_survey.model.config import ModelConfig
    from iic_survey.model.network import build_model

    torch.set_num_threads(1)
    model = build_model(ModelConfig(arch="iicnet"), seed=0).eval()
    folded = 0
    for m in model.modules():
        fold = getattr(m, "fold", None)
        if callable(fold):
            fold()
            folded += 1
    x = torch.randn(batch, 3, 80, 80)
    with torch.inference_mode():
        model(x, None)  # warm-up
        dt, _ = _best(lambda: model(x, None), repeats)
    return batch / dt, f"eval, {folded} Conv+BN folded, torch {torch.__version__}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from iic_survey.inputs.archive import TileArchive
    from iic_survey.stamps.cutouts import CutoutConfig
    from iic_survey.stamps.cutter import cut_sources

    res: dict[str, Any] = {
        "load_before": _load(),
        "cpu": platform.processor() or platform.machine(),
    }
    res["nproc"] = os.cpu_count()
    manifest = _sky(args.sky, args.n_sources)
    pixel, df = _fullest_pixel(manifest.catalog_url)
    archive = TileArchive.from_spec(manifest.root)
    cfg = CutoutConfig(max_workers=1)
    res.update(pixel=pixel, n=len(df), tiles=df["coadd_id"].nunique())

    t_batch, stamps = _best(lambda: cut_sources(df, archive, cfg), args.repeats)
    res["batched_per_s"] = len(df) / t_batch

    sample = df.sample(min(args.per_source, len(df)), random_state=0).reset_index(drop=True)
    t_naive, naive = _best(lambda: per_source(sample, archive, cfg.bands, cfg.size_px), 1)
    res["naive_per_s"] = len(sample) / t_naive
    res["batch_ratio"] = res["batched_per_s"] / res["naive_per_s"]
    ref = cut_sources(sample, archive, CutoutConfig(use_neighbours=False))
    same = ~np.isnan(naive).any(axis=(1, 2, 3))
    res["naive_agrees"] = bool(np.array_equal(naive[same], ref.stamps[same]))

    from iic_survey.stamps.rgb import RGBParams, make_rgb

    params = RGBParams()
    t_rgb, _ = _best(lambda: make_rgb(stamps.stamps, params), args.repeats)
    res["rgb_per_s"] = len(df) / t_rgb
    res["stage_per_s"] = len(df) / (t_batch + t_rgb)
    res["infer_per_s"], res["infer_note"] = inference_rate(args.batch, args.repeats)
    res["stage_ratio"] = res["stage_per_s"] / res["infer_per_s"]
    res["load_after"] = _load()
    return res


def report(res: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {res['nproc']} shared cores "
        f"({res['cpu']}), load average (1/5/15 min) {res['load_before']} before and "
        f"{res.get('load_after', '?')} after; Python {platform.python_version()}. One run, "
        "best of the repeats; both sides of each ratio measured in that run.",
        "",
        f"Data: synthetic sky, order-5 pixel {res['pixel']}: {res['n']} sources on "
        f"{res['tiles']} tiles, local disk; one thread (cutouts max_workers=1, BLAS and torch "
        "limited to 1 thread).",
        "",
        "| measure | rate (sources/s) | ratio | goal |",
        "| --- | ---: | ---: | ---: |",
        f"| cutouts, tile-batched (`cut_sources`) | {res['batched_per_s']:,.0f} | | |",
        f"| cutouts, open tile + section per source | {res['naive_per_s']:,.1f} | "
        f"**{res['batch_ratio']:,.0f}x** | >= 50x |",
    ]
    if "stage_per_s" in res:
        lines += [
            f"| RGB (`make_rgb`) alone | {res['rgb_per_s']:,.0f} | | |",
            f"| cutouts + RGB, one core | {res['stage_per_s']:,.0f} | | |",
            f"| IICnet inference, 1 torch thread, batch 256 ({res['infer_note']}) | "
            f"{res['infer_per_s']:,.1f} | **{res['stage_ratio']:,.1f}x** | >= 5x |",
        ]
    lines += [
        "",
        f"Per-source stamps equal the batched ones: {res['naive_agrees']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sky", default=os.path.join(tempfile.gettempdir(), "iic_bench_sky"))
    parser.add_argument("--n-sources", type=int, default=10_000)
    parser.add_argument("--per-source", type=int, default=300, help="sources timed the naive way")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:  # one core: BLAS (the RGB resize) single-threaded too; comes with scikit-learn
        from threadpoolctl import threadpool_limits

        limit: Any = threadpool_limits(limits=1)
    except ImportError:
        limit = contextlib.nullcontext()
    with limit:
        text = report(run(args))
    sys.stdout.write(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
