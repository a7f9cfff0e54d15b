"""Where the jobs keep their default inputs and outputs.

``ray job submit --working-dir .`` runs a job in a temporary copy of the repository, so a
default relative path would vanish with the job. Defaults therefore live under one absolute
root, ``$IIC_SURVEY_HOME`` (default ``~/iic_survey``). On a multi-node cluster every worker
must reach them: pass ``s3://`` URLs (or a shared file system) there instead.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "IIC_SURVEY_HOME"


def home() -> Path:
    """The root of default data: ``$IIC_SURVEY_HOME`` or ``~/iic_survey``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / "iic_survey").expanduser().resolve()


def default_sky() -> str:
    """The embedded synthetic sky (written on first use by the jobs)."""
    return str(home() / "sky")


def default_training_set() -> str:
    """The labelled cutout set built from the synthetic sky's truth table."""
    return str(home() / "training_set")


def default_runs() -> str:
    """Ray Train storage: checkpoints and results of training runs."""
    return str(home() / "runs")


def default_model() -> str:
    """The model directory that training writes and classification reads."""
    return str(home() / "model")


def default_catalog() -> str:
    """The output classification catalog (a HATS catalog)."""
    return str(home() / "catalog")
