"""Benchmark IICnet inference speed on CPU against the machine's fp32 matmul rate.

For batch sizes 1, 64 and 256 it measures images per second of the plain eval-mode model
("eager"), of ``optimize_for_inference(model)`` (BN folded into the convolutions, channels-last
weights) and, with ``--compile``, of ``optimize_for_inference(model, compile=True,
dynamic=False)`` (one static graph per batch size, as for an actor with a fixed batch). The
achieved FLOP rate is ``2 x MACs x images/s``, MACs as counted by
``iic_survey.model.size.count_macs`` (convolutions and matmuls only); the reference is the
best ``torch.matmul`` rate of square fp32 matrices, measured in the same run with the same
threads. The goal is a ratio >= 0.5.

Other people share the machine, so the script times short windows of every row in turn
for ``--budget`` seconds and records, per window, the share of the CPUs this process actually
got (its CPU time / threads / wall time). Only windows where it had the cores (share >= 0.9)
count, and the fastest of those is reported for both the model and the matmul, so the two sides
of each ratio are measured under the same conditions. Run::

    python -m benchmarks.model [--compile] [--write]

``--write`` replaces the "## Model speed (benchmarks/model.py)" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.common import cpu_name
from benchmarks.results import RESULTS, write_section
from iic_survey.model.config import ModelConfig
from iic_survey.model.network import build_model, optimize_for_inference
from iic_survey.model.size import count_macs

SECTION = "## Model speed (benchmarks/model.py)"


Sample = tuple[float, float]  # (calls per second, CPU share) of one timing window


def window(fn: Callable[[], object], calls: int) -> Sample:
    """Time ``calls`` calls of ``fn``; the CPU share is CPU time / threads / wall time."""
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        fn()
    wall = time.perf_counter() - t0
    return calls / wall, (time.process_time() - c0) / (torch.get_num_threads() * wall)


def calls_for(fn: Callable[[], object], seconds: float) -> int:
    """Warm ``fn`` up and return how many calls fill about ``seconds``."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, round(seconds / max(time.perf_counter() - t0, 1e-6)))


def pick(samples: list[Sample], min_share: float) -> tuple[Sample, int]:
    """The fastest window among those that had the CPUs (share >= min_share), and their count.

    Falls back to the fastest window of all when no window had the CPUs to itself.
    """
    clean = [x for x in samples if x[1] >= min_share]
    return max(clean or samples), len(clean)


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cfg = ModelConfig()
    model = build_model(cfg, seed=0).eval()
    macs = count_macs(model)["total"]
    nets: dict[str, torch.nn.Module] = {"eager": model, "optimized": optimize_for_inference(model)}
    if args.compile:
        nets["compiled"] = optimize_for_inference(model, compile=True, dynamic=False)
    jobs: dict[tuple[str, int], tuple[Callable[[], object], int]] = {}
    compile_s: list[float] = []
    with torch.inference_mode():
        for name, net in nets.items():
            for batch in args.batches:
                fn = functools.partial(
                    net, torch.rand(batch, 3, cfg.image_size, cfg.image_size), None
                )
                t0 = time.perf_counter()
                n = calls_for(fn, args.window)
                if name == "compiled":
                    compile_s.append(time.perf_counter() - t0)
                jobs[(name, batch)] = (fn, n)
        for size in (1024, 2048, 3072):
            a, b = torch.randn(size, size), torch.randn(size, size)
            matmul = functools.partial(torch.matmul, a, b)
            jobs[("matmul", size)] = (matmul, calls_for(matmul, args.window / 2))
        # Round-robin short windows until the time budget is spent, so that every measurement
        # gets its share of the quiet moments on a machine other people are using.
        samples: dict[tuple[str, int], list[Sample]] = {k: [] for k in jobs}
        deadline = time.monotonic() + args.budget
        rounds = 0
        while rounds < args.min_rounds or time.monotonic() < deadline:
            for key, (call, n) in jobs.items():
                samples[key].append(window(call, n))
            rounds += 1
    load_after = os.getloadavg()

    mm_best = {size: pick(samples[("matmul", size)], args.min_share) for size in (1024, 2048, 3072)}
    mm_size, ((mm_calls, mm_share), mm_clean) = max(
        mm_best.items(), key=lambda kv: kv[1][0][0] * kv[0] ** 3
    )
    mm = mm_calls * 2 * mm_size**3
    rows = []
    for (name, batch), got in samples.items():
        if name == "matmul":
            continue
        (best, share), clean = pick(got, args.min_share)
        median = statistics.median(r for r, _ in got)
        rows.append((name, batch, best * batch, median * batch, share, clean, len(got)))
        print(f"{name:>9} batch {batch:>3}: {best * batch:8.1f} img/s, share {share:.2f}")

    today = datetime.date.today().isoformat()
    la, lb = load_before, load_after
    lines = [
        SECTION,
        "",
        f"Run {today} on {cpu_name()} ({os.cpu_count()} CPUs), {args.threads} threads "
        f"(`torch.set_num_threads`), torch {torch.__version__}, Python "
        f"{platform.python_version()}. Load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/"
        f"{la[2]:.2f}, after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}: the machine was shared.",
        "",
        f"Method: {rounds} rounds over {args.budget / 60:.0f} min, each timing every row below "
        f"for ~{args.window:.1f} s and `torch.matmul` on square fp32 matrices of side 1024, "
        "2048 and 3072 for half that. A window's CPU share is its CPU time / threads / wall "
        f"time; only windows with share >= {args.min_share} (this process had the cores) "
        "count, and the fastest of them is reported (the median of all windows in brackets). "
        f"fp32 matmul rate: **{mm / 1e9:.1f} GFLOP/s** (side {mm_size}, share {mm_share:.2f}, "
        f"{mm_clean} clean windows). IICnet default config: {macs / 1e6:.2f} M MACs per "
        "1x3x80x80 image (`torch.utils.flop_counter` FLOPs / 2). "
        "Ratio = 2 x MACs x images/s / matmul rate; goal >= 0.5.",
        "",
        "| variant | batch | images/s | CPU share | clean windows | GFLOP/s | ratio to matmul |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, batch, best, median, share, clean, total in rows:
        flops = 2 * macs * best
        lines.append(
            f"| {name} | {batch} | {best:.1f} ({median:.1f}) | {share:.2f} | {clean}/{total} "
            f"| {flops / 1e9:.1f} | **{flops / mm:.2f}** |"
        )
    compiled = (
        f" (compile + first calls {min(compile_s):.0f}-{max(compile_s):.0f} s)" if compile_s else ""
    )
    lines += [
        "",
        "Variants: eager = `model.eval()` under `torch.inference_mode()`; optimized = "
        "`optimize_for_inference(model)` (BN folded into convs, channels-last weights); "
        "compiled = `optimize_for_inference(model, compile=True, dynamic=False)`: also "
        f"`torch.compile` with Inductor freezing, one static graph per batch size{compiled}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", type=float, default=0.5, help="seconds per timing window")
    parser.add_argument("--budget", type=float, default=600.0, help="seconds of round-robin")
    parser.add_argument("--min-rounds", type=int, default=3, help="rounds even past the budget")
    parser.add_argument("--min-share", type=float, default=0.9, help="CPU share of a clean window")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    args = parser.parse_args(argv)
    text = run(args)
    print(text)
    if args.write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
