"""What the precision gate measures: catalog agreement with a statistical bound, and speed.

The gate compares what the catalog would get from fp32 and from a reduced plan. A *view* of a
set of rows is a mapping with ``p`` (N, K) calibrated probabilities, as the run scores them
(``T(W1)`` per row), and any number of per-row columns the catalog derives from them (``class``,
``is_outlier``, ``subset``). :func:`compare` counts a row as agreeing only when every such column
is equal and its probabilities are finite wherever fp32's are: a NaN is a disagreement, never
skipped. :func:`lower_bound` turns "k of n agree" into the one-sided 95 % Clopper-Pearson lower
bound on the agreement rate, which is what the gate holds against its threshold, so 256 stamps
can no longer pass a 99.5 % gate by luck (with n stamps, even a perfect score only bounds the
rate by ``0.05 ** (1 / n)``: 598 stamps are needed for 99.5 %).

:func:`time_plans` measures each plan's speed against fp32 on the device the run uses, by
alternating fixed-shape batches; the gate uses the ratio to keep ``auto`` from ever choosing a
slower plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import numpy as np
import torch

CONFIDENCE = 0.95
"""Confidence of the one-sided lower bound on the agreement rate."""


def softmax_view(logits: np.ndarray, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """The view of bare logits: softmax at one temperature and the top class (no other rules);
    for callers without the run's scoring (tests, benchmarks)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    with np.errstate(invalid="ignore"):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
    return {"p": p, "class": np.argmax(np.nan_to_num(p, nan=-1.0), axis=1)}


def compare(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]
) -> tuple[int, int, float]:
    """(rows that agree, rows, largest probability difference) of two views of the same rows.

    A row agrees when each column other than ``p`` is equal and ``candidate``'s probabilities
    are finite wherever ``reference``'s are. The largest difference is infinite when a
    candidate probability is NaN where the reference's is finite.
    """
    p0 = np.asarray(reference["p"], dtype=np.float64)
    p1 = np.asarray(candidate["p"], dtype=np.float64)
    n = len(p0)
    if len(p1) != n:
        raise ValueError(f"views of {n} and {len(p1)} rows: not the same rows")
    if not n:
        return 0, 0, 0.0
    lost = (np.isfinite(p0) & ~np.isfinite(p1)).any(axis=1)
    ok = ~lost
    for name, col in reference.items():
        if name != "p":
            ok &= np.asarray(col, dtype=object) == np.asarray(candidate[name], dtype=object)
    diff = np.abs(p0 - p1)
    both = np.isfinite(diff)
    largest = float(diff[both].max()) if both.any() else 0.0
    return int(ok.sum()), n, float("inf") if lost.any() else largest


def compare_logits(
    reference: np.ndarray, reduced: np.ndarray, temperature: float = 1.0
) -> tuple[float, float]:
    """(class agreement, largest probability difference) of two sets of logits (N, K) at one
    temperature, a NaN row a disagreement (for benchmarks; the gate compares catalog views)."""
    agree, n, diff = compare(
        softmax_view(reference, temperature), softmax_view(reduced, temperature)
    )
    return (agree / n if n else 1.0), diff


def lower_bound(agree: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound on the agreement rate, ``agree`` of ``n`` rows."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0
    if agree <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, agree, n - agree + 1))


def time_plans(
    run_batch: Callable[[str], object],
    plans: tuple[str, ...],
    device: torch.device | str,
    rounds: int = 3,
) -> dict[str, float]:
    """Each plan's speed relative to fp32 (> 1: faster), measured on ``device``.

    ``run_batch(plan)`` runs one fixed-shape pass in that plan (the first call of each is a
    warm-up). The plans alternate round by round; each keeps its best round (process CPU time
    on a CPU, wall time after a synchronize on a GPU), so a neighbour's load hits all alike.
    """
    cuda = torch.device(device).type == "cuda"

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(device)
            return time.perf_counter()
        return time.process_time()

    names = ("fp32", *(p for p in plans if p != "fp32"))
    for name in names:
        run_batch(name)
    best = dict.fromkeys(names, float("inf"))
    for _ in range(rounds):
        for name in names:
            t0 = clock()
            run_batch(name)
            best[name] = min(best[name], max(clock() - t0, 1e-9))
    return {name: best["fp32"] / best[name] for name in names if name != "fp32"}
