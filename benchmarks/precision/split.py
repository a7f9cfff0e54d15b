"""Precision end to end and the stamp split: the sky pipeline in bf16 vs fp32, in one run.

Measured on one local Ray head with the paper-sized IICnet (untrained: the speed is the same):
end-to-end runs in fp32 and bf16 over the same pixels, alternating, with the classes' agreement
between them (and, with ``--agreement-model``, a trained model's); and the stamp split's cost on
one core: the CPU stage cutting stamps only (``StampCutter``) against cutting and RGB
(``StampMaker``), inference with RGB in each precision.

    .venv/bin/python -m benchmarks.precision split                 # prints the results
    .venv/bin/python -m benchmarks.precision split --write-results # also benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd

from benchmarks import common
from benchmarks.common import cpu_name, load, sky_dir
from benchmarks.results import write_section
from iic_survey.testing.ray_head import local_ray

logger = logging.getLogger(__name__)

SECTION = "## Precision and the stamp split (benchmarks/precision split)"


def _interleaved(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    """Best CPU seconds of each function over ``rounds`` alternating rounds (one thread)."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            c0 = time.process_time()
            fn()
            best[name] = min(best[name], time.process_time() - c0)
    return best


def split_costs(manifest: Any, model_dir: str, pixel: int, rounds: int) -> dict[str, Any]:
    """CPU seconds per source, side by side in alternating rounds, one thread: the CPU stage
    before (cut + RGB, ``StampMaker``) and after the split (cut only, ``StampCutter``), and
    inference in fp32 and bf16 (``Classify`` on the cut stamps, RGB included)."""
    import torch

    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.stamps.cutouts import CutoutConfig
    from iic_survey.stamps.maker import StampMaker
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey.classify import Classify
    from iic_survey.survey.config import CPU_MODEL_BATCH

    torch.set_num_threads(1)
    rows = open_catalog(manifest.catalog_url).read_pixel(pixel, 5, columns=PIPELINE_COLUMNS)
    rows = rows.sort_values(["coadd_id", "wy", "cntr"], kind="stable").head(2048)
    rows["_pixel"], rows["_row"], rows["_chunk"] = pixel, range(len(rows)), 0
    one = CutoutConfig(max_workers=1)
    maker = StampMaker.from_spec(manifest.images_url, cutout=one)
    cutter = StampCutter.from_spec(manifest.images_url, cutout=one)
    stage = _interleaved({"cut_rgb": lambda: maker(rows), "cut": lambda: cutter(rows)}, rounds)
    cut = cutter(rows)
    sample = {k: v[:256] for k, v in cut.items()}
    actors = {p: Classify(model_dir, "cpu", CPU_MODEL_BATCH, None, 1, p) for p in ("fp32", "bf16")}
    infer = _interleaved({p: (lambda a=a: a(sample)) for p, a in actors.items()}, rounds)
    n = len(rows)
    return {
        "split_rows": n,
        "cut_rgb_s": stage["cut_rgb"] / n,
        "cut_s": stage["cut"] / n,
        "infer_fp32_s": infer["fp32"] / 256,
        "infer_bf16_s": infer["bf16"] / 256,
    }


def _agreement(a: str, b: str) -> tuple[float, float, int]:
    """(class agreement, largest probability difference, rows compared) of two catalogs."""
    from iic_survey.core.constants import CLASSES

    cols = ["cntr", "class", *(f"p_{c}" for c in CLASSES)]
    # The catalog's layout is the output package's; read every parquet file under it.
    frames = [
        pd.concat(
            pd.read_parquet(f, columns=cols)
            for f in sorted(pathlib.Path(x).rglob("Npix=*.parquet"))
        )
        .drop_duplicates("cntr")
        .set_index("cntr")
        .sort_index()
        for x in (a, b)
    ]
    fa, fb = frames
    both = fa.add_suffix("_a").join(fb.add_suffix("_b"), how="inner")
    ok = both["class_a"].notna() & both["class_b"].notna()
    agree = float((both.loc[ok, "class_a"] == both.loc[ok, "class_b"]).mean())
    diff = max(float((both[f"p_{c}_a"] - both[f"p_{c}_b"]).abs().max()) for c in CLASSES)
    return agree, diff, int(ok.sum())


