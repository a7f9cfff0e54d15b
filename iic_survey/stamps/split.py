"""The stamp maker cut in two: stamps on the CPU stage, images where the model runs.

:class:`StampCutter` is :class:`~iic_survey.stamps.maker.StampMaker` without the RGB step: it
adds ``stamp`` (float32 (N, 3, S, S) in DN, NaN where nothing was read), ``features`` and
``quality_flags`` (cutout | catalog | earlier flags). :func:`finish_images` is the other half,
run by the inference actor: the RGB transform of those stamps and its flags, OR-ed into the
row's. Together they make exactly what one ``StampMaker`` call makes
(tests/stamps/test_rgb.py): on a CPU with :func:`iic_survey.stamps.rgb.make_rgb`, byte for byte
the images training saw; on a GPU with its torch twin
:func:`iic_survey.stamps.rgb_torch.make_rgb_torch` (equal to 1e-5), next to the model.

Why the split: a stamp is 16 kB where its image is 77 kB, so the object store between the
stages carries 4.7x less, and on a GPU node the CPU cores, the scarce resource there, only cut.
On a CPU the numpy transform is the faster of the two (measured: about 2x the torch one on one
thread), so a CPU actor uses it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import torch

from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.features import catalog_features, catalog_flags
from iic_survey.stamps.maker import ADDED_COLUMNS, StampMaker, column_array
from iic_survey.stamps.rgb import RGBParams, make_rgb
from iic_survey.stamps.rgb_torch import make_rgb_torch

CUT_COLUMNS: tuple[str, ...] = ("stamp", "features", "quality_flags")
"""Columns a :class:`StampCutter` adds to (or, for ``quality_flags``, merges into) a batch."""


@dataclasses.dataclass(frozen=True)
class StampCutter(StampMaker):
    """Catalog rows -> rows + ``stamp``, ``features``, ``quality_flags`` (a Ray Data batch UDF).

    Built like a :class:`~iic_survey.stamps.maker.StampMaker` (``StampCutter.from_spec``);
    its ``rgb`` is not used here but travels with it for :func:`finish_images`.
    """

    def __call__(self, batch: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The batch's columns (numpy, rows in order) plus ``stamp``, ``features``, flags."""
        df = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(dict(batch))
        df = df.reset_index(drop=True)
        n = len(df)
        cut = cut_sources(df, self.archive, self.cutout)
        features = np.asarray(catalog_features(df), dtype=np.float32)  # (N, F)
        flags = np.asarray(cut.flags, dtype=np.uint32)
        flags |= np.asarray(catalog_flags(df), dtype=np.uint32)  # W3_UNDETECTED, BAD_INPUT
        if "quality_flags" in df.columns:
            prior = pd.to_numeric(df["quality_flags"], errors="coerce").fillna(0)
            flags |= prior.to_numpy(dtype=np.int64).astype(np.uint32)
        skip = set(ADDED_COLUMNS) | set(CUT_COLUMNS)
        out = {name: column_array(df[name]) for name in df.columns if name not in skip}
        stamps = np.ascontiguousarray(cut.stamps, dtype=np.float32)
        out["stamp"] = stamps.reshape(n, *stamps.shape[1:])
        out["features"] = features.reshape(n, features.shape[-1] if features.ndim == 2 else 0)
        out["quality_flags"] = flags
        return out


def finish_images(
    stamps: np.ndarray | torch.Tensor, params: RGBParams, device: torch.device
) -> tuple[torch.Tensor, np.ndarray | torch.Tensor]:
    """(images (N, 3, O, O) float32 on ``device``, RGB flags) of a chunk's stamps.

    On CUDA the stamps (a host array or a tensor already there) go through
    :func:`~iic_survey.stamps.rgb_torch.make_rgb_torch` on the device and the flags stay there
    (int64); on a CPU through :func:`~iic_survey.stamps.rgb.make_rgb` (uint32 numpy flags).
    """
    if device.type == "cpu":
        host = stamps.numpy() if isinstance(stamps, torch.Tensor) else np.asarray(stamps)
        images, flags = make_rgb(host, params)
        return torch.from_numpy(images), flags
    x = stamps if isinstance(stamps, torch.Tensor) else torch.from_numpy(np.asarray(stamps))
    return make_rgb_torch(x.to(device, non_blocking=True), params)
