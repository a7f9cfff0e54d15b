"""tests/conftest.py: the per-test timeout policy (120 s; ``slow`` tests more, unless marked)."""

from __future__ import annotations

import pytest

from tests.conftest import SLOW_TIMEOUT_S


def test_a_test_gets_the_default_timeout(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("timeout") is None
    assert float(request.config.getini("timeout")) == 120


@pytest.mark.slow
def test_a_slow_test_gets_the_slow_timeout(request: pytest.FixtureRequest) -> None:
    if request.config.getoption("timeout", None) is not None:
        pytest.skip("--timeout given on the command line: it applies to every test")
    assert request.node.get_closest_marker("timeout").args == (SLOW_TIMEOUT_S,)
    assert SLOW_TIMEOUT_S > 120


@pytest.mark.slow
@pytest.mark.timeout(1234)
def test_a_slow_test_keeps_its_own_timeout(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("timeout").args == (1234,)
