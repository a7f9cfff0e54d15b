"""Which sources a training set keeps and which split each one goes to: pure functions of the ids.

:func:`balance` keeps, per class, the rows with the smallest keyed hash of ``cntr``;
:func:`assign_split` deals sources into train / val / test (the paper's 8:1:1) by another keyed
hash, of ``cntr`` or of a HEALPix pixel so that neighbours never straddle splits. Both use
:func:`iic_survey.core.hashing.hash_unit`, so they are stable across runs, machines, row order
and Python versions, and a training set records the hash's name
(:data:`iic_survey.core.hashing.HASH_NAME`) in its manifest.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from iic_survey.core import healpix
from iic_survey.core.config import did_you_mean
from iic_survey.core.constants import CLASSES
from iic_survey.core.hashing import hash_unit

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Split names, in the order of :attr:`SplitConfig.fractions`."""


def class_index(classes: pd.Series | np.ndarray) -> np.ndarray:
    """Label indices into ``CLASSES`` of class names; raises on an unknown name."""
    names = np.asarray(classes, dtype=object)
    lookup = {c: i for i, c in enumerate(CLASSES)}
    unknown = sorted({str(c) for c in names if c not in lookup})
    if unknown:
        raise ValueError(f"unknown class names {unknown}; expected {CLASSES}")
    return np.fromiter((lookup[c] for c in names), dtype=np.int64, count=len(names))


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How sources are dealt into train / val / test."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of train, val and test (the paper's 8:1:1); must sum to 1."""
    block_order: int | None = None
    """If set, hash the NESTED HEALPix pixel at this order instead of ``cntr``: every source in a
    pixel lands in the same split, so neighbours and blends cannot leak across splits (order 8
    pixels are ~14' across)."""
    key: str = "iic-split-v1"
    """Hash key; change it to draw a different split of the same sources."""

    def __post_init__(self) -> None:
        fr = tuple(float(f) for f in self.fractions)
        object.__setattr__(self, "fractions", fr)
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-9:
            raise ValueError(
                f"split fractions must be 3 non-negative numbers summing to 1, got {fr}"
            )
        if self.block_order is not None:
            healpix.check_order(self.block_order)


def assign_split(
    cntr: np.ndarray, ra: np.ndarray, dec: np.ndarray, config: SplitConfig = SplitConfig()
) -> np.ndarray:
    """Split name (``SPLITS``) of each source: a pure function of its id (or its pixel)."""
    ids = np.asarray(cntr, dtype=np.int64)
    if config.block_order is not None:
        ids = healpix.pixel_of(ra, dec, config.block_order)
    u = hash_unit(ids, config.key)
    edges = np.cumsum(config.fractions)[:2]
    return np.asarray(SPLITS, dtype=object)[np.searchsorted(edges, u, side="right")]


def balance(
    df: pd.DataFrame,
    targets: int | Mapping[str, int] | None = None,
    key: str = "iic-balance-v1",
) -> pd.DataFrame:
    """Keep at most ``targets`` rows per class (column ``class``), chosen by a keyed hash of cntr.

    ``targets`` is one count for every class, a count per class (e.g. :data:`PAPER_COUNTS`), or
    None for "as many as the rarest class has". A class with fewer rows than asked keeps them all
    (with a warning). The choice depends only on the ids, not on row order, and a smaller target
    keeps a subset of what a larger one keeps.
    """
    counts = df["class"].value_counts()
    missing = [c for c in CLASSES if counts.get(c, 0) == 0]
    if missing:
        raise ValueError(f"no labelled sources of class {missing}; cannot balance")
    if targets is None:
        want = dict.fromkeys(CLASSES, int(counts.min()))
    elif isinstance(targets, Mapping):
        unknown = [c for c in targets if c not in CLASSES]
        if unknown:
            raise ValueError(f"unknown class {unknown[0]!r}{did_you_mean(unknown[0], CLASSES)}")
        want = {c: int(targets.get(c, 0)) for c in CLASSES}
    else:
        want = dict.fromkeys(CLASSES, int(targets))
    rank = hash_unit(df["cntr"].to_numpy(), key)
    keep = np.zeros(len(df), dtype=bool)
    cls = df["class"].to_numpy()
    for c in CLASSES:
        idx = np.flatnonzero(cls == c)
        if len(idx) < want[c]:
            logger.warning(
                "class %s: %d sources, fewer than the %d asked for", c, len(idx), want[c]
            )
        keep[idx[np.argsort(rank[idx], kind="stable")[: want[c]]]] = True
    return df.loc[keep].reset_index(drop=True)
