"""Progress a person can read on a long run: done/total, the current rate, and the time left.

:class:`Progress` logs one line every ``interval_s`` from a background thread, so a line comes
even while the stream is busy with one dense pixel::

    progress: 1,024/12,288 pixels (8.3 %), 6,180,112/74,763,000 sources (8.3 %); 2,412 sources/s
    now, 2,301 on average; about 7h54m left

The current rate is over the last few intervals (a sliding window), the estimate of the time
left is the sources still to do at that rate. The counts come from a callable the driver
provides (its own counters), read without locking: two integers, at worst one interval stale.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

_WINDOW = 5
"""Intervals the current rate is measured over."""


def _duration(seconds: float) -> str:
    """``1h02m`` / ``4m05s`` / ``12s``."""
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


@dataclasses.dataclass
class Progress:
    """Periodic progress lines for a run of ``total_pixels`` pixels and ``total_rows`` sources."""

    total_pixels: int
    total_rows: int
    counts: Callable[[], tuple[int, int]]
    """Returns (pixels done, sources done) now."""
    interval_s: float = 30.0
    t0: float = dataclasses.field(default_factory=time.monotonic)
    _samples: collections.deque[tuple[float, int]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=_WINDOW + 1)
    )
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def line(self, now: float, pixels: int, rows: int) -> str:
        """The progress line for ``pixels`` and ``rows`` done at ``now`` (records a sample)."""
        self._samples.append((now, rows))
        t_old, r_old = self._samples[0]
        current = (rows - r_old) / (now - t_old) if now > t_old else 0.0
        average = rows / max(now - self.t0, 1e-9)
        left = self.total_rows - rows
        rate = current if current > 0 else average
        eta = f"about {_duration(left / rate)} left" if rate > 0 and left > 0 else "finishing"
        return (
            f"progress: {pixels:,}/{self.total_pixels:,} pixels "
            f"({100 * pixels / max(self.total_pixels, 1):.1f} %), {rows:,}/{self.total_rows:,} "
            f"sources ({100 * rows / max(self.total_rows, 1):.1f} %); {current:,.0f} sources/s "
            f"now, {average:,.0f} on average; {eta}"
        )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            pixels, rows = self.counts()
            logger.info("%s", self.line(time.monotonic(), pixels, rows))

    def __enter__(self) -> Progress:
        self._samples.append((self.t0, 0))
        self._thread = threading.Thread(target=self._loop, name="iic-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
