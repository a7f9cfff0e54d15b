"""iic_survey: star / galaxy / quasar classification of AllWISE sources with IICnet on Ray.

The package is laid out along the data flow (see README, "Layout"): ``core`` (HEALPix maths,
flags, metrics) -> ``inputs`` (the AllWISE catalog and the Atlas image archive) -> ``stamps``,
``model``, ``output``, ``synthetic`` -> ``survey`` (the sky run), ``training`` and ``report``.

The few entry points are here, imported on first use so that ``import iic_survey`` stays light
(no Ray, torch or pandas until one is asked for):

* reading a catalog: :func:`read`, :class:`Query` (:mod:`iic_survey.output.reader`);
* classifying the sky: :func:`run_pipeline` (:mod:`iic_survey.survey.run`) with a
  :class:`PipelineConfig` (:mod:`iic_survey.survey.config`);
* training: :func:`train` (:mod:`iic_survey.training.trainer`) with a :class:`TrainConfig`
  (:mod:`iic_survey.training.config`), and :func:`load_model_dir`
  (:mod:`iic_survey.model.directory`) to load what it wrote.
"""

from __future__ import annotations

from iic_survey.core.constants import BANDS, CLASSES, __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (a third of the import time)
if TYPE_CHECKING:
    from iic_survey.model.directory import load_model_dir
    from iic_survey.output.reader import Query, read
    from iic_survey.survey.config import PipelineConfig
    from iic_survey.survey.run import run_pipeline
    from iic_survey.training.config import TrainConfig
    from iic_survey.training.trainer import train

_ENTRY_POINTS = {
    "read": "iic_survey.output.reader",
    "Query": "iic_survey.output.reader",
    "run_pipeline": "iic_survey.survey.run",
    "PipelineConfig": "iic_survey.survey.config",
    "train": "iic_survey.training.trainer",
    "TrainConfig": "iic_survey.training.config",
    "load_model_dir": "iic_survey.model.directory",
}
"""Entry point -> the module that defines it (imported when the name is first asked for)."""

__all__ = [
    "BANDS",
    "CLASSES",
    "PipelineConfig",
    "Query",
    "TrainConfig",
    "__version__",
    "load_model_dir",
    "read",
    "run_pipeline",
    "train",
]


def __getattr__(name: str) -> object:
    """Import an entry point on first use (PEP 562), and keep it as a module attribute."""
    import importlib

    if name not in _ENTRY_POINTS:
        raise AttributeError(f"module 'iic_survey' has no attribute {name!r}")
    value = getattr(importlib.import_module(_ENTRY_POINTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
