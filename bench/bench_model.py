"""Benchmark IICnet inference speed on CPU against the machine's fp32 matmul rate.

For batch sizes 1, 64 and 256 it measures images per second of the plain eval-mode model
("eager"), of ``optimize_for_inference(model)`` (BN folded into the convolutions, channels-last
weights) and, with ``--compile``, of ``optimize_for_inference(model, compile=True)`` (compiled
afresh for each batch size, as an inference actor with a fixed batch size would be). The
achieved FLOP rate is ``2 x MACs x images/s``, MACs as counted by ``iic_survey.model.count_macs``
(convolutions and matmuls only); the reference is the best ``torch.matmul`` rate of square fp32
matrices, measured in the same run with the same threads between the model measurements. The
goal is a ratio >= 0.5.

Other people share the machine. Before each measurement the script waits (up to
``--max-wait`` s) until the other processes use less than ``--max-busy`` of the CPUs, and every
timing window records the share of the CPUs this process actually got (its CPU time / threads /
wall time): a window where others took the cores shows a share well below 1. The reported rate
is the best window; the median and the best window's share are shown next to it. Run::

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


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over the next ``seconds`` (from /proc/stat; 0 if unavailable)."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_quiet(max_busy: float, max_wait_s: float) -> float:
    """Wait until other processes use under ``max_busy`` of the CPUs; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy >= max_busy and time.monotonic() < deadline:
        busy = cpu_busy(5.0)
    return busy


@functools.cache
def _threads() -> int:
    return torch.get_num_threads()


def windows(fn: Callable[[], object], seconds: float, repeats: int) -> list[tuple[float, float]]:
    """(calls per second, CPU share) of ``fn`` in ``repeats`` windows of ``seconds / repeats``."""
    fn()  # warm-up (oneDNN primitive creation, compilation)
    t0 = time.perf_counter()
    fn()
    per_call = max(time.perf_counter() - t0, 1e-6)
    n = max(1, round(seconds / repeats / per_call))
    out = []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        wall = time.perf_counter() - t0
        out.append((n / wall, (time.process_time() - c0) / (_threads() * wall)))
    return out


def matmul_rate(seconds: float, repeats: int) -> tuple[float, int]:
    """Best fp32 ``torch.matmul`` FLOP rate over a few square sizes, and the size that gave it."""
    best, best_n = 0.0, 0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n), torch.randn(n, n)
        calls = windows(functools.partial(torch.matmul, a, b), seconds / 3, repeats)
        rate = max(r for r, _ in calls) * 2 * n**3
        if rate > best:
            best, best_n = rate, n
    return best, best_n


def run(args: argparse.Namespace) -> str:
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    cfg = ModelConfig()
    model = build_model(cfg, seed=0).eval()
    macs = count_macs(model)["total"]
    optimized = optimize_for_inference(model)
    names = ["eager", "optimized"] + (["compiled"] if args.compile else [])
    mm_rates: list[tuple[float, int]] = []
    rows, busy_seen, compile_s = [], [], []
    for name in names:
        for batch in args.batches:
            busy_seen.append(wait_for_quiet(args.max_busy, args.max_wait))
            mm_rates.append(matmul_rate(args.seconds / 2, args.repeats))
            images = torch.rand(batch, 3, cfg.image_size, cfg.image_size)
            net: torch.nn.Module = {"eager": model, "optimized": optimized}.get(name, model)
            with torch.inference_mode():
                if name == "compiled":
                    torch._dynamo.reset()  # a static graph for this batch size
                    net = optimize_for_inference(model, compile=True)
                    t0 = time.perf_counter()
                    net(images, None)
                    compile_s.append(time.perf_counter() - t0)
                calls = windows(functools.partial(net, images, None), args.seconds, args.repeats)
            best, share = max(calls)
            median = statistics.median(r for r, _ in calls)
            rows.append((name, batch, best * batch, median * batch, share))
            print(
                f"{name:>9} batch {batch:>3}: {best * batch:8.1f} img/s (median "
                f"{median * batch:.1f}, CPU share {share:.2f}, others busy {busy_seen[-1]:.2f})"
            )
    mm, mm_n = max(mm_rates)
    load_after = os.getloadavg()

    today = datetime.date.today().isoformat()
    la, lb = load_before, load_after
    lines = [
        SECTION,
        "",
        f"Run {today} on {cpu_name()} ({os.cpu_count()} CPUs), {args.threads} threads "
        f"(`torch.set_num_threads`), torch {torch.__version__}, Python "
        f"{platform.python_version()}. Load average (1/5/15 min) before {la[0]:.2f}/{la[1]:.2f}/"
        f"{la[2]:.2f}, after {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f}; other processes' CPU use "
        f"just before each measurement: {min(busy_seen):.0%} to {max(busy_seen):.0%}.",
        "",
        f"IICnet default config: {macs / 1e6:.2f} M MACs per 1x3x80x80 image "
        "(`torch.utils.flop_counter` FLOPs / 2). fp32 matmul rate: "
        f"{mm / 1e9:.1f} GFLOP/s (best `torch.matmul` window on square 1024-3072 matrices, "
        f"measured before each model measurement; best size {mm_n}; lowest of the "
        f"{len(mm_rates)} bests {min(mm_rates)[0] / 1e9:.1f}). Images/s: best of "
        f"{args.repeats} windows over ~{args.seconds:.0f} s, median in brackets; CPU share: the "
        "best window's CPU time / threads / wall time (1 = this process had both cores); "
        "ratio = 2 x MACs x best images/s / matmul rate.",
        "",
        "| variant | batch | images/s | CPU share | GFLOP/s | ratio to matmul |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, batch, best, median, share in rows:
        flops = 2 * macs * best
        rate = f"{best:.1f} ({median:.1f})"
        lines.append(
            f"| {name} | {batch} | {rate} | {share:.2f} | {flops / 1e9:.1f} | {flops / mm:.2f} |"
        )
    compiled = f" (first call {min(compile_s):.0f}-{max(compile_s):.0f} s)" if compile_s else ""
    lines += [
        "",
        "Variants: eager = `model.eval()` under `torch.inference_mode()`; optimized = "
        "`optimize_for_inference(model)` (BN folded into convs, channels-last weights); "
        "compiled = `optimize_for_inference(model, compile=True)`, i.e. also `torch.compile` "
        f"with Inductor freezing, compiled for each batch size{compiled}.",
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
        "--max-busy", type=float, default=0.15, help="wait until others use less of the CPUs"
    )
    parser.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait at most")
    args = parser.parse_args(argv)
    text = run(args)
    print(text)
    if args.write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
