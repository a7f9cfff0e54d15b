"""iic_survey.core.config: 'did you mean' hints and configs rebuilt from their JSON form."""

from __future__ import annotations

import dataclasses

import pytest

from iic_survey.core.config import check_choice, closest, config_from_dict, did_you_mean


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str = "a"
    sizes: tuple[int, ...] = (1, 2)
    scale: float = 1.0


def test_closest_and_did_you_mean() -> None:
    assert closest("precison", ["precision", "prefix"]) == "precision"
    assert closest("zzz", ["precision", "prefix"]) is None
    assert did_you_mean("bf61", ["bf16", "fp32"]) == " (did you mean 'bf16'?)"
    assert did_you_mean("zzz", ["bf16", "fp32"]) == ""


def test_check_choice_names_what_was_allowed_and_the_nearest() -> None:
    check_choice("--precision", "fp32", ("fp32", "bf16"))
    with pytest.raises(ValueError) as err:
        check_choice("--precision", "fp23", ("fp32", "bf16"))
    message = str(err.value)
    assert "--precision must be one of ('fp32', 'bf16')" in message
    assert "got 'fp23'" in message and "did you mean 'fp32'?" in message


def test_config_from_dict_turns_lists_into_tuples() -> None:
    cfg = config_from_dict(_Config, {"name": "b", "sizes": [3, 4]})
    assert cfg == _Config(name="b", sizes=(3, 4))
    assert config_from_dict(_Config, dataclasses.asdict(cfg)) == cfg  # JSON round trip
    assert config_from_dict(_Config, {}) == _Config()


def test_config_from_dict_refuses_an_unknown_key_with_a_hint() -> None:
    hint = r"unknown _Config field 'scal' \(did you mean 'scale'\?\)"
    with pytest.raises(ValueError, match=hint):
        config_from_dict(_Config, {"scal": 2.0})
