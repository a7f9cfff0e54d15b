"""Example cutouts for the report, made the way the pipeline makes its inputs.

:func:`archive_stamps` turns an image archive spec (the one a catalog records in ``_run.json``,
or another) into a :data:`~iic_survey.report.config.StampSource`: cut the rows' stamps from the
archive, make the network's RGB images, then stretch each for display.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from iic_survey.report.config import StampSource
from iic_survey.report.figures import display_stretch
from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.maker import StampMaker
from iic_survey.stamps.rgb import make_rgb


def archive_stamps(
    images: str,
    *,
    model_dir: str | None = None,
    endpoint_url: str | None = None,
) -> StampSource:
    """Example cutouts made the way the pipeline makes its inputs, from an image archive.

    Parameters
    ----------
    images
        An image archive spec for :meth:`iic_survey.stamps.maker.StampMaker.from_spec` (``irsa``,
        ``s3``, ``s3://...``, a local ``p3am_cdd`` or synthetic sky root); a catalog records the
        one it was classified from in ``_run.json``.
    model_dir
        A model directory whose RGB settings to use (default:
        :class:`~iic_survey.stamps.rgb.RGBParams`).
    endpoint_url
        Another S3 endpoint (a local S3 server).

    Raises
    ------
    FileNotFoundError
        A local archive that does not exist (checked now, not at the first grid).
    """

    rgb = None
    if model_dir:
        doc = json.loads((Path(model_dir) / "model.json").read_text())
        rgb = dict(doc.get("rgb") or {}) or None
    maker = StampMaker.from_spec(images, rgb_params=rgb, endpoint_url=endpoint_url)
    if maker.archive.kind == "local" and not Path(maker.archive.root).is_dir():
        raise FileNotFoundError(f"image archive {maker.archive.root} not found")

    def stamps(rows: pd.DataFrame) -> np.ndarray:
        # The image half of StampMaker (the catalog features are not needed to look at them);
        # per-row faults (a missing tile ...) give blank stamps and flags, not errors.
        cut = cut_sources(
            rows[["cntr", "ra", "dec"]].reset_index(drop=True), maker.archive, maker.cutout
        )
        images, _ = make_rgb(cut.stamps, maker.rgb)  # (N, 3, 80, 80)
        return display_stretch(images)

    return stamps
