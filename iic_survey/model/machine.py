"""What a row's numbers were computed with: the CPU's instruction sets as actually usable.

torch and numpy pick their kernels at import from what the CPU has, unless told otherwise
(``ATEN_CPU_CAPABILITY``, ``NPY_DISABLE_CPU_FEATURES``, ``OPENBLAS_CORETYPE``). A request can
ask for more than the CPU has: torch then *reports* the requested capability from
``get_cpu_capability()`` while it cannot run those kernels. :func:`cpu_capability` therefore
reports what the CPU can run, capped by what was requested, and :func:`check_forced` refuses a
request the CPU lacks, with a message saying what it has. :func:`provenance` is the block a
run's ``_run.json`` records (README "Reproducibility").
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Mapping
from typing import Any

LEVELS: tuple[str, ...] = ("default", "avx2", "avx512")
"""torch's x86 CPU capabilities (``ATEN_CPU_CAPABILITY``), lowest first."""

_NEEDS: dict[str, tuple[str, ...]] = {
    "default": (),
    "avx2": ("avx2", "fma"),
    "avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where there is none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` where ``/proc/cpuinfo`` has none)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def native_capability(flags: frozenset[str] | None = None) -> str:
    """The highest torch capability the CPU can run (``default`` off x86 or without flags)."""
    have = cpu_flags() if flags is None else flags
    best = "default"
    for level in LEVELS[1:]:
        if all(f in have for f in _NEEDS[level]):
            best = level
    return best


def check_forced(env: Mapping[str, str] | None = None, flags: frozenset[str] | None = None) -> None:
    """Raise ValueError if ``ATEN_CPU_CAPABILITY`` asks for more than the CPU can run."""
    env = os.environ if env is None else env
    asked = str(env.get("ATEN_CPU_CAPABILITY", "") or "").strip().lower()
    if not asked:
        return
    if asked not in LEVELS:
        raise ValueError(f"ATEN_CPU_CAPABILITY={asked!r} is not one of {list(LEVELS)}")
    native = native_capability(flags)
    if LEVELS.index(asked) > LEVELS.index(native):
        raise ValueError(
            f"ATEN_CPU_CAPABILITY={asked} is forced, but this CPU ({cpu_name()}) runs at most "
            f"{native!r}: torch would report {asked.upper()} while running other kernels. "
            f"Unset it or force one of {list(LEVELS[: LEVELS.index(native) + 1])}"
        )


def cpu_capability(env: Mapping[str, str] | None = None) -> str:
    """The torch kernels in use: the requested capability capped at what the CPU can run."""
    env = os.environ if env is None else env
    native = native_capability()
    asked = str(env.get("ATEN_CPU_CAPABILITY", "") or "").strip().lower()
    if asked in LEVELS and LEVELS.index(asked) < LEVELS.index(native):
        return asked
    return native


def numpy_simd() -> dict[str, list[str]]:
    """numpy's SIMD extensions: baseline, found (in use) and not found."""
    from numpy._core._multiarray_umath import (  # type: ignore[import-not-found,unused-ignore]
        __cpu_baseline__,
        __cpu_dispatch__,
        __cpu_features__,
    )

    found = [f for f in __cpu_dispatch__ if __cpu_features__.get(f)]
    return {
        "baseline": list(__cpu_baseline__),
        "found": found,
        "not_found": [f for f in __cpu_dispatch__ if f not in found],
    }


def provenance(precision: str | None = None) -> dict[str, Any]:
    """What ``_run.json`` records so that a reader can reproduce a row's numbers."""
    import numpy as np
    import pyarrow as pa
    import torch

    env = {
        k: os.environ[k]
        for k in (
            "ATEN_CPU_CAPABILITY",
            "NPY_DISABLE_CPU_FEATURES",
            "OPENBLAS_CORETYPE",
            "ONEDNN_MAX_CPU_ISA",
        )
        if os.environ.get(k)
    }
    return {
        "cpu": cpu_name(),
        "torch_cpu_capability": cpu_capability(),
        "cpu_native_capability": native_capability(),
        "numpy_simd": numpy_simd(),
        "forced": env,
        "versions": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "python": platform.python_version(),
        },
        "precision": precision,
    }
