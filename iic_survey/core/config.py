"""What every config and option parser shares: 'did you mean' hints, configs from JSON dicts."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to ``name`` (difflib's ratio >= 0.6), or None."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return close[0] if close else None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    near = closest(name, choices)
    return f" (did you mean {near!r}?)" if near is not None else ""


def check_choice(what: str, value: str, allowed: Iterable[str]) -> None:
    """Raise ValueError naming ``what``, the allowed values and the closest one if ``value`` is
    not among ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(
            f"{what} must be one of {allowed}, got {value!r}{did_you_mean(value, allowed)}"
        )


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """A frozen config dataclass from its JSON form: lists become tuples, unknown keys raise."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field {unknown[0]!r}{did_you_mean(unknown[0], names)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
