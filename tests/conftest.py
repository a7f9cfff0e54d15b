"""Shared test configuration: reference data, and the fixture modules under tests/fixtures."""

from __future__ import annotations

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

pytest_plugins: list[str] = [
    "tests.fixtures.ray_cluster",
    "tests.fixtures.irsa",
    "tests.fixtures.model",
    "tests.fixtures.s3",
    "tests.fixtures.sky",
]


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
