"""Shared test configuration: reference data, and the fixture modules under tests/fixtures."""

from __future__ import annotations

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SLOW_TIMEOUT_S = 600
"""Per-test timeout of ``slow`` tests without a ``timeout`` marker of their own (pyproject's
``timeout``, 120 s, is every other test's): a hung test fails within minutes, not hours."""
SHARED_DATA = REPO.parent / "shared" / "data"

pytest_plugins: list[str] = [
    "tests.fixtures.ray_cluster",
    "tests.fixtures.irsa",
    "tests.fixtures.model",
    "tests.fixtures.nodes",
    "tests.fixtures.s3",
    "tests.fixtures.sky",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--remote-data",
        action="store_true",
        help="also run tests that reach the real IRSA / S3 / SDSS services",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `remote_data` tests unless asked for, and `gpu` tests where torch sees no GPU; give
    `slow` tests :data:`SLOW_TIMEOUT_S` unless they set their own timeout.

    Done here rather than with ``-m`` in addopts, so that a user's own ``-m "not slow"`` does
    not silently re-enable tests that need the internet.
    """
    remote = config.getoption("--remote-data")
    asked = config.getoption("timeout", None) is not None  # --timeout on the command line wins
    gpu = None
    for item in items:
        if "slow" in item.keywords and item.get_closest_marker("timeout") is None and not asked:
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
        if "remote_data" in item.keywords and not remote:
            item.add_marker(pytest.mark.skip(reason="needs the internet: run with --remote-data"))
        if "gpu" in item.keywords:
            if gpu is None:
                import torch

                gpu = torch.cuda.is_available()
            if not gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    """The repository root (jobs/, cluster/, pyproject.toml live here)."""
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The team's reference data (real WISE tile grid, KubeRay CRDs), never copied into the repo."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA}")
    return SHARED_DATA
