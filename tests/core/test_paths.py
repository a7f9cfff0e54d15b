"""iic_survey.core.paths: the jobs' defaults live under one absolute root."""

from __future__ import annotations

import pathlib

import pytest

from iic_survey.core import paths


def test_defaults_follow_iic_survey_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(paths.ENV_HOME, str(tmp_path / "h"))
    assert paths.home() == tmp_path / "h"
    assert {
        f.__name__: f()
        for f in (
            paths.default_sky,
            paths.default_training_set,
            paths.default_runs,
            paths.default_model,
            paths.default_catalog,
        )
    } == {
        "default_sky": str(tmp_path / "h/sky"),
        "default_training_set": str(tmp_path / "h/training_set"),
        "default_runs": str(tmp_path / "h/runs"),
        "default_model": str(tmp_path / "h/model"),
        "default_catalog": str(tmp_path / "h/catalog"),
    }


def test_home_is_absolute_whatever_the_variable_says(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray job submit --working-dir .`` runs jobs in a copy: a relative default would vanish."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(paths.ENV_HOME, "rel/dir")
    assert paths.home() == tmp_path / "rel/dir"
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv(paths.ENV_HOME, "~/x")
    assert paths.home() == tmp_path / "user/x"


def test_home_defaults_to_iic_survey_in_the_home_folder(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(paths.ENV_HOME, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert paths.home() == tmp_path / "iic_survey"
    monkeypatch.setenv(paths.ENV_HOME, "")  # empty counts as unset
    assert paths.home() == tmp_path / "iic_survey"
