"""How a path is named (one :class:`~upath.UPath`), and where the jobs keep their defaults.

Every path the package reads or writes, local, ``memory://`` or ``s3://``, is one ``UPath``
(as in hats, ``hats.io.file_io.get_upath``): it carries its protocol and storage options (an S3
endpoint, credentials), so one argument names both the file system and the place on it, and it
pickles to Ray workers with them. :func:`as_path` makes one from a string. Joining (``root /
"name"``) is string work; the file system is touched only by the calls that read, list or write.

Where the jobs keep their default inputs and outputs:

``ray job submit --working-dir .`` runs a job in a temporary copy of the repository, so a
default relative path would vanish with the job. Defaults therefore live under one absolute
root, ``$IIC_SURVEY_HOME`` (default ``~/iic_survey``). On a multi-node cluster every worker
must reach them: pass ``s3://`` URLs (or a shared file system) there instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from upath import UPath

ENV_HOME = "IIC_SURVEY_HOME"

PathLike = str | os.PathLike[str] | UPath
"""What a function that reads or writes files takes: a local path, a URL, or a UPath."""

_LOCAL = ("", "file", "local")


def as_path(path: PathLike, **storage_options: Any) -> UPath:
    """``path`` as a UPath with its file system made; a UPath given without options is returned
    as it is.

    Returning the same object keeps its file system instance (and that instance's listing
    cache, which :func:`iic_survey.output.staging.fresh` invalidates) for every path joined
    from it. A relative local path is made absolute, so a Ray worker with another working
    folder names the same place.
    """
    if isinstance(path, UPath) and not storage_options:
        upath = path
    else:
        upath = UPath(path, **storage_options)
        upath = upath.absolute() if upath.protocol in _LOCAL else upath
    # The file system is made now, once: every path joined from this one shares the instance
    # (and its listing cache). Joined before, each path would make its own where the options
    # skip fsspec's instance cache.
    _ = upath.fs
    return upath


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
