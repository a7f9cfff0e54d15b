"""What the catalog report shows and how: its config, the columns it reads, figure sizes.

:class:`ReportConfig` is the one config of :func:`iic_survey.report.sections.write_report`
(map order, example counts, curve bins, dpi, the seed that picks examples). :data:`StampSource`
is the type of the function that draws the example cutouts, :data:`COLUMNS` the catalog columns
the report reads, :data:`COLOURS` the colour of each class and :data:`FIGSIZES` the size of each
figure.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pandas as pd

from iic_survey.core import healpix

StampSource = Callable[[pd.DataFrame], np.ndarray]
"""Rows (cntr, designation, ra, dec, ...) -> RGB images (N, 3, H, W) or (N, H, W, 3), float in
[0, 1] or uint8, one per row in order. :func:`iic_survey.report.examples.archive_stamps` makes one
from an image archive."""

COLUMNS = [
    "_healpix_29",
    "cntr",
    "designation",
    "ra",
    "dec",
    "w1mpro",
    "p_galaxy",
    "p_quasar",
    "p_star",
    "class",
    "confidence",
    "ood_score",
    "is_outlier",
    "quality_flags",
    "model_version",
]
"""The catalog columns the report reads (one pixel file at a time)."""
COLOURS = {"galaxy": "tab:orange", "quasar": "tab:purple", "star": "tab:blue"}
"""Each class's colour in every figure."""


@dataclasses.dataclass(frozen=True)
class ReportConfig:
    """What the report shows and how big its figures are."""

    map_order: int = 6
    """HEALPix order of the sky maps (nside = 2**order)."""
    n_examples: int = 16
    """Cutouts in each example grid (per class and for outliers)."""
    example_min_confidence: float = 0.8
    """Class examples are drawn from rows at least this confident (the outlier grid is not)."""
    confidence_bins: int = 30
    """Bins of the confidence histograms over [1/3, 1]."""
    w1_edges: tuple[float, ...] = tuple(float(x) for x in range(6, 19))
    """W1 magnitude bin edges of the completeness / purity curves."""
    glat_edges: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 90.0)
    """|Galactic latitude| bin edges (deg) of the completeness / purity curves."""
    min_per_bin: int = 5
    """Curve points from fewer matched sources than this are left out."""
    dpi: int = 100
    """Pixels per inch of every PNG (figure sizes are fixed in inches)."""
    seed: int = 0
    """Picks the example rows (deterministically, by a hash of cntr)."""
    no_stamps_reason: str = "No image source was given"
    """What the report says where the cutout grids would be when it is given no stamp source."""

    def __post_init__(self) -> None:
        healpix.check_order(self.map_order)
        if self.map_order > 10:
            raise ValueError(f"map_order {self.map_order} is too fine for a picture; use <= 10")
        if self.n_examples < 1 or self.confidence_bins < 2 or self.dpi < 20:
            raise ValueError("n_examples >= 1, confidence_bins >= 2 and dpi >= 20 are required")
        for name in ("w1_edges", "glat_edges"):
            edges = np.asarray(getattr(self, name))
            if len(edges) < 2 or np.any(np.diff(edges) <= 0):
                raise ValueError(f"{name} must be at least two increasing values, got {edges}")
        if not 0 <= self.example_min_confidence <= 1:
            raise ValueError("example_min_confidence must be within [0, 1]")


FIGSIZES: dict[str, tuple[float, float]] = {
    "sky_density": (8.0, 4.5),
    "sky_class_fractions": (15.0, 3.8),
    "sky_outliers": (8.0, 4.5),
    "confidence": (12.0, 3.6),
    "examples": (8.0, 8.6),
    "confusion": (6.0, 4.8),
    "roc": (5.5, 5.0),
    "completeness_purity": (11.0, 8.0),
}
"""Figure sizes in inches; a map figure with a zoom panel is twice as tall."""