def model_agreement(manifest: Any, model_dir: str, pixels: list[int]) -> dict[str, Any]:
    """bf16 vs fp32 classes and probabilities of one model over every row of ``pixels``,
    through the inference actor's own code (``Classify`` on the cut stamps, in this process)."""
    import torch

    from iic_survey.core.flags import UNCLASSIFIABLE
    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.model.precision import compare
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey.classify import Classify
    from iic_survey.survey.config import CPU_MODEL_BATCH

    torch.set_num_threads(1)
    cat = open_catalog(manifest.catalog_url)
    cutter = StampCutter.from_spec(manifest.images_url)
    actors = {p: Classify(model_dir, "cpu", CPU_MODEL_BATCH, None, 1, p) for p in ("fp32", "bf16")}
    logits: dict[str, list[np.ndarray]] = {"fp32": [], "bf16": []}
    for pixel in pixels:
        cut = cutter(cat.read_pixel(pixel, 5, columns=PIPELINE_COLUMNS))
        ok = (np.asarray(cut["quality_flags"]) & int(UNCLASSIFIABLE)) == 0
        for p, actor in actors.items():
            logits[p].append(actor.logits(cut)[0][ok])
    a, b = (np.concatenate(logits[p]) for p in ("fp32", "bf16"))
    temperature = actors["fp32"].scoring.calibration.temperature
    agree, diff = compare(a, b, temperature)
    return {"agree_model": model_dir, "agree_n": len(a), "agree": agree, "agree_diff": diff}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """End-to-end runs in fp32 and bf16 over the same pixels, in one session, alternating."""
    from iic_survey.inputs.catalog import open_catalog

    res: dict[str, Any] = {"load_before": load(), "nproc": os.cpu_count(), "cpu": cpu_name()}
    sky_path = args.sky or sky_dir(args.n_sources)
    manifest = common.sky(sky_path, args.n_sources)
    work = pathlib.Path(tempfile.mkdtemp(prefix="iic_bench_precision_"))
    model_dir = common.model_dir(work / "model", manifest)
    cat = open_catalog(manifest.catalog_url)
    counts = {int(p): cat.count(int(p), 5) for p in manifest.pixels}
    pixels = sorted(counts, key=lambda p: -counts[p])[: args.e2e_pixels]
    res.update(n_sources=args.n_sources, pixels=len(pixels), rows=sum(counts[p] for p in pixels))
    logger.info("stamp split and inference costs, one core")
    res.update(split_costs(manifest, model_dir, pixels[0], args.rounds))
    if args.agreement_model:
        logger.info("class agreement of %s, bf16 vs fp32", args.agreement_model)
        res.update(model_agreement(manifest, args.agreement_model, pixels))
    try:
        res.update(_end_to_end(args, manifest, model_dir, pixels, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = load()
    return res


def _end_to_end(
    args: argparse.Namespace, manifest: Any, model_dir: str, pixels: list[int], work: pathlib.Path
) -> dict[str, Any]:
    """bf16 and fp32 runs over ``pixels``, alternating, after an untimed warm-up run."""
    from iic_survey.survey.config import PipelineConfig
    from iic_survey.survey.run import run_pipeline

    res: dict[str, Any] = {}
    with local_ray(num_cpus=args.num_cpus):
        rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
        runs: dict[str, Any] = {}
        warm = PipelineConfig.create(
            catalog=manifest.catalog_url,
            images=manifest.images_url,
            model_dir=model_dir,
            output=str(work / "warmup"),
            pixels=(pixels[-1],),
            inference_actors=args.actors,
            precision="bf16",
        )
        logger.info("warm-up run (1 pixel, not timed)")
        run_pipeline(warm)
        order = ["bf16", "fp32", "bf16", "fp32"][: 2 * args.e2e_repeats]
        for i, prec in enumerate(order):
            out = str(work / f"{prec}{i}")
            cfg = PipelineConfig.create(
                catalog=manifest.catalog_url,
                images=manifest.images_url,
                model_dir=model_dir,
                output=out,
                pixels=tuple(pixels),
                chunk_size=args.chunk_size,
                inference_actors=args.actors,
                progress_interval_s=10.0,
                precision=prec,
            )
            logger.info("end to end, %s (%d/%d)", prec, i + 1, len(order))
            rates[prec].append(run_pipeline(cfg).sources_per_s)
            record = json.loads((pathlib.Path(out) / "_run.json").read_text())
            runs[prec] = (out, record["precision_runs"][-1])
        res["rates"] = rates
        res["gate"] = runs["bf16"][1]
        res["agreement"], res["max_prob_diff"], res["compared"] = _agreement(
            runs["fp32"][0], runs["bf16"][0]
        )
    return res


def _agreement_lines(res: dict[str, Any]) -> list[str]:
    if "agree" not in res:
        return []
    return [
        f"**Class agreement of a trained model** ({res['agree_model']}, `--agreement-model`), "
        f"bf16 vs fp32 through `Classify` over the same {res['agree_n']:,} classifiable "
        f"sources: **{res['agree']:.2%}** (goal >= 99.5 %), largest calibrated probability "
        f"difference {res['agree_diff']:.2g}.",
        "",
    ]


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    """The RESULTS.md section."""
    from iic_survey.model.precision import cpu_has_native_bf16

    fp32, bf16 = (float(np.mean(res["rates"][p])) for p in ("fp32", "bf16"))
    split, infer = res["cut_rgb_s"] / res["cut_s"], res["infer_fp32_s"] / res["infer_bf16_s"]
    each = {p: ", ".join(f"{r:,.1f}" for r in res["rates"][p]) for p in ("fp32", "bf16")}
    us = 1e6
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {res['nproc']} shared cores "
        f"({res['cpu']}; native bf16: {cpu_has_native_bf16()}), load average (1/5/15 min) "
        f"{res['load_before']} before and {res['load_after']} after; one local Ray head with "
        f"{args.num_cpus} logical CPUs, {args.actors} inference actors x 1 torch thread. "
        "One run: every number below comes from it.",
        "",
        f"Data: the synthetic sky of {res['n_sources']:,} sources; the {res['pixels']} biggest "
        f"order-5 pixels ({res['rows']:,} sources) end to end, after a one-pixel warm-up run. "
        "Speed model: the paper-sized IICnet, untrained (the Pipeline section's benchmark model; "
        "same speed as a trained one). It calls nearly every source a star, so the agreement of "
        "its two catalogs below is weak evidence; the trained model's agreement follows.",
        "",
        "**End to end** (`run_pipeline`, same pixels, runs alternating "
        f"{' -> '.join(['bf16', 'fp32', 'bf16', 'fp32'][: 2 * args.e2e_repeats])}):",
        "",
        "| measure | value | goal |",
        "| --- | ---: | ---: |",
        f"| fp32, sources/s (each run) | {each['fp32']} | |",
        f"| bf16, sources/s (each run) | {each['bf16']} | |",
        f"| bf16 / fp32 (means) | **{bf16 / fp32:.2f}x** | >= 1.7x |",
        f"| class agreement bf16 vs fp32 ({res['compared']:,} classified sources) "
        f"| **{res['agreement']:.2%}** | >= 99.5 % |",
        f"| largest probability difference | {res['max_prob_diff']:.2g} | |",
        f"| the run's gate (first chunk) | {res['gate']['used']}: {res['gate']['reason']} | |",
        "",
        *_agreement_lines(res),
        f"**The stamp split**, CPU seconds per source on one thread, best of {args.rounds} "
        f"alternating rounds over the same {res['split_rows']:,} rows of one pixel:",
        "",
        "| stage | us per source | sources/s per core |",
        "| --- | ---: | ---: |",
        f"| CPU stage before: cutouts + RGB (`StampMaker`) | {res['cut_rgb_s'] * us:,.0f} "
        f"| {1 / res['cut_rgb_s']:,.0f} |",
        f"| CPU stage after: cutouts only (`StampCutter`) | {res['cut_s'] * us:,.0f} "
        f"| {1 / res['cut_s']:,.0f} |",
        f"| ratio (after / before, sources/s per core) | **{split:.2f}x** | >= 3x |",
        f"| inference incl. RGB, fp32 (`Classify`, 1 thread) | {res['infer_fp32_s'] * us:,.0f} "
        f"| {1 / res['infer_fp32_s']:,.0f} |",
        f"| inference incl. RGB, bf16 | {res['infer_bf16_s'] * us:,.0f} "
        f"| {1 / res['infer_bf16_s']:,.0f} |",
        f"| ratio bf16 / fp32 (inference alone) | **{infer:.2f}x** | |",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print, optionally write RESULTS.md."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.precision split", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--sky", help="where the benchmark's sky is kept (default: <home>/benchmarks/sky_<n>)"
    )
    parser.add_argument("--n-sources", type=int, default=30_000)
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the Ray head")
    parser.add_argument("--actors", type=int, default=2, help="inference actors")
    parser.add_argument("--chunk-size", type=int, help="rows per chunk (default: as the pipeline)")
    parser.add_argument("--e2e-pixels", type=int, default=8, help="pixels per run (reduce)")
    parser.add_argument("--e2e-repeats", type=int, default=2, choices=(1, 2), help="runs each")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the one-core costs")
    parser.add_argument(
        "--agreement-model",
        help="a trained model directory for the class agreement (e.g. the demo's); the speed "
        "runs keep the paper-sized model",
    )
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    text = report(run(args), args)
    sys.stdout.write(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0
