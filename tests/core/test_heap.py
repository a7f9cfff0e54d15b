"""core.heap: a worker that keeps its freed memory stops faulting its pages in anew."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from iic_survey.core import heap

# 40 MB blocks: above the 32 MB that glibc's own threshold ever rises to, so without the
# setting each one is a fresh mmap whose 10,000 pages fault in when touched.
_LOOP = """
import ctypes, resource, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "retain":
    from iic_survey.core.heap import retain_freed_memory
    assert retain_freed_memory()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
    block = libc.malloc(40 * 2**20)
    ctypes.memset(block, 1, 40 * 2**20)  # every page touched, as a tensor's are
    libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc"
)


@glibc
def test_repeated_large_blocks_reuse_their_pages_once_retained() -> None:
    default, retained = _faults("default"), _faults("retain")
    assert default > 30 * 9_000  # each 40 MB block faulted in again
    assert retained < 3 * 10_240  # the first block's pages, reused (plus the interpreter's)


@glibc
def test_it_reports_that_it_set_the_thresholds() -> None:
    assert heap.retain_freed_memory() is True
    assert heap.retain_freed_memory() is True  # idempotent


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    heap.retain_freed_memory.cache_clear()

    def no_libc(name: str) -> None:
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(heap.ctypes, "CDLL", no_libc)
    try:
        assert heap.retain_freed_memory() is False
    finally:
        heap.retain_freed_memory.cache_clear()
