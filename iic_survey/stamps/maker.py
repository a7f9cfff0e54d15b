"""The one way to turn catalog rows into model inputs, shared by training and the sky pipeline.

A :class:`StampMaker` takes a batch of catalog rows and returns the same rows, in the same order,
with three columns added:

* ``image``: float32 (N, 3, 80, 80), the W1/W2/W3 RGB tensor the network sees
  (:func:`iic_survey.stamps.cutter.cut_sources` then :func:`iic_survey.stamps.rgb.make_rgb`);
* ``features``: float32 (N, F), the catalog features
  (:func:`iic_survey.stamps.features.catalog_features`);
* ``quality_flags``: uint32 (N,), the cutout flags | the RGB flags | the catalog flags
  (:func:`iic_survey.stamps.features.catalog_flags`: ``W3_UNDETECTED``, ``BAD_INPUT``) | any
  ``quality_flags`` the batch already carried.

The training-set builder (:mod:`iic_survey.training.labels`) and the classification pipeline
(:mod:`iic_survey.survey.stages`) both call it, so the two cannot drift apart: what the model was
trained on is, byte for byte, what it is asked about. The object holds only small, picklable
settings (the archive is a set of strings), so Ray ships it to tasks as it is; it opens tiles
per call and loads nothing heavy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.inputs.archive import TileArchive
from iic_survey.stamps.cutouts import CutoutConfig
from iic_survey.stamps.cutter import cut_sources
from iic_survey.stamps.features import catalog_features, catalog_flags
from iic_survey.stamps.rgb import RGBParams, make_rgb

ADDED_COLUMNS: tuple[str, ...] = ("image", "features", "quality_flags")
"""Columns a :class:`StampMaker` adds to (or, for ``quality_flags``, merges into) a batch."""


@dataclasses.dataclass(frozen=True)
class StampMaker:
    """Catalog rows -> rows + ``image``, ``features``, ``quality_flags`` (a Ray Data batch UDF).

    Build one with :meth:`from_spec` (or directly from a
    :class:`~iic_survey.inputs.archive.TileArchive`).
    Calling it is a pure function of the batch and the archive's files; it may be used as a
    ``map_batches`` function (Ray tasks) with ``batch_format="pandas"``.
    """

    archive: TileArchive
    """Where the Atlas tiles are (local, S3 or IRSA over HTTPS)."""
    cutout: CutoutConfig = dataclasses.field(default_factory=CutoutConfig)
    """How stamps are cut (``method="service"`` for per-source IBE cutouts)."""
    rgb: RGBParams = dataclasses.field(default_factory=RGBParams)
    """How stamps become RGB tensors; a model directory stores the ones it was trained with."""

    def __post_init__(self) -> None:
        if not isinstance(self.archive, TileArchive):
            raise TypeError(
                f"archive must be a TileArchive (use StampMaker.from_spec for a spec string), "
                f"got {type(self.archive).__name__}"
            )
        if self.cutout.method == "service" and self.archive.kind != "http":
            raise ValueError(
                f"cutout method 'service' needs an HTTP(S) image archive (e.g. 'irsa'), "
                f"got {self.archive.root!r}; use method 'tiles' for local or S3 tiles"
            )

    @classmethod
    def from_spec(
        cls,
        images: str | TileArchive,
        *,
        cutout: CutoutConfig | None = None,
        rgb_params: RGBParams | Mapping[str, Any] | None = None,
        endpoint_url: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
    ) -> StampMaker:
        """A stamp maker for an image archive spec.

        Parameters
        ----------
        images
            ``"irsa"``, ``"s3"``, ``"s3://bucket/prefix"``, ``"https://.../p3am_cdd"``, a local
            directory (a synthetic sky root works), or a ready :class:`TileArchive`.
        cutout
            Cutting settings (default :class:`~iic_survey.stamps.cutouts.CutoutConfig`).
        rgb_params
            RGB settings, as an object or the dict a model directory stores.
        endpoint_url, storage_options
            For S3 archives: another endpoint (a local S3 server) and fsspec options.
        """
        if isinstance(images, TileArchive):
            archive = images
        else:
            archive = TileArchive.from_spec(
                images, endpoint_url=endpoint_url, storage_options=storage_options
            )
        if rgb_params is None:
            params = RGBParams()
        elif isinstance(rgb_params, RGBParams):
            params = rgb_params
        else:
            params = RGBParams.from_dict(dict(rgb_params))
        return cls(archive, cutout or CutoutConfig(), params)

    def __call__(self, batch: pd.DataFrame | Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The batch's columns (as numpy arrays, rows in order) plus the three added columns.

        Per-row faults (missing tiles, NaN coordinates, off-edge stamps ...) are flags, never
        exceptions; only a configuration fault (e.g. access denied) raises.
        """
        df = batch if isinstance(batch, pd.DataFrame) else pd.DataFrame(dict(batch))
        df = df.reset_index(drop=True)
        n = len(df)
        cut = cut_sources(df, self.archive, self.cutout)
        images, rgb_flags = make_rgb(cut.stamps, self.rgb)  # (N, 3, 80, 80), (N,)
        features = np.asarray(catalog_features(df), dtype=np.float32)  # (N, F)
        flags = np.asarray(cut.flags, dtype=np.uint32) | np.asarray(rgb_flags, dtype=np.uint32)
        flags |= np.asarray(catalog_flags(df), dtype=np.uint32)  # W3_UNDETECTED, BAD_INPUT
        if "quality_flags" in df.columns:
            prior = pd.to_numeric(df["quality_flags"], errors="coerce").fillna(0)
            flags |= prior.to_numpy(dtype=np.int64).astype(np.uint32)
        out = {name: column_array(df[name]) for name in df.columns if name not in ADDED_COLUMNS}
        out["image"] = np.ascontiguousarray(images, dtype=np.float32).reshape(n, *images.shape[1:])
        out["features"] = features.reshape(n, features.shape[-1] if features.ndim == 2 else 0)
        out["quality_flags"] = flags
        return out


def column_array(series: pd.Series) -> np.ndarray:
    """A column as a numpy array Ray Data can hold: numbers stay typed, strings become objects.

    Nullable floats become NaN; nullable integers or booleans with missing values, and strings,
    become object arrays with ``None`` for missing values.
    """
    dtype = series.dtype
    if isinstance(dtype, np.dtype) and dtype != np.dtype(object):
        return series.to_numpy()
    if pd.api.types.is_float_dtype(dtype):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if (pd.api.types.is_integer_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)) and not bool(
        series.isna().any()
    ):
        return series.to_numpy(dtype=dtype.numpy_dtype)
    values = series.astype(object).to_numpy()
    missing = pd.isna(values)
    if missing.any():
        values = values.copy()
        values[missing] = None
    return values
