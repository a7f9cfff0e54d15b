"""iic_survey.synthetic.cli: ``make-sky``'s options build the sky config, and bad ones are refused
before anything is written (the same options as ``jobs/make_sky.py``)."""

from __future__ import annotations

import argparse
import pathlib

import pytest

from iic_survey.synthetic import cli, skyfiles


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_sky_arguments(parser)
    return parser.parse_args(["root", *argv])


def test_no_options_give_the_default_demo_sky() -> None:
    args = _args()
    assert args.preset == "demo" and args.scale == pytest.approx(1e-4)
    assert cli.config_from_args(args) == skyfiles.SkyConfig()


def test_tiny_is_the_test_sky() -> None:
    assert cli.config_from_args(_args("--tiny", "--seed", "7")) == skyfiles.tiny_config(7)


def test_options_reach_the_config() -> None:
    args = _args("--seed", "3", "--n-sources", "500", "--field-size", "0.2",
                 "--fields", "10,20;30.5,-40", "--bands", "1,2,3,4", "--no-artefacts")  # fmt: skip
    assert cli.config_from_args(args) == skyfiles.SkyConfig(
        seed=3, n_sources=500, fields=((10.0, 20.0), (30.5, -40.0)), field_size_deg=0.2,
        bands=(1, 2, 3, 4), artefacts=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fields", "10,20,30"], "'ra,dec' pairs"),
        (["--fields", "ten,20"], "cannot parse --fields/--bands"),
        (["--bands", "w1"], "cannot parse --fields/--bands"),
        (["--n-sources", "3"], "n_sources must be in 10"),
    ],
)
def test_bad_options_are_refused_before_writing(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    root = tmp_path / "sky"
    with pytest.raises(SystemExit) as exit_:
        cli.cli([str(root), *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not root.exists()
