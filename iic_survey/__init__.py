"""iic_survey: star / galaxy / quasar classification of AllWISE sources with IICnet on Ray.

The package is laid out along the data flow (see README, "Layout"): ``core`` (HEALPix maths,
flags, metrics) -> ``inputs`` (the AllWISE catalog and the Atlas image archive) -> ``stamps``,
``model``, ``output``, ``synthetic`` -> ``survey`` (the sky run), ``training`` and ``report``.
"""

from __future__ import annotations

from iic_survey.core.constants import BANDS, CLASSES, __version__

__all__ = ["BANDS", "CLASSES", "__version__"]
