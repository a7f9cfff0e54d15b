"""The training domain, and the ``subset`` label it gives each classified source.

A classifier is trustworthy where it was trained. :class:`TrainingDomain` records where that
is: the range of W1 and of the two colours (W1-W2; W2-W3 where W3 is detected) of the labelled
training set, between the :data:`QUANTILES` of each (so a handful of odd training rows do not
stretch it). :func:`subsets` then labels every catalog row, like KiDS' quasar catalog does:

``unsafe``
    not clean (:data:`~iic_survey.core.flags.NOT_CLEAN`: unclassified, or its image or its
    AllWISE measurement is suspect: off the tile edge, NaN pixels, no central source,
    saturated, an AllWISE artefact), or out of distribution (``ood_score`` above the model's
    threshold);
``extrapolation``
    not unsafe, but W1 or a colour lies outside the training range: typically fainter than the
    labelled set, where the model has never been checked;
``safe``
    everything else: clean, in distribution and inside the training ranges.

A model directory written before the training domain was recorded has none: then no row is
``extrapolation`` (the job records this in ``_run.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from iic_survey.core.constants import SUBSETS
from iic_survey.core.flags import clean

QUANTILES = (0.001, 0.999)
"""The training range of a quantity: between these quantiles of the training rows."""

_RANGES = ("w1", "w1_w2", "w2_w3")


@dataclasses.dataclass(frozen=True)
class TrainingDomain:
    """Ranges (lo, hi) of W1 and the colours over the labelled training set."""

    w1: tuple[float, float]
    """W1 (Vega mag)."""
    w1_w2: tuple[float, float]
    """W1 - W2 (mag)."""
    w2_w3: tuple[float, float]
    """W2 - W3 (mag), over rows with a W3 detection."""
    n: int = 0
    """Training rows it was measured on."""

    @classmethod
    def from_photometry(cls, phot: Mapping[str, np.ndarray]) -> TrainingDomain:
        """The domain of training rows (``w1mpro``, ``w2mpro``, ``w3mpro``, ``w3_detected``)."""
        values = _colours(phot)
        return cls(**{k: _range(values[k]) for k in _RANGES}, n=len(values["w1"]))

    def inside(self, phot: Mapping[str, np.ndarray]) -> np.ndarray:
        """True where every known quantity of a row lies in its training range.

        A null quantity (W2-W3 without a W3 detection) is not held against the row.
        """
        values = _colours(phot)
        ok = np.ones(len(values["w1"]), dtype=bool)
        for name in _RANGES:
            lo, hi = getattr(self, name)
            v = values[name]
            with np.errstate(invalid="ignore"):
                ok &= ~np.isfinite(v) | ((v >= lo) & (v <= hi))
        return ok

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``model.json`` (key ``training_domain``)."""
        return {**{k: list(getattr(self, k)) for k in _RANGES}, "n": self.n,
                "quantiles": list(QUANTILES)}  # fmt: skip

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TrainingDomain | None:
        """The inverse of :meth:`to_dict`; None for an empty record (an older model)."""
        if not doc:
            return None
        try:
            ranges = {k: (_bound(doc[k][0], -np.inf), _bound(doc[k][1], np.inf)) for k in _RANGES}
        except (KeyError, TypeError, IndexError, ValueError) as err:
            raise ValueError(f"unreadable training_domain {dict(doc)}: {err}") from err
        return cls(**ranges, n=int(doc.get("n", 0)))


def _bound(value: Any, unbounded: float) -> float:
    """A stored bound; None (JSON's form of an infinite one) is ``unbounded``."""
    return unbounded if value is None else float(value)


def _colours(phot: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    def col(name: str) -> np.ndarray:
        return np.asarray(phot[name], dtype=np.float64)

    w1, w2, w3 = col("w1mpro"), col("w2mpro"), col("w3mpro")
    detected = np.asarray(phot["w3_detected"], dtype=bool)
    return {"w1": w1, "w1_w2": w1 - w2, "w2_w3": np.where(detected, w2 - w3, np.nan)}


def _range(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return (float("-inf"), float("inf"))
    lo, hi = np.quantile(v, QUANTILES)
    return (float(lo), float(hi))


def subsets(
    flags: np.ndarray,
    ood_score: np.ndarray,
    ood_threshold: float | None,
    inside: np.ndarray | None,
) -> np.ndarray:
    """The ``subset`` of each row (``safe``, ``extrapolation``, ``unsafe``; see the module).

    ``inside`` is :meth:`TrainingDomain.inside` of the rows, None without a training domain.
    """
    safe, extrapolation, unsafe = SUBSETS
    bad = ~clean(flags)
    if ood_threshold is not None:
        with np.errstate(invalid="ignore"):
            bad |= np.asarray(ood_score, dtype=np.float64) > ood_threshold
    out = np.full(len(bad), safe, dtype=object)
    if inside is not None:
        out[~np.asarray(inside, dtype=bool)] = extrapolation
    out[bad] = unsafe
    return out
