"""The package's public API: the entry points re-exported by ``iic_survey``, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest

import iic_survey


def test_every_name_in_all_resolves_to_its_definition():
    for name in iic_survey.__all__:
        value = getattr(iic_survey, name)
        if name in iic_survey._ENTRY_POINTS:
            assert value.__module__ == iic_survey._ENTRY_POINTS[name], name
    assert set(iic_survey._ENTRY_POINTS) <= set(iic_survey.__all__) <= set(dir(iic_survey))
    with pytest.raises(AttributeError, match="no attribute 'reed'"):
        _ = iic_survey.reed  # type: ignore[attr-defined]


def test_importing_the_package_imports_no_heavy_dependency():
    code = (
        "import sys, iic_survey\n"
        "print(sorted(m for m in ('torch', 'ray', 'pandas', 'pyarrow', 'numpy', 'fsspec')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
