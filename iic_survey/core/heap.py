"""Keeping freed memory in the process: the C heap setting of the long-lived inference workers.

glibc's ``malloc`` serves a large block (past a threshold that it raises by itself as blocks
are freed) from a fresh ``mmap`` and gives the pages back to the kernel when it is freed; it
also hands the top of its heap back once more than a threshold of it is free. A network's
activations are exactly such blocks: every forward pass allocates and frees the same few
megabytes, and where glibc's thresholds happen to settle, each pass faults its pages in anew.
Measured on the paper-sized IICnet, one thread, batch 16 (AMD EPYC, AVX-512): a process either
settled at ~72,000 page faults and 220-229 images/s, or at 460,000-720,000 faults and
175-195 images/s, at random from one start to the next; with the thresholds fixed by
:func:`retain_freed_memory` every start ran at 216-223 images/s with ~64,000 faults.

The cost is that a worker's resident memory stays at its peak (it does not shrink between
chunks): right for an actor that runs the same chunk shapes all its life, wrong for a driver.
Nothing happens where the C library is not glibc (musl, macOS, Windows).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
"""``mallopt`` parameters (``<malloc.h>``)."""

MMAP_THRESHOLD = 256 * 2**20
"""Blocks up to this size come from the heap, not from a fresh ``mmap`` (glibc's cap on it is
half of the address space; its default starts at 128 kB and rises to at most 32 MB)."""

TRIM_THRESHOLD = 1024 * 2**20
"""Free memory at the top of the heap kept up to this size instead of handed back."""


@functools.cache
def retain_freed_memory() -> bool:
    """Fix glibc's ``mmap`` and trim thresholds for this process; True when they were set.

    Idempotent. Call it once in a long-lived worker that repeats the same large allocations
    (an inference actor), before its first chunk.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to set
        return False
    gnu = getattr(libc, "gnu_get_libc_version", None)
    if gnu is None:  # musl has a mallopt that does nothing
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # an older glibc caps the mmap threshold at 32 MB (64-bit): the cap then
    mmap = any(mallopt(_M_MMAP_THRESHOLD, size) for size in (MMAP_THRESHOLD, 32 * 2**20))
    ok = mmap and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    logger.debug("glibc mmap/trim thresholds fixed: %s", ok)
    return ok
