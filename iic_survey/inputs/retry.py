"""Retrying network reads, and reading an error's cause chain to decide what it means.

Remote tiles and IBE cutouts fail now and then for reasons that pass (time-outs, 5xx, short
reads). :class:`RetryPolicy` bounds the retries and spaces them with jittered exponential
back-off; :func:`retrying` applies it to a call, retrying only
:class:`~iic_survey.inputs.errors.TileFetchError` so that a missing, corrupt or refused tile
reaches the caller at once. fsspec and aiohttp wrap HTTP errors in other exceptions, so
:func:`error_chain`, :func:`http_status` and :func:`is_denied` look through an error's causes;
:data:`NETWORK_ERRORS` lists the exception types of a failing connection.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from iic_survey.inputs.errors import TileFetchError

T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential back-off and jitter (for network reads only)."""

    attempts: int = 4
    """Tries in all, the first included (1 = no retry)."""
    backoff_s: float = 0.5
    """Delay before the first retry; it doubles on each further retry."""
    backoff_max_s: float = 20.0
    """Upper bound of one delay (also of an honoured ``Retry-After``)."""
    jitter: float = 0.5
    """Fraction of each delay drawn at random (0: fixed delays; 1: 'full jitter')."""

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.backoff_max_s < 0:
            raise ValueError("backoff_s and backoff_max_s must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be in [0, 1], got {self.jitter}")

    def delay(self, retry: int, rng: random.Random, at_least: float = 0.0) -> float:
        """Seconds to wait before retry number ``retry`` (1-based)."""
        base = min(self.backoff_max_s, self.backoff_s * 2.0 ** (retry - 1))
        return max(min(at_least, self.backoff_max_s), base * (1.0 - self.jitter * rng.random()))


def retrying(call: Callable[[], T], policy: RetryPolicy, what: str = "read") -> T:
    """Run ``call``, retrying :class:`TileFetchError` up to ``policy.attempts`` tries in all.

    Any other exception (missing, corrupt, access denied) goes straight to the caller.
    """
    rng = random.Random()
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except TileFetchError as exc:
            if attempt == policy.attempts:
                raise TileFetchError(f"{what}: failed after {attempt} tries: {exc}") from exc
            wait = policy.delay(attempt, rng)
            logger.debug("%s: %s; retry %d in %.2f s", what, exc, attempt, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


NETWORK_ERRORS: tuple[type[BaseException], ...] = (TimeoutError, ConnectionError, EOFError)
try:  # fsspec's HTTP file system raises aiohttp errors; it is there whenever fsspec[http] is
    import aiohttp

    NETWORK_ERRORS = (*NETWORK_ERRORS, aiohttp.ClientError)
except ImportError:  # pragma: no cover
    pass


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes (fsspec wraps HTTP errors in a bare FileNotFoundError)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` or one of its causes, if any."""
    for e in error_chain(exc):
        status = getattr(e, "status", None)
        if isinstance(status, int):
            return status
    return None


def is_denied(exc: BaseException) -> bool:
    """Whether ``exc`` means the storage refused us (a PermissionError, HTTP 401 or 403)."""
    refused = any(isinstance(e, PermissionError) for e in error_chain(exc))
    return refused or http_status(exc) in (401, 403)
