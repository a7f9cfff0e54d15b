"""Which arithmetic a model runs in, and the gate a faster plan must pass first.

``--precision`` is one of :data:`PRECISIONS`. A reduced float precision runs as
``torch.autocast`` (:func:`autocast`): the weights stay fp32, convolutions and matrix products
run in the reduced type, the logits and embeddings come back as fp32. ``int8``
(:mod:`iic_survey.model.quantized`) runs the image encoder post-training quantized for x86
CPUs, the fast arithmetic of a CPU without native bf16. A *mixed plan*, :data:`MIXED`
(``bf16-late``), keeps the early layers fp32 and runs only :data:`LATE_MODULES` under bf16
autocast; it is not a ``--precision`` choice: the gate tries it when full bf16 fails
(:data:`FALLBACKS`). :func:`plan` turns a precision into a :class:`Plan`.

A plan is a hope until it is checked, on what the catalog gets and on what the run pays.
:func:`check_gate` is given the candidates (:func:`candidates`: for ``auto`` every plan this
device might run faster, bf16 and the mixed plan where bf16 is native, int8 on an x86 CPU) and

1. times each against fp32 on the run's device (``speed``, a ratio: > 1 is faster); ``auto``
   drops those not at least :data:`AUTO_MIN_SPEEDUP` faster, so it never picks a slower plan;
2. compares each (fastest first) with fp32 as the catalog scores rows (``T(W1)`` per row, then
   the outlier and subset rules: :mod:`iic_survey.model.agreement`) on the gate set; a plan
   passes when the one-sided 95 % lower bound of its row agreement is at least
   :data:`MIN_AGREEMENT` and no probability moves by more than :data:`MAX_PROB_DIFF` (a NaN
   counts as a disagreement and as an infinite difference);
3. uses the first that passes, else fp32, and records every plan tried, its speed, its
   agreement and bound or why it failed to build (:class:`GateResult`, into ``_run.json``).

An explicit ``--precision`` that passes is used even when the device runs it slower than fp32,
with a warning giving the measured ratio (``GateResult.warning``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from iic_survey.core.config import did_you_mean
from iic_survey.model.agreement import compare as compare_views
from iic_survey.model.agreement import compare_logits as compare  # noqa: F401  (re-exported)
from iic_survey.model.agreement import lower_bound, softmax_view
from iic_survey.model.quantized import int8_available

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16", "int8")
"""Choices of ``--precision``."""
MIN_AGREEMENT = 0.995
"""What the one-sided 95 % lower bound of the share of the gate's rows that the catalog gets
unchanged (class, outlier flag, subset) must reach."""
MAX_PROB_DIFF = 0.01
"""Largest allowed difference of any calibrated probability from fp32's."""
GATE_STAMPS = 2048
"""Rows the gate compares when the model directory has no gate set (the first rows of the run's
first pixel; a bound of 99.5 % needs at least 598 that all agree)."""
AUTO_MIN_SPEEDUP = 1.1
"""``auto`` considers only plans measured at least this much faster than fp32 (a margin over
the timing's noise, so that ``auto`` is never slower than fp32)."""
MIXED = "bf16-late"
"""The mixed plan: early layers fp32, :data:`LATE_MODULES` in bf16."""
LATE_MODULES: tuple[str, ...] = ("image.conv4", "image.conv5", "image.cbam2")
"""Submodules (``Classifier.get_submodule`` names) the mixed plan runs in bf16."""
INT8 = "int8"
"""The int8 plan (:mod:`iic_survey.model.quantized`)."""
RUN_PRECISIONS: tuple[str, ...] = ("fp32", "bf16", MIXED, "fp16", INT8)
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


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision; None for fp32 (the mixed plan: :func:`plan`)."""
    if precision == MIXED:
        raise ValueError(f"{MIXED} is a plan, not one dtype: use precision.plan({MIXED!r})")
    check_precision(precision)
    if precision == "auto":
        raise ValueError("resolve 'auto' first (precision.candidates)")
    if precision == INT8:
        raise ValueError("int8 is a quantized model, not an autocast dtype: use precision.plan")
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
    int8: bool = False
    """The model is the int8 one (:func:`~iic_survey.model.quantized.quantize_int8`)."""


def plan(precision: str) -> Plan:
    """The :class:`Plan` of a precision a run may use (one of :data:`RUN_PRECISIONS`)."""
    if precision == MIXED:
        return Plan(torch.bfloat16, LATE_MODULES)
    if precision == INT8:
        return Plan(None, int8=True)
    return Plan(autocast_dtype(precision))


def candidates(requested: str, device: torch.device | str) -> tuple[tuple[str, ...], str]:
    """(plans the gate tries, why) for a request on a device; empty: fp32, no gate.

    ``auto``: every plan that may be faster here (bf16 and the mixed plan where bf16 is
    native; int8 on a CPU with the x86 quantized engine); the gate keeps those measured faster.
    An explicit choice: it, then its :data:`FALLBACKS`.
    """
    check_precision(requested)
    dev = torch.device(device)
    if requested == "fp32":
        return (), "fp32 asked for"
    if requested != "auto":
        return (requested, *FALLBACKS.get(requested, ())), f"{requested} asked for"
    if dev.type == "cuda":
        bf16 = cuda_has_bf16()
        why = "the CUDA device has native bf16" if bf16 else "the CUDA device has no native bf16"
        return (("bf16", MIXED) if bf16 else ()), f"auto: {why}"
    plans: tuple[str, ...] = ("bf16", MIXED) if cpu_has_native_bf16() else ()
    plans += (INT8,) if dev.type == "cpu" and int8_available() else ()
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return plans, f"auto: {dev.type} with {native}, candidates {', '.join(plans) or 'none'}"


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

View = Mapping[str, np.ndarray]
"""What the catalog gets of the gate's rows (:mod:`iic_survey.model.agreement`)."""
_BUILD_ERRORS = (
    RuntimeError, TypeError, NotImplementedError, ValueError, AssertionError, ImportError
)  # fmt: skip
"""What a plan that cannot be built or run here raises (no kernel, no engine, no submodule)."""


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
    """Why: the candidates, each plan's speed and verdict, or why it failed."""
    n_stamps: int = 0
    """Rows the gate compared (0: no gate ran)."""
    agreement: float | None = None
    """Share of those rows the catalog gets unchanged (class, outlier flag, subset; a NaN
    probability is a change), of the plan used, else of the last one compared."""
    max_prob_diff: float | None = None
    """Largest difference of a calibrated probability (``T(W1)``) from fp32's, same plan."""
    tried: tuple[dict[str, Any], ...] = ()
    """Every plan the gate considered, in order: ``precision``, ``passed``, ``speed``,
    ``agreement``, ``lower_bound``, ``max_prob_diff`` and ``error`` (why it failed to build or
    run, or why it was not compared)."""
    lower_bound: float | None = None
    """One-sided 95 % lower bound of ``agreement`` (what the gate holds against
    :data:`MIN_AGREEMENT`)."""
    speed: float | None = None
    """The plan used: its speed over fp32's, measured on the run's device (None: not timed)."""
    gate_set: str = ""
    """Where the gate's rows came from (the model's gate set, or the run's first rows)."""
    warning: str | None = None
    """Set when the plan used runs slower than fp32 here (an explicit ``--precision``)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Gate:
    """The gate's thresholds."""

    min_agreement: float = MIN_AGREEMENT
    """What the lower bound of the share of unchanged rows must reach."""
    max_prob_diff: float = MAX_PROB_DIFF
    """Largest allowed difference of a calibrated probability."""
    auto_min_speedup: float = AUTO_MIN_SPEEDUP
    """``auto`` compares only plans at least this much faster than fp32."""
    confidence: float = 0.95
    """Confidence of the lower bound."""


