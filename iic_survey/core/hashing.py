"""One keyed hash of int64 ids, vectorised: splits, balancing and example picking all use it.

splitmix64 (Steele, Lea & Flood 2014, the finaliser of Java's ``SplittableRandom``) of
``id + golden * (key + 1)``: a bijection of uint64, so distinct ids never collide for one key, and
different keys give draws that do not correlate. A string key is turned into its 64-bit key once
(BLAKE2b of its UTF-8), not per row. numpy's uint64 arithmetic wraps, which is what the mixer
needs.

:data:`HASH_NAME` names this function; a file that stores a split made with it records the name,
so that a change of hash is detected when the file is read, not silently mixed with a new split.
"""

from __future__ import annotations

import hashlib

import numpy as np

HASH_NAME = "splitmix64-v1"
"""Name and version of :func:`keyed_hash`; change it whenever its output changes."""

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def key_of(key: int | str) -> int:
    """The 64-bit key of ``key``: an int as it is (mod 2**64), a string by BLAKE2b."""
    if isinstance(key, str):
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return int(key) % (1 << 64)


def keyed_hash(ids: np.ndarray, key: int | str) -> np.ndarray:
    """uint64 hash of each id under ``key``: a fixed pseudo-random order or draw."""
    z = np.asarray(ids).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        z = z + _GOLDEN * np.uint64((key_of(key) + 1) % (1 << 64))
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def hash_unit(ids: np.ndarray, key: int | str) -> np.ndarray:
    """Map int64 ids to floats in [0, 1) (53 bits of :func:`keyed_hash`)."""
    return (keyed_hash(ids, key) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
