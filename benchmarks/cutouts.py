"""Benchmark of the cutout stage: tile-batched vs per-source reads, and vs CPU inference.

Two ratios, each measured within one run on the same machine and data:

1. **Batching.** The same sources (``--per-source`` of the fullest order-5 pixel of a
   synthetic sky, sorted by tile as the pipeline's chunks are) are cut with
   :func:`iic_survey.stamps.cutter.cut_sources` (each tile and band read once) and the naive
   way: open the tile and read a 37x37 ``.section`` per source and band, the tile's WCS parsed
   once per tile and band (not per source), stamps past an edge padded with NaN as the cutter
   does. One configuration for both (``use_neighbours=False``: the naive way cannot search
   neighbour tiles); both timed the same way, best of ``--repeats``; the stamps compared all of
   them, NaN-aware (``np.array_equal(equal_nan=True)``). Goal: >= 50x.
2. **Headroom over inference.** Cutouts (the pipeline's default configuration) +
   :func:`iic_survey.stamps.rgb.make_rgb` on one core, against IICnet's CPU inference at the
   pipeline's own settings: the inference actor's route (:func:`~iic_survey.model.network.
   optimize_for_inference`, :class:`~iic_survey.model.inference.Predictor`, fp32) with its CPU
   forward batch (:data:`iic_survey.survey.config.CPU_MODEL_BATCH`) and one torch thread, on
   the same number of images. Goal: >= 5x, so that cutting never limits a CPU run.

Run from the repository root::

    .venv/bin/python -m benchmarks.cutouts                 # prints the results
    .venv/bin/python -m benchmarks.cutouts --write-results # also updates benchmarks/RESULTS.md

The sky is written once (``--sky``, default ``<home>/benchmarks/sky_cutouts``) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import common
from benchmarks.common import cpu_name, load
from benchmarks.results import write_section

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Cutouts (benchmarks/cutouts.py)"
logger = logging.getLogger(__name__)


def _best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Fastest wall time of ``repeats`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


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
    """The naive way: for every source and band, open its tile and read one small section.

    Each tile's WCS is parsed once per tile and band (the first time it is opened), not once
    per source; a stamp past the image edge holds what is on the image and NaN elsewhere.
    """
    from iic_survey.inputs.archive import tile_geometry

    h = size // 2
    geometry: dict[tuple[str, int], Any] = {}
    out = np.full((len(df), len(bands), size, size), np.nan, dtype=np.float32)
    for i, row in enumerate(df.itertuples(index=False)):
        for b, band in enumerate(bands):
            with archive.open_tile(row.coadd_id, band) as hdu:
                key = (row.coadd_id, band)
                if key not in geometry:
                    geometry[key] = tile_geometry(hdu.header)
                geom = geometry[key]
                x, y = geom.wcs.world_to_pixel_values(row.ra, row.dec)
                ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
                ny, nx = geom.shape
                y0, y1 = max(iy - h, 0), min(iy + h + 1, ny)
                x0, x1 = max(ix - h, 0), min(ix + h + 1, nx)
                if y0 < y1 and x0 < x1:
                    out[i, b, y0 - (iy - h) : y1 - (iy - h), x0 - (ix - h) : x1 - (ix - h)] = (
                        hdu.section[y0:y1, x0:x1]
                    )
    return out


def inference_rate(n: int, repeats: int) -> tuple[float, int, str]:
    """IICnet CPU images/s the way the inference actor runs it: (rate, batch, note).

    :func:`optimize_for_inference` (BN folded, channels-last) and a :class:`Predictor` with
    the pipeline's CPU forward batch, fp32, one torch thread, on ``n`` images.
    """
    import torch

    from iic_survey.model.config import ModelConfig
    from iic_survey.model.inference import Predictor
    from iic_survey.model.network import build_model, optimize_for_inference
    from iic_survey.survey.config import CPU_MODEL_BATCH

    torch.set_num_threads(1)
    cfg = ModelConfig(arch="iicnet")
    model = optimize_for_inference(build_model(cfg, seed=0).eval())
    predictor = Predictor(model, torch.device("cpu"), None, CPU_MODEL_BATCH)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(n, 3, 80, 80)).astype(np.float32)
    features = rng.normal(size=(n, cfg.n_features)).astype(np.float32)
    predictor(images[:CPU_MODEL_BATCH], features[:CPU_MODEL_BATCH])  # warm-up
    dt, _ = _best(lambda: predictor(images, features), repeats)
    note = f"Predictor, fp32, BN folded, channels-last, torch {torch.__version__}"
    return n / dt, CPU_MODEL_BATCH, note


def run(args: argparse.Namespace) -> dict[str, Any]:
    from iic_survey.inputs.archive import TileArchive
    from iic_survey.stamps.cutouts import CutoutConfig
    from iic_survey.stamps.cutter import cut_sources

    res: dict[str, Any] = {
        "load_before": load(),
        "cpu": cpu_name(),
    }
    res["nproc"] = os.cpu_count()
    manifest = common.sky(args.sky, args.n_sources)
    pixel, df = _fullest_pixel(manifest.catalog_url)
    archive = TileArchive.from_spec(manifest.root)
    cfg = CutoutConfig(max_workers=1)
    res.update(pixel=pixel, n=len(df), tiles=df["coadd_id"].nunique())

    # 1. batching: the same sources, one configuration, both sides best of the repeats
    n_same = len(df) if args.per_source <= 0 else min(args.per_source, len(df))
    sample = df.sample(n_same, random_state=0).sort_values("coadd_id", kind="stable")
    sample = sample.reset_index(drop=True)
    same_cfg = CutoutConfig(max_workers=1, use_neighbours=False)
    t_same, batched = _best(lambda: cut_sources(sample, archive, same_cfg), args.repeats)
    t_naive, naive = _best(
        lambda: per_source(sample, archive, same_cfg.bands, same_cfg.size_px), args.repeats
    )
    res.update(n_same=n_same, repeats=args.repeats)
    res["batched_per_s"] = n_same / t_same
    res["naive_per_s"] = n_same / t_naive
    res["batch_ratio"] = t_naive / t_same
    res["naive_agrees"] = bool(np.array_equal(naive, batched.stamps, equal_nan=True))
    res["stamps_with_nan"] = int(np.isnan(batched.stamps).any(axis=(1, 2, 3)).sum())

    # 2. headroom: the whole pixel with the pipeline's cutout configuration, then RGB
    t_batch, stamps = _best(lambda: cut_sources(df, archive, cfg), args.repeats)
    res["pixel_cut_per_s"] = len(df) / t_batch
    from iic_survey.stamps.rgb import RGBParams, make_rgb

    params = RGBParams()
    t_rgb, _ = _best(lambda: make_rgb(stamps.stamps, params), args.repeats)
    res["rgb_per_s"] = len(df) / t_rgb
    res["stage_per_s"] = len(df) / (t_batch + t_rgb)
    rate, batch, note = inference_rate(len(df), args.repeats)
    res.update(infer_per_s=rate, infer_batch=batch, infer_note=note)
    res["stage_ratio"] = res["stage_per_s"] / res["infer_per_s"]
    res["load_after"] = load()
    return res


def report(res: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {res['nproc']} shared cores "
        f"({res['cpu']}), load average (1/5/15 min) {res['load_before']} before and "
        f"{res.get('load_after', '?')} after; Python {platform.python_version()}. One run; "
        f"every time is the best of {res['repeats']} and both sides of each ratio were "
        "measured in that run.",
        "",
        f"Data: synthetic sky, order-5 pixel {res['pixel']}: {res['n']} sources on "
        f"{res['tiles']} tiles, local disk; one thread (cutouts max_workers=1, BLAS and torch "
        "limited to 1 thread).",
        "",
        "| measure | rate (sources/s) | ratio | goal |",
        "| --- | ---: | ---: | ---: |",
        f"| cutouts, tile-batched (`cut_sources`), {res['n_same']} sources, no neighbour "
        f"search | {res['batched_per_s']:,.0f} | | |",
        f"| cutouts, the same sources: open tile + section per source and band (WCS parsed "
        f"once per tile) | {res['naive_per_s']:,.1f} | **{res['batch_ratio']:,.0f}x** | "
        ">= 50x |",
        f"| cutouts, whole pixel, pipeline configuration | {res['pixel_cut_per_s']:,.0f} | | |",
        f"| RGB (`make_rgb`) alone | {res['rgb_per_s']:,.0f} | | |",
        f"| cutouts + RGB, one core | {res['stage_per_s']:,.0f} | | |",
        f"| IICnet inference as the actor runs it: 1 torch thread, batch {res['infer_batch']} "
        f"(`CPU_MODEL_BATCH`; {res['infer_note']}) | {res['infer_per_s']:,.1f} | "
        f"**{res['stage_ratio']:,.1f}x** | >= 5x |",
        "",
        f"Per-source and batched stamps are equal, all {res['n_same']} x 3 bands compared "
        f"(NaN-aware; {res['stamps_with_nan']} stamps reach past a tile edge): "
        f"{res['naive_agrees']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sky", default=str(common.workdir("sky_cutouts")), help="kept between runs"
    )
    parser.add_argument("--n-sources", type=int, default=10_000)
    parser.add_argument(
        "--per-source", type=int, default=0, help="sources cut both ways (0: the whole pixel)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="each time is the best of these")
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
