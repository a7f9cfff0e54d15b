"""A progress bar for a person at a terminal; nothing where output goes to a log.

:class:`Bar` redraws one line in place (``\\r``) on a terminal, at most every ``min_interval_s``::

    classify  [##########----------]  51.2 %  6,180,112/12,070,000 sources  2,412/s  41m left

and draws nothing when its stream is not a terminal (a log file, ``ray job submit``, CI): the
periodic log lines the long steps already write are what a log gets. :func:`interactive` says
which of the two a stream is.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_WIDTH = 20


def interactive(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default: stderr) is a terminal a person watches."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Bar:
    """``done/total`` of one step as a bar on a terminal (a no-op elsewhere)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "",
        stream: TextIO | None = None,
        min_interval_s: float = 0.5,
    ) -> None:
        self.total, self.desc, self.unit = max(int(total), 0), desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = interactive(self.stream)
        self.min_interval_s = min_interval_s
        self.done = 0
        self.t0 = time.monotonic()
        self._last = -float("inf")

    def text(self, now: float) -> str:
        """The bar's line for ``self.done`` at ``now``."""
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = round(frac * _WIDTH)
        rate = self.done / max(now - self.t0, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.desc}  [{'#' * filled}{'-' * (_WIDTH - filled)}]  {100 * frac:5.1f} %  "
            f"{self.done:,}/{self.total:,}{unit}  {rate:,.0f}/s  {_duration(left)} left"
        )

    def update(self, n: int = 1, *, to: int | None = None) -> None:
        """Advance by ``n`` (or set the count ``to``); redraw if due."""
        self.done = int(to) if to is not None else self.done + int(n)
        now = time.monotonic()
        if self.enabled and (now - self._last >= self.min_interval_s or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self.text(now))
            self.stream.flush()

    def close(self) -> None:
        """End the bar's line (a terminal keeps the last state visible)."""
        if self.enabled:
            self.stream.write("\r" + self.text(time.monotonic()) + "\n")
            self.stream.flush()

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
