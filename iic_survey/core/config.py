"""Small helpers the package's modules share: suggestions for misspelt names, configs from dicts."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """A frozen config dataclass from its JSON form: lists become tuples, unknown keys raise."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(
            f"unknown {cls.__name__} field {unknown[0]!r}{did_you_mean(unknown[0], names)}"
        )
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
