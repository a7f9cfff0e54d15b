"""Benchmark of the GPU inference path: the model alone, the GPU RGB, the Classify actor.

On one CUDA device, with the paper-sized IICnet (untrained weights: the speed is the same), in
one run of at most about 5 minutes:

1. **Model alone**: images/s of ``optimize_for_inference(model)`` at fp32, bf16 and fp16
   (autocast, :class:`iic_survey.model.inference.Predictor`), batch 256 to 4096, with and
   without ``torch.compile`` (static shapes, one graph per batch), inputs already on the device,
   timed between CUDA syncs. Goal: >= 50,000 images/s at bf16 on an H200.
2. **GPU RGB alone**: stamps/s of :func:`iic_survey.stamps.rgb_torch.make_rgb_torch` on the
   device (37x37 stamps -> 80x80 images), inputs already on the device.
3. **The actor end to end**: :class:`iic_survey.survey.classify.Classify` on the device in the
   run's precision, fed host chunks of cut stamps (a :class:`~iic_survey.stamps.split.
   StampCutter` over a synthetic sky, 2,048-row chunks as the pipeline makes them): upload,
   RGB, model and one copy back per chunk; sources/s and the GPU's utilisation (NVML, sampled
   every 0.1 s). Goal: >= 20,000 sources/s per GPU.

Run from the repository root on a machine with a CUDA GPU::

    .venv/bin/python -m benchmarks.gpu                  # prints the results
    .venv/bin/python -m benchmarks.gpu --write-results  # also updates benchmarks/RESULTS.md

Without a CUDA device it says so and exits with status 2 (nothing to measure).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchmarks import common
from benchmarks.common import cpu_name
from benchmarks.results import write_section

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## GPU inference (benchmarks/gpu.py)"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE = torch.device("cuda")
"""The device measured (``--smoke-cpu``: the CPU, to check the script, never written)."""


def sync() -> None:
    """Wait for the device (a no-op in a ``--smoke-cpu`` run)."""
    if DEVICE.type == "cuda":
        sync()


def timed(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` (after a warm-up), CUDA-synced."""
    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    calls = max(1, round(seconds / max(time.perf_counter() - t0, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return calls / (time.perf_counter() - t0)


class Utilisation:
    """Mean GPU utilisation (NVML, %) while the context is open; None without pynvml."""

    def __init__(self, interval_s: float = 0.1) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.interval_s = interval_s

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if DEVICE.type != "cuda":
                    return
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # no pynvml / NVML: the figure is left out
                return
            self._stop.wait(self.interval_s)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None

    def __enter__(self) -> Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def model_alone(args: argparse.Namespace, res: dict[str, Any]) -> None:
    from iic_survey.model.config import ModelConfig
    from iic_survey.model.inference import Predictor
    from iic_survey.model.network import build_model, optimize_for_inference

    dev = DEVICE
    net = optimize_for_inference(build_model(ModelConfig(), seed=0).eval().to(dev))
    # Every precision eager; compiled (one static graph per batch and dtype, tens of seconds
    # each) only in bf16, the pipeline's choice, to stay inside the 5 minutes.
    plan = [(name, False) for name in PRECISIONS]
    plan += [("bf16", True)] if args.compile else []
    compiled = optimize_for_inference(net, compile=True, dynamic=False) if args.compile else None
    rows = []
    for name, comp in plan:
        model = compiled if comp else net
        for batch in args.batches:
            x = torch.rand(batch, 3, 80, 80, device=dev)
            f = torch.zeros(batch, 7, device=dev)
            pred = Predictor(model, dev, PRECISIONS[name], batch)
            t0 = time.perf_counter()
            try:
                rate = timed(lambda p=pred, x=x, f=f: p.on_device(x, f), args.window) * batch
            except Exception as exc:  # e.g. no compiler for Inductor: record, go on
                print(f"model {name} batch {batch} compile {comp}: failed: {exc}")
                rate = float("nan")
            rows.append((name, batch, comp, rate, time.perf_counter() - t0))
            print(f"model {name} batch {batch} compile {comp}: {rate:,.0f} images/s")
    res["model"] = rows


def rgb_alone(args: argparse.Namespace, res: dict[str, Any], stamps: np.ndarray) -> None:
    from iic_survey.stamps.rgb_torch import make_rgb_torch

    dev = DEVICE
    x = torch.from_numpy(np.ascontiguousarray(stamps[:2048])).to(dev)
    res["rgb"] = timed(lambda: make_rgb_torch(x), args.window) * len(x)
    print(f"GPU RGB: {res['rgb']:,.0f} stamps/s")


def cut_sky(args: argparse.Namespace) -> tuple[list[dict[str, np.ndarray]], str]:
    """Chunks of cut stamps from a synthetic sky, and a paper-sized model directory."""
    import pandas as pd

    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.stamps.split import StampCutter

    sky_path = args.sky or common.sky_dir(args.n_sources)
    manifest = common.sky(sky_path, args.n_sources)
    work = pathlib.Path(tempfile.mkdtemp(prefix="iic_bench_gpu_"))
    model_dir = common.model_dir(work / "model", manifest)
    cat = open_catalog(manifest.catalog_url)
    cutter = StampCutter.from_spec(manifest.images_url)
    chunks = []
    for pixel in manifest.pixels:
        rows = cat.read_pixel(int(pixel), 5, columns=PIPELINE_COLUMNS)
        rows["_pixel"], rows["_row"] = int(pixel), range(len(rows))
        rows["_chunk"] = rows["_row"] // args.chunk
        for start in range(0, len(rows), args.chunk):
            chunks.append(cutter(pd.DataFrame(rows.iloc[start : start + args.chunk])))
        if sum(len(c["cntr"]) for c in chunks) >= args.actor_sources:
            break
    return chunks, model_dir


def actor_end_to_end(args: argparse.Namespace, res: dict[str, Any], chunks: list, model_dir: str):
    from iic_survey.survey.classify import Classify

    rows = []
    for name in ("fp32", "bf16"):
        batch = None if DEVICE.type == "cuda" else 16
        actor = Classify(model_dir, DEVICE.type, batch, None, precision=name)
        actor(chunks[0])  # warm-up: kernels, pinned buffers
        sync()
        n = sum(len(c["cntr"]) for c in chunks)
        with Utilisation() as util:
            t0 = time.perf_counter()
            for c in chunks:
                actor(c)
            wall = time.perf_counter() - t0
        rows.append((name, actor.batch, n, n / wall, util.mean))
        print(f"actor {name}: {n / wall:,.0f} sources/s, GPU busy {util.mean}")
    res["actor"] = rows


def report(res: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {res['gpu']} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}), host {res['cpu']} with "
        f"{os.cpu_count()} CPUs, load "
        f"{res['load']}. Paper-sized IICnet, untrained weights (same speed). One run.",
        "",
        "Model alone (inputs on the device, `Predictor.on_device`, images/s):",
        "",
        "| precision | batch | compile | images/s | row's seconds (incl. compile) |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    for name, batch, comp, rate, seconds in res["model"]:
        lines.append(
            f"| {name} | {batch:,} | {'yes' if comp else 'no'} | {rate:,.0f} | {seconds:.0f} |"
        )
    best = max((r for r in res["model"] if r[0] == "bf16"), key=lambda r: np.nan_to_num(r[3]))
    lines += [
        "",
        f"Best bf16: **{best[3]:,.0f} images/s** (batch {best[1]:,}, compile "
        f"{'on' if best[2] else 'off'}); goal >= 50,000.",
        "",
        f"GPU RGB alone (`make_rgb_torch`, 2,048 stamps of 37x37 on the device): "
        f"**{res['rgb']:,.0f} stamps/s**.",
        "",
        "The `Classify` actor end to end (host chunks of cut stamps -> pinned upload -> RGB -> "
        f"model -> one copy back), {res['chunk']:,}-row chunks from the synthetic sky:",
        "",
        "| precision | model batch | sources | sources/s | GPU utilisation |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, batch, n, rate, util in res["actor"]:
        u = f"{util:.0f} %" if util is not None else "n/a (no NVML)"
        lines.append(f"| {name} | {batch:,} | {n:,} | {rate:,.0f} | {u} |")
    lines += [
        "",
        "Goal: >= 20,000 sources/s per GPU. The actor's rate is bound by whichever of the model, "
        "the RGB and the host side (result rows, OOD scores in numpy) is slowest; compare its "
        "rate with the two device-only rates above to see which.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--window", type=float, default=2.0, help="seconds per timed row")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--sky", help="the benchmark's sky (default: a temp dir by size)")
    parser.add_argument("--n-sources", type=int, default=30_000)
    parser.add_argument("--actor-sources", type=int, default=20_000)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument(
        "--smoke-cpu",
        action="store_true",
        help="run every step small on the CPU (a check of "
        "the script, not a measurement; never writes RESULTS.md)",
    )
    args = parser.parse_args(argv)
    global DEVICE
    if args.smoke_cpu:
        DEVICE = torch.device("cpu")
        args.batches, args.window, args.actor_sources, args.chunk = [8], 0.2, 64, 32
        args.write_results = False
    elif not torch.cuda.is_available():
        print(
            "benchmarks/gpu.py: torch sees no CUDA device on this machine, so there is nothing to "
            "measure; run it on a GPU machine (nothing was written).",
            file=sys.stderr,
        )
        return 2
    one, five, fifteen = os.getloadavg()
    res: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name() if DEVICE.type == "cuda" else "CPU (smoke run)",
        "cpu": cpu_name(),
        "load": f"{one:.2f} / {five:.2f} / {fifteen:.2f}",
        "chunk": args.chunk,
    }
    chunks, model_dir = cut_sky(args)
    model_alone(args, res)
    rgb_alone(args, res, chunks[0]["stamp"])
    actor_end_to_end(args, res, chunks, model_dir)
    text = report(res)
    sys.stdout.write(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
