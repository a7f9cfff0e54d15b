"""iic_survey.model.machine: the instruction sets a run records, and forced ones it refuses."""

from __future__ import annotations

import pytest

from iic_survey.model import machine

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}


def test_native_capability_from_cpu_flags() -> None:
    assert machine.native_capability(frozenset()) == "default"
    assert machine.native_capability(AVX2) == "avx2"
    assert machine.native_capability(AVX512) == "avx512"


def test_a_forced_capability_the_cpu_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="runs at most 'avx2'"):
        machine.check_forced({"ATEN_CPU_CAPABILITY": "avx512"}, AVX2)
    with pytest.raises(ValueError, match="not one of"):
        machine.check_forced({"ATEN_CPU_CAPABILITY": "sse9"}, AVX2)
    for ok in ("", "default", "avx2"):
        machine.check_forced({"ATEN_CPU_CAPABILITY": ok}, AVX2)


def test_the_recorded_capability_is_what_the_cpu_runs(monkeypatch) -> None:
    native = machine.native_capability()
    assert machine.cpu_capability({"ATEN_CPU_CAPABILITY": "default"}) == "default"
    assert machine.cpu_capability({"ATEN_CPU_CAPABILITY": "avx512"}) == native  # never above
    monkeypatch.setattr(machine, "cpu_flags", lambda: AVX2)
    assert machine.cpu_capability({"ATEN_CPU_CAPABILITY": "avx512"}) == "avx2"


def test_provenance_names_what_a_row_was_computed_with() -> None:
    import numpy as np
    import torch

    p = machine.provenance("fp32")
    assert p["precision"] == "fp32" and p["versions"]["numpy"] == np.__version__
    assert p["versions"]["torch"] == torch.__version__ and "pyarrow" in p["versions"]
    assert p["torch_cpu_capability"] in machine.LEVELS and p["cpu"]
    assert set(p["numpy_simd"]) == {"baseline", "found", "not_found"}
