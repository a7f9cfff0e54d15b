"""Run the numerics-sensitive tests again with lower instruction sets forced (issue 24).

A machine with AVX-512 then also runs the kernels an AVX2-only CPU runs (and torch's generic
ones), so a test that silently depends on the CPU fails here, not on a user's machine. Per
level below this CPU's own (``avx2`` on an AVX-512 CPU, then ``default``) it sets

* ``ATEN_CPU_CAPABILITY``: torch's kernels;
* ``ONEDNN_MAX_CPU_ISA=AVX2``: oneDNN's convolution kernels;
* ``NPY_DISABLE_CPU_FEATURES``: numpy's AVX-512 groups that ``numpy.show_runtime()`` lists as
  found on this CPU (none on an AVX2-only CPU);
* ``OPENBLAS_CORETYPE=Haswell``: numpy's BLAS kernels as on an AVX2 CPU (the batch-dependent
  RGB resize of issue 24 showed only under these).

It checks that each setting took effect (torch and numpy report it) and refuses a forced
capability the CPU lacks (``ATEN_CPU_CAPABILITY=avx512`` on an AVX2 CPU), naming what it has.
Usage: ``python scripts/forced_isa.py [pytest arguments]`` (default: :data:`TESTS`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from iic_survey.model import machine

TESTS = [
    "tests/stamps/test_rgb.py",
    "tests/stamps/test_maker.py",
    "tests/integration/test_batch_invariance.py",
    "tests/model/test_machine.py",
    "tests/model/test_ood.py",
    "tests/model/test_network.py::test_optimize_for_inference_keeps_outputs",
    "tests/model/test_network.py::test_the_cpu_model_batch_keeps_outputs",
    "tests/model/test_network.py::test_nan_inputs_give_finite_output",
]
"""The numerics-sensitive tests: RGB synthesis, stamps, the model, batch invariance of a run."""

_PROBE = (
    "import json, torch; from iic_survey.model import machine; "
    "print(json.dumps([torch.backends.cpu.get_cpu_capability(), machine.numpy_simd()]))"
)


def forced_env(level: str) -> dict[str, str]:
    """The environment variables that make this machine compute as a ``level`` CPU."""
    avx512 = [f for f in machine.numpy_simd()["found"] if f == "X86_V4" or f.startswith("AVX512")]
    env = {"ATEN_CPU_CAPABILITY": level, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env["OPENBLAS_CORETYPE"] = "Haswell"
    if avx512:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join(avx512)
    return env


def _check_took_effect(env: dict[str, str]) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**os.environ, **env}, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    capability, simd = json.loads(out.stdout.strip().splitlines()[-1])
    if capability.lower() != env["ATEN_CPU_CAPABILITY"]:
        raise SystemExit(f"forced-ISA: torch reports {capability}, not {env}")
    left = [f for f in simd["found"] if f == "X86_V4" or f.startswith("AVX512")]
    if env["ATEN_CPU_CAPABILITY"] != "avx512" and left:
        raise SystemExit(f"forced-ISA: numpy still uses {left} under {env}")


def main(argv: list[str]) -> int:
    try:
        machine.check_forced()
    except ValueError as e:
        print(f"forced-ISA: refused: {e}", file=sys.stderr)
        return 2
    native = machine.native_capability()
    levels = list(reversed(machine.LEVELS[: machine.LEVELS.index(native)]))
    print(f"forced-ISA: CPU {machine.cpu_name()}, native {native}; forcing {levels}")
    for level in levels:
        env = forced_env(level)
        _check_took_effect(env)
        print(f"forced-ISA: {' '.join(f'{k}={v!r}' for k, v in env.items())}", flush=True)
        args = argv or ["-m", "not slow", *TESTS]  # the whole-run check is slow: run once
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
        rc = subprocess.run(cmd, env={**os.environ, **env}, check=False).returncode
        if rc != 0:
            print(f"forced-ISA: {level}: pytest failed (rc {rc})", file=sys.stderr)
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