def _view(out: View | np.ndarray) -> View:
    """A catalog view; bare logits become softmax at T = 1 and their top class."""
    return softmax_view(out) if isinstance(out, np.ndarray) else out


def _trial(
    run: Callable[[str], View | np.ndarray], candidate: str, reference: View, gate: Gate
) -> tuple[dict[str, Any], str]:
    """One plan through the gate: (its ``tried`` entry, a sentence for the reason)."""
    entry: dict[str, Any] = {"precision": candidate, "passed": False, "error": None}
    entry.update(agreement=None, lower_bound=None, max_prob_diff=None)
    try:
        view = _view(run(candidate))
    except _BUILD_ERRORS as exc:
        entry["error"] = f"{type(exc).__name__}: {exc}"
        return entry, f"{candidate} failed to run ({entry['error']})"
    agree, n, diff = compare_views(reference, view)
    bound = lower_bound(agree, n, gate.confidence)
    entry.update(agreement=agree / n if n else None, lower_bound=bound, max_prob_diff=diff)
    entry["passed"] = n > 0 and bound >= gate.min_agreement and diff <= gate.max_prob_diff
    verdict = (
        f"{agree} of {n} rows unchanged ({agree / max(n, 1):.2%}, {gate.confidence:.0%} lower "
        f"bound {bound:.2%}, >= {gate.min_agreement:.1%} needed), largest probability "
        f"difference {diff:.2g} (<= {gate.max_prob_diff:g} allowed)"
    )
    return entry, f"{candidate} gate {'passed' if entry['passed'] else 'failed'}: {verdict}"


