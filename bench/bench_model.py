"""Benchmark IICnet inference speed on CPU against the machine's fp32 matmul rate.

For batch sizes 1, 64 and 256 it measures images per second of the plain eval-mode model
("eager"), of ``optimize_for_inference(model)`` (BN folded into the convolutions, channels-last
weights) and, with ``--compile``, of ``optimize_for_inference(model, compile=True)``. The
achieved FLOP rate is ``2 x MACs x images/s``, MACs as counted by ``iic_survey.model.count_macs``
(convolutions and matmuls only); the reference is the best ``torch.matmul`` rate of square fp32
matrices measured in the same run with the same threads. The goal is a ratio >= 0.5.

Other people share the machine, so every number is the best of several short timing windows
(the least disturbed one) and the median is shown next to it; the load average before and after
is recorded. Run::

    python bench/bench_model.py [--compile] [--write]

``--write`` replaces the "## Model speed (bench/bench_model.py)" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import pathlib
import platform
import statistics
import time
from collections.abc import Callable

import torch

from iic_survey.model import ModelConfig, build_model, count_macs, optimize_for_inference

SECTION = "## Model speed (bench/bench_model.py)"
RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def windows(fn: Callable[[], object], seconds: float, repeats: int) -> list[float]:
    """Calls per second of ``fn`` in ``repeats`` windows of about ``seconds / repeats`` each."""
    fn()  # warm-up (oneDNN primitive creation, compilation)
    t0 = time.perf_counter()
    fn()
    per_call = max(time.perf_counter() - t0, 1e-6)
    n = max(1, round(seconds / repeats / per_call))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def matmul_rate(seconds: float, repeats: int) -> tuple[float, int]:
    """Best fp32 ``torch.matmul`` FLOP rate over a few square sizes, and the size that gave it."""
    best, best_n = 0.0, 0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        rate = max(windows(functools.partial(torch.matmul, a, b), seconds / 3, repeats)) * 2 * n**3
        if rate > best:
            best, best_n = rate, n
    return best, best_n


def wait_for_quiet(max_load: float, max_wait_s: float) -> None:
    """Sleep until the 1-minute load average is below ``max_load`` (or ``max_wait_s`` passed)."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(10)


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, args.max_wait)
    load_before = os.getloadavg()
    cfg = ModelConfig()
    model = build_model(cfg, seed=0).eval()
    macs = count_macs(model)["total"]
    variants: dict[str, torch.nn.Module] = {
        "eager": model,
        "optimized": optimize_for_inference(model),
    }
    compile_s = None
    if args.compile:
        variants["compiled"] = optimize_for_inference(model, compile=True)
    mm_before, mm_n = matmul_rate(args.seconds, args.repeats)
    rows = []
    for name, net in variants.items():
        for batch in args.batches:
            images = torch.rand(batch, 3, cfg.image_size, cfg.image_size)
            with torch.inference_mode():
                if name == "compiled":
                    t0 = time.perf_counter()
                    net(images, None)
                    compile_s = max(compile_s or 0.0, time.perf_counter() - t0)
                rates = windows(functools.partial(net, images, None), args.seconds, args.repeats)
            rows.append((name, batch, max(rates) * batch, statistics.median(rates) * batch))
            print(
                f"{name:>9} batch {batch:>3}: {rows[-1][2]:8.1f} img/s (median {rows[-1][3]:.1f})"
            )
    mm_after, _ = matmul_rate(args.seconds, args.repeats)
    mm = max(mm_before, mm_after)
    load_after = os.getloadavg()

    today = datetime.date.today().isoformat()
    lines = [
        SECTION,
        "",
        f"Run {today} on {cpu_name()}, {args.threads} threads (`torch.set_num_threads`), "
        f"torch {torch.__version__}, Python {platform.python_version()}. "
        f"Load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/"
        f"{load_before[2]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}.",
        "",
        f"IICnet default config: {macs / 1e6:.2f} M MACs per 1x3x80x80 image "
        "(`torch.utils.flop_counter` FLOPs / 2). fp32 matmul rate: "
        f"{mm / 1e9:.1f} GFLOP/s (best of `torch.matmul` on square 1024-3072 matrices, before and "
        f"after the model runs; {mm_before / 1e9:.1f} before, {mm_after / 1e9:.1f} after, best "
        f"size {mm_n}). Images/s: best of {args.repeats} windows over ~{args.seconds:.0f} s "
        "(median in brackets); ratio = 2 x MACs x best images/s / matmul rate.",
        "",
        "| variant | batch | images/s | GFLOP/s | ratio to matmul |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, batch, best, median in rows:
        flops = 2 * macs * best
        rate = f"{best:.1f} ({median:.1f})"
        lines.append(f"| {name} | {batch} | {rate} | {flops / 1e9:.1f} | {flops / mm:.2f} |")
    lines += [
        "",
        "Variants: eager = `model.eval()` under `torch.inference_mode()`; optimized = "
        "`optimize_for_inference(model)` (BN folded into convs, channels-last weights); "
        "compiled = the same plus `torch.compile(options={'freezing': True})`"
        + (f" (first call {compile_s:.0f} s)." if compile_s is not None else "."),
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: pathlib.Path = RESULTS) -> None:
    """Replace this benchmark's section of RESULTS.md (up to the next '## '), keeping the rest."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = old.find(SECTION)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(SECTION))
        new = old[:start] + text + (old[end + 1 :] if end >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="timing per measurement")
    parser.add_argument("--repeats", type=int, default=6, help="windows per measurement")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        help="first wait for a 1-min load average below this",
    )
    parser.add_argument("--max-wait", type=float, default=1800.0, help="seconds to wait at most")
    args = parser.parse_args(argv)
    text = run(args)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
