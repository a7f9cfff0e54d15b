"""The feeding ceiling: the whole job with a model that costs nothing, beside its CPU stages alone.

Measured in one run, on one local Ray head over a synthetic sky (issue 25, items 1 and 2):

1. **Stages alone**, in this process, one thread, over the same rows the jobs classify: cutting
   (:class:`~iic_survey.stamps.split.StampCutter`) + RGB (:func:`~iic_survey.stamps.rgb.make_rgb`),
   and the inference actor's own work (:class:`~iic_survey.survey.classify.Classify`: RGB, the
   model, the result rows) for the null model and for the paper-sized one.
2. **The whole job** (:func:`~iic_survey.survey.run.run_pipeline`: read, cut, classify, stage,
   commit, finalize, margin, selection) with the *null model* (:data:`NULL_MODEL`, through the
   same actor code) and with the paper-sized IICnet (untrained: the same speed), and the same
   job over a third of the pixels: the difference is the cost per source beyond the fixed ones.

The machine is shared, so each rate is counted two ways: per **CPU-second** (the CPU time of
every process of the Ray head and of this driver, sampled; a load-independent measure of what a
source costs, equal to sources/s per core when the cores are kept busy) and per **wall second**
divided by the head's CPUs (what a run on an idle machine of that size would see at best). The
fixed start (plan, actors) and finish (finalize, margin, selection) are timed apart from the
stream, from the job's own log lines. Ratios are of measures taken in the same run.

``--gpus N`` runs the jobs on an in-process head with N GPUs, one inference actor on each (the
actors alone are then timed on the GPU, in wall seconds).

Run from the repository root::

    .venv/bin/python -m benchmarks.feeding                  # prints the results (~12 min, 2 cores)
    .venv/bin/python -m benchmarks.feeding --write-results  # also updates benchmarks/RESULTS.md
    .venv/bin/python -m benchmarks.feeding --null-only      # the feeding ceiling alone (~4 min)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pathlib
import platform
import shutil
import sys
import tempfile
import threading
import time
from typing import Any, ClassVar

import pandas as pd

from benchmarks import common
from benchmarks.common import MemorySampler, cpu_name, load, process_label
from benchmarks.results import write_section
from iic_survey.testing.ray_head import start_local_ray, stop_local_ray

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Feeding ceiling (benchmarks/feeding.py)"
"""The section of the default layout: 2 CPU actors on a 4-CPU head."""
SECTION_4_ACTORS = "## Feeding ceiling, 4 CPU actors (benchmarks/feeding.py --actors 4)"
"""The section of the layout the cluster docs recommend: 4 CPU actors (``--num-cpus 6``)."""
SECTION_GPU = "## Feeding ceiling, GPU actors (benchmarks/feeding.py --gpus)"
"""The section of a run with GPU actors (``benchmarks/gpu_check.sh``)."""
logger = logging.getLogger(__name__)
NULL_MODEL = {"arch": "colour", "colour_hidden": 4, "head_dim": 4}
"""The null model: the colour baseline, 4 units wide. It goes through the same actor code (the
RGB is made, the forward pass runs, the rows are scored) but costs ~nothing; an IICnet of width
4 does not (its 80x80 convolutions cost about three times cutting + RGB, measured here)."""


def model_dir(path: pathlib.Path, config: dict[str, Any] | None) -> str:
    """An untrained model directory: the paper-sized IICnet, or ``config`` (the null model)."""
    from iic_survey.model.config import ModelConfig
    from iic_survey.model.directory import save_model_dir
    from iic_survey.model.network import build_model
    from iic_survey.stamps.rgb import RGBParams

    if not (path / "model.json").is_file():
        cfg = ModelConfig(**(config or {}))
        extra = {"rgb": RGBParams().to_dict(), "temperature": 1.0, "meta": {"note": "bench"}}
        save_model_dir(path, build_model(cfg, seed=0).eval(), cfg, extra)
    return str(path)


class CpuSampler:
    """CPU seconds (user + system) used by process trees and this process while it runs.

    Samples every ``interval_s``: a process seen for the first time during the run counts from
    zero, one alive at the start from its value then; a process that exits between two samples
    loses at most one interval of its time (Ray's workers live through the run).
    """

    def __init__(self, roots: tuple[int, ...], interval_s: float = 0.5) -> None:
        self.roots, self.interval_s = roots, interval_s
        self.start: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.names: dict[int, str] = {}
        self._n = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> dict[int, float]:
        import psutil

        procs = [psutil.Process()]
        for pid in self.roots:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        out = {}
        self._n += 1
        for p in procs:
            try:
                t = p.cpu_times()
                out[p.pid] = t.user + t.system
                # a worker's title changes (ray::IDLE -> the task it runs): the last one read
                # counts (read every few samples: the sampler's own CPU counts as the driver's)
                if p.pid not in self.names or self._n % 8 == 0:
                    self.names[p.pid] = process_label(p.cmdline(), p.pid == os.getpid())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.last.update(self._sample())

    @property
    def seconds(self) -> float:
        return sum(t - self.start.get(pid, 0.0) for pid, t in self.last.items())

    def by_process(self) -> dict[str, float]:
        """CPU seconds per kind of process (driver, raylet, a stage's workers, ...)."""
        out: dict[str, float] = {}
        for pid, t in self.last.items():
            name = self.names.get(pid, "?")
            out[name] = out.get(name, 0.0) + t - self.start.get(pid, 0.0)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def __enter__(self) -> CpuSampler:
        self.start = self._sample()
        self.last = dict(self.start)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.last.update(self._sample())


class _Marks(logging.Handler):
    """(wall, CPU) times of the job's log lines that bound its stream (inference, finalize)."""

    KEYS: ClassVar[dict[str, str]] = {"inference:": "stream_start", "finalized": "finalized"}

    def __init__(self, cpu: CpuSampler) -> None:
        super().__init__(logging.INFO)
        self.cpu = cpu
        self.times: dict[str, tuple[float, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        msg = str(record.msg)
        for key, name in self.KEYS.items():
            if msg.startswith(key):
                self.times.setdefault(name, (time.monotonic(), self.cpu.seconds))


def _chunks(manifest: Any, pixels: list[int], chunk: int) -> list[pd.DataFrame]:
    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.survey.stages import PixelReader

    cat = open_catalog(manifest.catalog_url)
    reader = PixelReader(cat, PIPELINE_COLUMNS, 5, chunk)
    out: list[pd.DataFrame] = []
    for p in pixels:
        unit = {"read_order": 5, "read_pixel": p, "pixels": [p], "counts": [cat.count(p, 5)]}
        out += list(reader(pd.DataFrame({"unit": [json.dumps(unit)]})))
    return out


def stages_alone(
    manifest: Any, models: dict[str, str], pixels: list[int], chunk: int, device: str = "cpu"
) -> dict:
    """CPU seconds per source, one thread in this process: cut + RGB, and each model's actor
    (on ``device``; on a GPU its wall seconds, synchronised by the copy back of each chunk)."""
    import torch

    from iic_survey.core.heap import retain_freed_memory
    from iic_survey.stamps.cutouts import CutoutConfig
    from iic_survey.stamps.rgb import RGBParams, make_rgb
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey.classify import Classify
    from iic_survey.survey.config import CPU_MODEL_BATCH

    torch.set_num_threads(1)
    # the C heap as the actors keep it (core.heap): else this process's glibc thresholds,
    # settling at random, make the stages alone up to ~20 % slower or faster than the actors'
    retain_freed_memory()
    chunks = _chunks(manifest, pixels, chunk)
    n = sum(len(c) for c in chunks)
    cutter = StampCutter.from_spec(manifest.images_url, cutout=CutoutConfig(max_workers=1))
    t0 = time.process_time()
    cut = [cutter(c) for c in chunks]
    res: dict[str, Any] = {"alone_n": n, "cut_s": (time.process_time() - t0) / n}
    t0 = time.process_time()
    for c in cut:
        make_rgb(c["stamp"], RGBParams())
    res["rgb_s"] = (time.process_time() - t0) / n
    res["cut_rgb_s"] = res["cut_s"] + res["rgb_s"]
    for name, path in models.items():
        batch = CPU_MODEL_BATCH if device == "cpu" else None
        actor = Classify(path, device, batch, None, threads=1, precision="fp32")
        actor({k: v[:8] for k, v in cut[0].items()})  # warm-up
        clock = time.process_time if device == "cpu" else time.perf_counter
        t0 = clock()
        for c in cut:
            actor(c)
        res[f"actor_{name}_s"] = (clock() - t0) / n
    return res


def job(manifest: Any, model: str, out: str, args: argparse.Namespace, head_pid: int) -> dict:
    """One whole job: wall and CPU seconds, split into fixed start, stream and fixed finish.

    ``args.pixels`` (None: all) selects the sky's pixels it classifies.
    """
    from iic_survey.survey.config import PipelineConfig
    from iic_survey.survey.run import run_pipeline

    cfg = PipelineConfig.create(
        catalog=manifest.catalog_url,
        images=manifest.images_url,
        model_dir=model,
        output=out,
        pixels=args.pixels,
        chunk_size=args.chunk_size,
        inference_actors=args.gpus or args.actors,
        num_gpus_per_actor=1.0 if args.gpus else None,
        cpus_per_actor=1.0,
        progress_interval_s=30.0,
        precision="fp32",
        overwrite=True,
    )
    cpu = CpuSampler((head_pid,))
    marks = _Marks(cpu)
    logging.getLogger("iic_survey").addHandler(marks)
    try:
        t0 = time.monotonic()
        with cpu, MemorySampler(head_pid, interval_s=2.0) as mem:
            summary = run_pipeline(cfg)
        wall = time.monotonic() - t0
    finally:
        logging.getLogger("iic_survey").removeHandler(marks)
    logger.info("CPU seconds by process: %s", {k: round(v, 1) for k, v in cpu.by_process().items()})
    start = marks.times.get("stream_start", (t0, 0.0))
    end = marks.times.get("finalized", (t0 + wall, cpu.seconds))
    return {
        "rows": summary.rows,
        "wall_s": wall,
        "cpu_s": cpu.seconds,
        "start_s": start[0] - t0,
        # the stream: read, cut, classify, stage, commit; and finalize's _metadata
        "stream_s": end[0] - start[0],
        "stream_cpu_s": end[1] - start[1],
        "finish_s": t0 + wall - end[0],  # margin, selection, summary
        "by_process": cpu.by_process(),
        "processes": len(cpu.last),  # every process the head and driver had during the job
        "peak_pss_mb": mem.peak_pss / 2**20,
    }


def idle_cpu(head_pid: int, seconds: float) -> float:
    """CPU seconds per wall second the Ray head and this driver burn with no job running."""
    with CpuSampler((head_pid,)) as cpu:
        time.sleep(seconds)
    logger.info("idle CPU by process: %s", {k: round(v, 2) for k, v in cpu.by_process().items()})
    return cpu.seconds / seconds


def _counts(manifest: Any, pixels: list[int]) -> dict[int, int]:
    from iic_survey.inputs.catalog import open_catalog

    cat = open_catalog(manifest.catalog_url)
    return {p: cat.count(p, 5) for p in pixels}


def small_args(args: argparse.Namespace, pixels: list[int]) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "pixels": tuple(pixels)})


def run(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    res: dict[str, Any] = {"load_before": load(), "nproc": os.cpu_count()}
    sky_path = args.sky or common.sky_dir(args.n_sources)
    # the demo's four fields, widened past 40,000 sources to keep a WISE-like density
    size = round(max(0.4, (args.n_sources / 4 / 25_000) ** 0.5), 2)
    manifest = common.sky(sky_path, args.n_sources, field_size_deg=size)
    work = pathlib.Path(tempfile.mkdtemp(prefix="iic_bench_feeding_"))
    models = {"null": model_dir(work / "null", NULL_MODEL)}
    if not args.null_only:
        models["paper"] = model_dir(work / "paper", None)
    pixels = [int(p) for p in manifest.pixels]
    counts = _counts(manifest, pixels)
    res.update(tiles=len(manifest.tiles), pixels=len(pixels), actors=args.actors)
    device = res["device"] = "cuda" if args.gpus else "cpu"
    res.update(stages_alone(manifest, models, pixels[: args.alone_pixels], 1024, device))
    # On a GPU machine: an in-process head with its GPUs (the test fixture's head has none);
    # its processes are this driver's children, which the CPU sampler follows.
    head = None if args.gpus else start_local_ray(num_cpus=args.num_cpus)
    try:
        if head is None:
            ray.init(num_cpus=args.num_cpus, num_gpus=args.gpus, log_to_driver=False)
        else:
            ray.init(address=head.gcs_address, log_to_driver=False)
        pid = head.process.pid if head is not None else os.getpid()
        res["idle_cpu_per_s"] = idle_cpu(pid, args.idle_s)
        small = sorted(pixels, key=lambda p: counts[p])[: max(1, len(pixels) // 3)]
        for name, path in models.items():
            # A job over a third of the pixels before and after the whole one(s): the first
            # starts this model's workers (a warm-up), the second is compared with the whole
            # job: their difference is the per-source cost without the fixed costs (worker and
            # actor starts, finalize, margin, selection).
            for phase in ("warm-up", *(f"{r + 1}/{args.repeats}" for r in range(args.repeats)),
                          "small"):  # fmt: skip
                logger.info("%s model, job %s", name, phase)
                whole = phase not in ("warm-up", "small")
                out = str(work / f"out_{name}_{phase.replace('/', '_')}")
                r = job(manifest, path, out, args if whole else small_args(args, small), pid)
                if whole:
                    res.setdefault(f"job_{name}", []).append(r)
                elif phase == "small":
                    res[f"small_{name}"] = r
    finally:
        ray.shutdown()
        if head is not None:
            stop_local_ray(head)
        shutil.rmtree(work, ignore_errors=True)
    res["load_after"] = load()
    return res


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the least CPU time per source (the least disturbed by the shared machine)."""
    return min(runs, key=lambda r: r["cpu_s"] / r["rows"])


def summarise(res: dict[str, Any], num_cpus: int) -> dict[str, float]:
    """The ratios the issue asks for, from one run's measures."""
    cores = min(num_cpus, res["nproc"])
    out: dict[str, float] = {"cut_rgb_per_cpu_s": 1 / res["cut_rgb_s"]}
    for name in ("null", "paper"):
        if f"job_{name}" not in res:
            continue
        j = _best(res[f"job_{name}"])
        out[f"{name}_per_cpu_s"] = j["rows"] / j["cpu_s"]
        out[f"{name}_stream_per_cpu_s"] = j["rows"] / j["stream_cpu_s"]
        out[f"{name}_per_core_wall"] = j["rows"] / j["wall_s"] / cores
        out[f"{name}_stream_per_core_wall"] = j["rows"] / j["stream_s"] / cores
        out[f"{name}_fixed_share"] = 1 - j["stream_s"] / j["wall_s"]
        out[f"{name}_actor_per_cpu_s"] = 1 / res[f"actor_{name}_s"]
        small = res[f"small_{name}"]
        extra = j["cpu_s"] - small["cpu_s"]
        # Below the noise of the fixed costs (a few CPU-s on a shared machine) the difference
        # says nothing: a bigger sky (--n-sources) resolves it.
        resolved = extra > 0.1 * small["cpu_s"]
        out[f"{name}_marginal_per_cpu_s"] = (
            (j["rows"] - small["rows"]) / extra if resolved else float("nan")
        )
        out[f"{name}_fixed_cpu_s"] = j["cpu_s"] - j["rows"] / out[f"{name}_marginal_per_cpu_s"]
    out["feeding_ratio"] = out["null_per_cpu_s"] / out["cut_rgb_per_cpu_s"]
    out["feeding_break_even"] = break_even(
        out["null_fixed_cpu_s"], out["null_marginal_per_cpu_s"], 0.7 * out["cut_rgb_per_cpu_s"]
    )
    out["feeding_stream_ratio"] = out["null_stream_per_cpu_s"] / out["cut_rgb_per_cpu_s"]
    out["feeding_marginal_ratio"] = out["null_marginal_per_cpu_s"] / out["cut_rgb_per_cpu_s"]
    if "paper_per_cpu_s" in out and res.get("device") == "cuda":
        # the actor alone was timed on the GPU in wall seconds: compare the job's wall rate
        j = _best(res["job_paper"])
        for key, seconds in (("e2e_ratio", j["wall_s"]), ("e2e_stream_ratio", j["stream_s"])):
            out[key] = j["rows"] / seconds * res["actor_paper_s"]
        out["e2e_marginal_ratio"] = float("nan")
    elif "paper_per_cpu_s" in out:
        out["e2e_ratio"] = out["paper_per_cpu_s"] / out["paper_actor_per_cpu_s"]
        out["e2e_stream_ratio"] = out["paper_stream_per_cpu_s"] / out["paper_actor_per_cpu_s"]
        out["e2e_marginal_ratio"] = out["paper_marginal_per_cpu_s"] / out["paper_actor_per_cpu_s"]
        out["e2e_break_even"] = break_even(
            out["paper_fixed_cpu_s"],
            out["paper_marginal_per_cpu_s"],
            0.85 * out["paper_actor_per_cpu_s"],
        )
    # What the CPUs of a GPU node do per source: on a CPU the null job's CPU less the actor's
    # own work (RGB and the forward pass move to the GPU there); with GPU actors, all of it.
    gpu = res.get("device") == "cuda"
    feed_s = 1 / out["null_marginal_per_cpu_s"] - (0.0 if gpu else res["actor_null_s"])
    out["feed_cpu_us"] = feed_s * 1e6
    out["cores_per_gpu"] = GPU_IMAGES_PER_S * feed_s
    return out


def break_even(fixed_cpu_s: float, marginal: float, target: float) -> float:
    """Sources from which a whole job, ``fixed_cpu_s`` of fixed costs plus ``marginal`` sources
    per CPU-second beyond them, reaches ``target`` sources per CPU-second: ``N / (N / marginal
    + fixed_cpu_s) >= target``; 0 when it does at any size, inf when at none (NaN unresolved)."""
    if not (math.isfinite(fixed_cpu_s) and math.isfinite(marginal)):
        return float("nan")
    if marginal <= target:
        return float("inf")
    return max(0.0, fixed_cpu_s / (1 / target - 1 / marginal))


GPU_IMAGES_PER_S = 50_000
"""The GPU rate the issue's projection asks about (images/s per GPU)."""


def report(res: dict[str, Any], args: argparse.Namespace) -> str:
    """The RESULTS.md section."""
    s = summarise(res, args.num_cpus)
    lines = [
        section(args) or "## Feeding ceiling, not written (benchmarks/feeding.py)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {res['nproc']} shared cores "
        f"({cpu_name()}), load average (1/5/15 min) {res['load_before']} before and "
        f"{res['load_after']} after; Python {platform.python_version()}; one local Ray head with "
        f"{args.num_cpus} logical CPUs, {_actors(args)}, fp32, "
        f"{args.repeats} job(s) per model (the least CPU per source kept). Sky: "
        f"{args.n_sources:,} sources, {res['pixels']} order-5 pixels, {res['tiles']} tiles.",
        "",
        "Per CPU-second: sources per second of CPU time summed over every Ray process and the "
        "driver (sampled), so the shared machine's load does not enter; it equals sources/s per "
        "core on cores the job keeps busy. Per core (wall): the job's rate over its wall time "
        "divided by the cores it had; under the load above it is a lower bound.",
        "",
        "| measure (same run) | sources per CPU-second | per core (wall) |",
        "| --- | ---: | ---: |",
        f"| cutting + RGB alone, one thread ({res['alone_n']:,} sources) "
        f"| {s['cut_rgb_per_cpu_s']:,.0f} | |",
        f"| ... of which cutting / RGB | {1 / res['cut_s']:,.0f} / {1 / res['rgb_s']:,.0f} | |",
        f"| null-model actor alone (RGB + a 4-unit colour MLP + result rows), one thread "
        f"| {s['null_actor_per_cpu_s']:,.0f} | |",
    ]
    if "paper_per_cpu_s" in s:
        lines.append(
            f"| paper-sized actor alone (RGB + IICnet + result rows), one thread "
            f"| {s['paper_actor_per_cpu_s']:,.0f} | |"
        )
    for name, label in (("null", "null model"), ("paper", "paper-sized model")):
        if f"{name}_per_cpu_s" not in s:
            continue
        lines += [
            f"| whole job, {label} | {s[f'{name}_per_cpu_s']:,.0f} "
            f"| {s[f'{name}_per_core_wall']:,.0f} |",
            f"| ... its stream alone (fixed start/finish: {s[f'{name}_fixed_share']:.0%} of the "
            f"wall time) | {s[f'{name}_stream_per_cpu_s']:,.0f} "
            f"| {s[f'{name}_stream_per_core_wall']:,.0f} |",
            f"| ... per source beyond the fixed costs (this job less one over a third of the "
            f"pixels; fixed: {s[f'{name}_fixed_cpu_s']:.0f} CPU-s) "
            f"| {s[f'{name}_marginal_per_cpu_s']:,.0f} | |",
        ]
    lines += [
        "",
        "| ratio (same run, per CPU-second) | whole job | stream only | beyond fixed costs "
        "| goal |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| feeding: null-model job / cutting + RGB alone | {s['feeding_ratio']:.2f} "
        f"| {s['feeding_stream_ratio']:.2f} | **{s['feeding_marginal_ratio']:.2f}** | >= 0.7 |",
    ]
    if "e2e_ratio" in s:
        lines.append(
            f"| end to end: paper-sized job / its actor alone | {s['e2e_ratio']:.2f} "
            f"| {s['e2e_stream_ratio']:.2f} | **{s['e2e_marginal_ratio']:.2f}** | >= 0.85 |"
        )
    sizes = [("feeding (0.7 of cutting + RGB alone, null model)", s["feeding_break_even"])]
    if "e2e_break_even" in s:
        sizes.append(("end to end (0.85 of the actor alone, paper-sized)", s["e2e_break_even"]))
    lines += ["", f"Whole job against its size: from the fixed costs and the rate beyond them "
              f"(N / (N / rate + fixed)), the size from which the whole job meets each goal; "
              f"this run's jobs had {_best(res['job_null'])['rows']:,} sources:", ""]  # fmt: skip
    lines += [f"- {what}: {_sources(n)}" for what, n in sizes]
    lines += ["", "Each job's phases (wall seconds), CPU seconds, processes and peak PSS summed "
              "over the head's processes and the driver:", ""]  # fmt: skip
    lines += ["| job | rows | start | stream (+ finalize) | finish | CPU s | processes "
              "| peak PSS (MB) |"]  # fmt: skip
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("null", "paper"):
        for label, j in [*((name, j) for j in res.get(f"job_{name}", [])),
                         (f"{name}, small", res.get(f"small_{name}"))]:  # fmt: skip
            if j is not None:
                lines.append(
                    f"| {label} | {j['rows']:,} | {j['start_s']:.1f} | {j['stream_s']:.1f} "
                    f"| {j['finish_s']:.1f} | {j['cpu_s']:.1f} | {j.get('processes', 0)} "
                    f"| {j.get('peak_pss_mb', 0):,.0f} |"
                )
    lines += ["", "Where the CPU went (whole job, CPU seconds by process kind; idle head: "
              f"{res['idle_cpu_per_s']:.2f} CPU-s per second):", ""]  # fmt: skip
    for name in ("null", "paper"):
        if f"job_{name}" in res:
            procs = _best(res[f"job_{name}"])["by_process"]
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(procs.items())[:8])
            lines.append(f"- {name}: {top}")
    lines += [
        "",
        f"Projection (not measured on a GPU): the CPU work of the feeding path without the "
        f"actor's own work (which moves to the GPU) is {s['feed_cpu_us']:,.0f} us per source, so "
        f"one GPU at {GPU_IMAGES_PER_S:,} images/s needs about **{s['cores_per_gpu']:,.0f} "
        f"CPU cores** (an 8-GPU node: {8 * s['cores_per_gpu']:,.0f}) of this CPU to keep it busy.",
        "",
    ]
    return "\n".join(lines)


def _sources(n: float) -> str:
    if math.isnan(n):
        return "not resolved (the jobs' difference is below the noise: a bigger --n-sources)"
    if math.isinf(n):
        return "at no size (the rate beyond the fixed costs is below the goal)"
    return "at any size" if n == 0 else f"from about **{n:,.0f}** sources"


def _actors(args: argparse.Namespace) -> str:
    if args.gpus:
        return f"{args.gpus} GPU inference actors ({_gpu_name()})"
    return f"{args.actors} inference actors x 1 thread"


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sky", help="where the sky is kept (default: <home>/benchmarks/sky_<n>)")
    # 100,000: the fixed costs of a job (~30 CPU-s here: worker and actor starts, finalize,
    # margin) are then about half of the null-model job, and the per-source part (this job less
    # the small one) is resolved; at 20,000 it drowned in the fixed costs' noise (measured).
    p.add_argument("--n-sources", type=int, default=100_000)
    p.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the Ray head")
    p.add_argument("--actors", type=int, default=2, help="inference actors")
    p.add_argument("--gpus", type=int, default=0, help="GPUs: one inference actor on each")
    p.add_argument("--chunk-size", type=int, help="rows per chunk (default: as the pipeline)")
    p.add_argument("--alone-pixels", type=int, default=1, help="pixels timed in stages alone")
    p.add_argument("--repeats", type=int, default=1, help="jobs per model")
    p.add_argument("--null-only", action="store_true", help="skip the paper-sized model")
    p.set_defaults(pixels=None)
    p.add_argument("--idle-s", type=float, default=10.0, help="idle head CPU sampled for")
    p.add_argument("--write-results", action="store_true")
    return p


def section(args: argparse.Namespace) -> str | None:
    """The RESULTS section of the run's layout (one per layout, so that a GPU or a 4-actor run
    never overwrites the 2-actor CPU one); None for a layout RESULTS does not keep."""
    if args.gpus:
        return SECTION_GPU
    return {2: SECTION, 4: SECTION_4_ACTORS}.get(args.actors)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    heading = section(args)
    if args.write_results and heading is None:
        parser().error(f"--write-results keeps the layouts of 2 or 4 CPU actors or GPU actors, "
                       f"not --actors {args.actors}: run it without --write-results")  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    text = report(run(args), args)
    sys.stdout.write(text)
    if args.write_results and heading is not None:
        write_section(heading, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