def _timed(
    speed: Callable[[str], float] | None, plans: tuple[str, ...], auto: bool, gate: Gate
) -> tuple[list[str], list[dict[str, Any]], list[str], dict[str, float]]:
    """Time each plan: (plans to compare, in order; entries and notes of those dropped; speeds).

    A plan that fails to build is dropped; ``auto`` also drops plans not at least
    ``gate.auto_min_speedup`` faster than fp32 and compares the rest fastest first.
    """
    order, dropped, notes, speeds = list(plans), [], [], {}
    for name in plans if speed is not None else ():
        entry = {"precision": name, "passed": False, "agreement": None, "lower_bound": None,
                 "max_prob_diff": None, "speed": None, "error": None}  # fmt: skip
        try:
            speeds[name] = entry["speed"] = float(speed(name))  # type: ignore[misc]
        except _BUILD_ERRORS as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            notes.append(f"{name} failed to build ({entry['error']})")
        else:
            if not auto or speeds[name] >= gate.auto_min_speedup:
                continue
            entry["error"] = f"not compared: {speeds[name]:.2f}x fp32's speed here"
            notes.append(f"{name} runs at {speeds[name]:.2f}x fp32's speed here: not compared")
        order.remove(name)
        dropped.append(entry)
    if auto and speeds:
        order.sort(key=lambda name: -speeds[name])
    return order, dropped, notes, speeds


def check_gate(
    run: Callable[[str], View | np.ndarray],
    requested: str,
    device: torch.device | str,
    gate: Gate | None = None,
    speed: Callable[[str], float] | None = None,
) -> GateResult:
    """Decide the run's precision: time the candidates, gate them against fp32, pick one.

    ``run(precision)`` returns the catalog view of the gate's rows computed in that plan (or
    bare logits (N, K), scored as softmax at T = 1); ``speed(precision)`` its measured speed
    over fp32's on the run's device (None: not timed, ``auto`` then keeps every candidate).
    Every plan considered is in the result (``tried``) and the reason says why (also logged).
    """
    gate = gate or Gate()
    dev = torch.device(device)
    plans, why = candidates(requested, dev)
    if not plans:
        return GateResult(requested, "fp32", dev.type, why)
    order, tried, notes, speeds = _timed(speed, plans, requested == "auto", gate)
    notes.insert(0, why)
    reference = _view(run("fp32")) if order else {"p": np.zeros((0, 3))}
    n = len(reference["p"])
    for name in order:
        entry, note = _trial(run, name, reference, gate)
        entry["speed"] = speeds.get(name)
        tried.append(entry)
        notes.append(note + (f", {speeds[name]:.2f}x fp32's speed" if name in speeds else ""))
        if entry["passed"]:
            result = GateResult(requested, name, dev.type, "; ".join(notes), n, tried=tuple(tried))
            return _passed(result, entry)
    reason = "; ".join(notes) + ": fp32 instead"
    logger.warning("precision gate: %s", reason)
    last: dict[str, Any] = next((t for t in reversed(tried) if t["agreement"] is not None), {})
    return GateResult(requested, "fp32", dev.type, reason, n, last.get("agreement"),
                      last.get("max_prob_diff"), tuple(tried), last.get("lower_bound"))  # fmt: skip


def _passed(result: GateResult, entry: dict[str, Any]) -> GateResult:
    """The result of a plan that passed, warned about when it is slower than fp32 here."""
    speed, warning = entry.get("speed"), None
    if speed is not None and speed < 1.0:
        warning = (
            f"--precision {result.requested}: {result.used} runs at {speed:.2f}x the speed of "
            f"fp32 on this {result.device} (measured by the gate); used as asked"
        )
        logger.warning("precision: %s", warning)
    logger.info("precision gate passed: %s uses %s; %s", result.device, result.used, result.reason)
    return dataclasses.replace(
        result, agreement=entry["agreement"], max_prob_diff=entry["max_prob_diff"],
        lower_bound=entry["lower_bound"], speed=speed,
        warning=warning,
    )  # fmt: skip
