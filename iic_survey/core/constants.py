"""The names every layer shares: the code version, the classes and the bands the model sees."""

from __future__ import annotations

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("galaxy", "quasar", "star")
"""Class names in the index order of every probability vector, label and logit."""

BANDS: tuple[int, ...] = (1, 2, 3)
"""WISE bands the model sees, mapped to image channels 0, 1, 2."""

SUBSETS: tuple[str, ...] = ("safe", "extrapolation", "unsafe")
"""Values of the catalog's ``subset`` column, in order of trust (see ``output.schema``)."""
