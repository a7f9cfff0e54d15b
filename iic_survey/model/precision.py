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

A run may also use a *mixed plan*, :data:`MIXED` (``bf16-late``): the early layers (stem, RFB,
conv2, conv3) stay fp32 and only the late ones (:data:`LATE_MODULES`: conv4, conv5 and the last
CBAM) run under bf16 autocast, their outputs cast back to fp32 before the head. It is not a
``--precision`` choice: when full bf16 fails the gate, the gate tries it next
(:data:`FALLBACKS`) before falling back to fp32, and records every plan it tried. A trained
model's early layers are the sensitive ones (the demo model: 98.92 % of classes kept in full
bf16, 99.92 % in the mixed plan), while most of the convolution cost is late. :func:`plan` turns
a precision into a :class:`Plan`, :func:`autocast_modules` runs it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Iterator
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
MIXED = "bf16-late"
"""The mixed plan: early layers fp32, :data:`LATE_MODULES` in bf16."""
LATE_MODULES: tuple[str, ...] = ("image.conv4", "image.conv5", "image.cbam2")
"""Submodules (``Classifier.get_submodule`` names) the mixed plan runs in bf16."""
RUN_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", MIXED, "fp16")
"""What a run may use (``GateResult.used``): the resolved choices plus the mixed plan."""
FALLBACKS: dict[str, tuple[str, ...]] = {"bf16": (MIXED,)}
"""Plans the gate tries, in order, when a reduced precision fails it (then fp32)."""

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
    """The autocast dtype of a resolved precision; None for fp32 (the mixed plan: :func:`plan`)."""
    if precision == MIXED:
        raise ValueError(f"{MIXED} is a plan, not one dtype: use precision.plan({MIXED!r})")
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


@dataclasses.dataclass(frozen=True)
class Plan:
    """How a model runs: an autocast dtype, for the whole model or only some submodules."""

    dtype: torch.dtype | None
    """Autocast dtype; None: fp32."""
    modules: tuple[str, ...] = ()
    """Submodules run under autocast (outputs cast back to fp32); empty: the whole model."""


def plan(precision: str) -> Plan:
    """The :class:`Plan` of a precision a run may use (one of :data:`RUN_PRECISIONS`)."""
    if precision == MIXED:
        return Plan(torch.bfloat16, LATE_MODULES)
    return Plan(autocast_dtype(precision))


@contextlib.contextmanager
def autocast_modules(
    model: torch.nn.Module, device: torch.device, dtype: torch.dtype | None, names: tuple[str, ...]
) -> Iterator[None]:
    """Within the block, only ``model``'s submodules ``names`` run under autocast in ``dtype``.

    Each enters autocast when called (a forward pre-hook) and leaves it when done, returning its
    output as fp32 (a forward hook), so everything else runs in fp32 as before. The hooks are
    removed on leaving the block. A no-op without ``dtype`` or ``names``; a ValueError when the
    model has no such submodule (e.g. the mixed plan on the colour-only model).
    """
    if dtype is None or not names:
        yield
        return
    active: list[Any] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        ctx = torch.autocast(torch.device(device).type, dtype=dtype)
        ctx.__enter__()
        active.append(ctx)

    def leave(module: torch.nn.Module, args: Any, output: Any) -> Any:
        active.pop().__exit__(None, None, None)
        return output.float() if isinstance(output, torch.Tensor) else output

    handles = []
    try:
        for name in names:
            try:
                module = model.get_submodule(name)
            except AttributeError as exc:
                raise ValueError(f"this model has no submodule {name!r} to run in {dtype}") from exc
            handles += [
                module.register_forward_pre_hook(enter),
                module.register_forward_hook(leave),
            ]
        yield
    finally:
        for handle in handles:
            handle.remove()
        while active:  # a submodule raised between its hooks
            active.pop().__exit__(None, None, None)


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
    """Largest difference of a calibrated probability from fp32's (of the plan used, else of
    the last one tried)."""
    tried: tuple[dict[str, Any], ...] = ()
    """Every reduced plan the gate tried, in order: ``precision``, ``passed``, ``agreement``,
    ``max_prob_diff`` and ``error`` (why it failed to run, else None)."""

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


def _trial(
    run_logits: Callable[[str], np.ndarray], candidate: str, reference: np.ndarray, gate: Gate
) -> tuple[dict[str, Any], str]:
    """One plan through the gate: (its ``tried`` entry, a sentence for the reason)."""
    entry: dict[str, Any] = {"precision": candidate, "passed": False, "error": None}
    entry.update(agreement=None, max_prob_diff=None)
    try:
        reduced = run_logits(candidate)
    except (RuntimeError, TypeError, NotImplementedError, ValueError) as exc:  # no kernel, no plan
        entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry, f"{candidate} failed to run ({entry['error']})"
    agree, diff = compare(reference, reduced, gate.temperature)
    entry.update(agreement=agree, max_prob_diff=diff)
    entry["passed"] = agree >= gate.min_agreement and diff <= gate.max_prob_diff
    verdict = (
        f"class agreement {agree:.2%} (>= {gate.min_agreement:.1%} needed), largest probability "
        f"difference {diff:.2g} (<= {gate.max_prob_diff:g} allowed) on {len(reference)} stamps"
    )
    return entry, f"{candidate} gate {'passed' if entry['passed'] else 'failed'}: {verdict}"


def check_gate(
    run_logits: Callable[[str], np.ndarray],
    requested: str,
    device: torch.device | str,
    gate: Gate | None = None,
) -> GateResult:
    """Decide the run's precision: resolve ``requested``, and gate a reduced one against fp32.

    ``run_logits(precision)`` returns the logits (N, K) of the gate's stamps computed in that
    precision (``"fp32"``, ``"bf16"``, ``"bf16-late"`` or ``"fp16"``). The resolved precision is
    tried first, then its :data:`FALLBACKS` (bf16: the mixed plan); the first that agrees is
    used. If none does, or none runs at all, the run uses fp32. Every plan tried is in the
    result (``tried``) and the reason says why (also logged).
    """
    gate = gate or Gate()
    dev = torch.device(device)
    candidate, why = resolve(requested, dev)
    if candidate == "fp32":
        return GateResult(requested, "fp32", dev.type, why)
    reference = run_logits("fp32")
    n, tried, notes = len(reference), [], [why]
    for name in (candidate, *FALLBACKS.get(candidate, ())):
        entry, note = _trial(run_logits, name, reference, gate)
        tried.append(entry)
        notes.append(note)
        if entry["passed"]:
            reason = "; ".join(notes)
            logger.info("precision gate passed: %s uses %s; %s", dev.type, name, reason)
            agree, diff = entry["agreement"], entry["max_prob_diff"]
            return GateResult(requested, name, dev.type, reason, n, agree, diff, tuple(tried))
    reason = "; ".join(notes) + ": fp32 instead"
    logger.warning("precision gate: %s", reason)
    agree, diff = tried[-1]["agreement"], tried[-1]["max_prob_diff"]
    return GateResult(requested, "fp32", dev.type, reason, n, agree, diff, tuple(tried))
