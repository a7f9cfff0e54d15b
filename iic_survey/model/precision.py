"""Which arithmetic a model runs in, and the gate a reduced precision must pass first.

``--precision`` is one of :data:`PRECISIONS`. ``auto`` means bf16 where the hardware does bf16
natively (a CPU with ``avx512_bf16`` or AMX, :func:`cpu_has_native_bf16`; a CUDA device with
bf16, :func:`cuda_has_bf16`), else fp32; :func:`resolve` turns a request into the precision
to try and says why. A reduced precision runs as ``torch.autocast`` (:func:`autocast`): the
weights stay fp32, convolutions and matrix products run in the reduced type, the logits and
embeddings come back as fp32.

A reduced precision is a hope until it is checked: :func:`check_gate` runs the model in fp32
and in the reduced precision on the same stamps and passes only when the classes agree on at
least :data:`MIN_AGREEMENT` of them and no calibrated probability moves by more than
:data:`MAX_PROB_DIFF`; otherwise the run falls back to fp32 and records why
(:class:`GateResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from iic_survey.core.config import did_you_mean

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""Choices of ``--precision``."""
MIN_AGREEMENT = 0.995
"""Share of the gate's stamps whose class must equal fp32's."""
MAX_PROB_DIFF = 0.01
"""Largest allowed difference of any calibrated probability from fp32's."""
GATE_STAMPS = 256
"""Stamps the gate compares (from the first chunk of a run)."""

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ValueError with a hint."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}{did_you_mean(str(precision), PRECISIONS)}; "
            f"use one of {PRECISIONS}"
        )
    return precision


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (``avx512_bf16`` or AMX-BF16).

    Read from ``/proc/cpuinfo``'s flags; where that file is absent (not Linux), from torch's
    own CPU probes.
    """
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, p, lambda: False)()) for p in probes)
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return any(f in flags for f in _CPU_BF16_FLAGS)


def cuda_has_bf16() -> bool:
    """True when the current CUDA device computes bf16 natively (Ampere and newer)."""
    return bool(
        torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    )


def resolve(requested: str, device: torch.device | str) -> tuple[str, str]:
    """(precision to try, why) for a request on a device.

    ``auto`` becomes bf16 where it is native and fp32 elsewhere; an explicit choice is kept
    (the gate still checks it). fp16 on a CPU is allowed but slow on most CPUs.
    """
    check_precision(requested)
    dev = torch.device(device)
    if requested != "auto":
        return requested, f"{requested} asked for"
    if dev.type == "cuda":
        if cuda_has_bf16():
            return "bf16", "auto: the CUDA device has native bf16"
        return "fp32", "auto: the CUDA device has no native bf16"
    if dev.type == "cpu" and cpu_has_native_bf16():
        return "bf16", "auto: the CPU has native bf16 (avx512_bf16 or AMX)"
    return "fp32", f"auto: no native bf16 on {dev.type}"


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32."""
    check_precision(precision)
    if precision == "auto":
        raise ValueError("resolve 'auto' first (precision.resolve)")
    return _DTYPES.get(precision)


def autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` on ``device``; a no-op context for fp32 (None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# The gate


@dataclasses.dataclass(frozen=True)
class GateResult:
    """What a run decided about its precision, as ``_run.json`` records it."""

    requested: str
    """The ``--precision`` asked for."""
    used: str
    """The precision the run uses (fp32 after a failed gate)."""
    device: str
    """The inference device type the decision was made on (``cpu``, ``cuda``)."""
    reason: str
    """Why: how ``auto`` resolved, that the gate passed, or why it failed."""
    n_stamps: int = 0
    """Stamps the gate compared (0: no gate ran)."""
    agreement: float | None = None
    """Share of those stamps whose class equals fp32's."""
    max_prob_diff: float | None = None
    """Largest difference of a calibrated probability from fp32's."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


def _calibrated(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare(
    reference: np.ndarray, reduced: np.ndarray, temperature: float = 1.0
) -> tuple[float, float]:
    """(class agreement, largest probability difference) of two sets of logits (N, K)."""
    p0, p1 = _calibrated(reference, temperature), _calibrated(reduced, temperature)
    if not len(p0):
        return 1.0, 0.0
    agree = float(np.mean(p0.argmax(axis=1) == p1.argmax(axis=1)))
    diff = float(np.nanmax(np.abs(p0 - p1)))
    return agree, diff if np.isfinite(diff) else float("inf")


@dataclasses.dataclass(frozen=True)
class Gate:
    """The gate's thresholds."""

    min_agreement: float = MIN_AGREEMENT
    """Share of classes that must equal fp32's."""
    max_prob_diff: float = MAX_PROB_DIFF
    """Largest allowed difference of a calibrated probability."""
    temperature: float = 1.0
    """The model's calibration temperature (probabilities are softmax(logits / T))."""


def check_gate(
    run_logits: Callable[[str], np.ndarray],
    requested: str,
    device: torch.device | str,
    gate: Gate | None = None,
) -> GateResult:
    """Decide the run's precision: resolve ``requested``, and gate a reduced one against fp32.

    ``run_logits(precision)`` returns the logits (N, K) of the gate's stamps computed in that
    precision (``"fp32"``, ``"bf16"`` or ``"fp16"``). A reduced precision that disagrees, or
    that fails to run at all, falls back to fp32 with the reason (also logged).
    """
    gate = gate or Gate()
    dev = torch.device(device)
    candidate, why = resolve(requested, dev)
    if candidate == "fp32":
        return GateResult(requested, "fp32", dev.type, why)
    reference = run_logits("fp32")
    try:
        reduced = run_logits(candidate)
    except (RuntimeError, TypeError, NotImplementedError) as exc:  # e.g. fp16 kernels missing
        reason = f"{why}; {candidate} failed to run ({type(exc).__name__}: {exc}): fp32 instead"
        logger.warning("precision gate: %s", reason)
        return GateResult(requested, "fp32", dev.type, reason, len(reference))
    agree, diff = compare(reference, reduced, gate.temperature)
    n = len(reference)
    ok = agree >= gate.min_agreement and diff <= gate.max_prob_diff
    verdict = (
        f"class agreement {agree:.2%} (>= {gate.min_agreement:.1%} needed), largest probability "
        f"difference {diff:.2g} (<= {gate.max_prob_diff:g} allowed) on {n} stamps"
    )
    if ok:
        logger.info("precision gate passed: %s uses %s; %s", dev.type, candidate, verdict)
        return GateResult(
            requested, candidate, dev.type, f"{why}; gate passed: {verdict}", n, agree, diff
        )
    reason = f"{why}; gate failed: {verdict}: fp32 instead"
    logger.warning("precision gate: %s", reason)
    return GateResult(requested, "fp32", dev.type, reason, n, agree, diff)
