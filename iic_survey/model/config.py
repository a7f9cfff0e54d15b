"""The architecture of a classifier as one frozen dataclass, :class:`ModelConfig`.

It is what :func:`~iic_survey.model.network.build_model` builds from and what the model directory
stores in ``model.json``, so a saved model can be rebuilt exactly; its checks turn a misspelled
architecture or impossible sizes into an error that says what to change.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from iic_survey.core.config import config_from_dict, did_you_mean
from iic_survey.core.constants import CLASSES

ARCHS: tuple[str, ...] = ("iicnet", "fusion", "colour")
"""Architectures :func:`~iic_survey.model.network.build_model` knows: image only, image + catalog
features, features only."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a classifier; ``dataclasses.asdict`` of it is stored in ``model.json``."""

    arch: str = "iicnet"
    """One of :data:`ARCHS`."""
    n_features: int = 7
    """Catalog features per source (``len(iic_survey.stamps.features.FEATURE_NAMES)``); used by
    "fusion" and "colour"."""
    n_classes: int = len(CLASSES)
    """Output classes, in ``CLASSES`` order."""
    image_size: int = 80
    """Side of the square input images in pixels; a multiple of 8 (three 2x down-samplings)."""
    in_channels: int = 3
    """Image channels (W1, W2, W3)."""
    widths: tuple[int, int, int, int, int, int] = (32, 64, 64, 128, 240, 512)
    """Output channels of: stem, RFB, conv2, conv3, conv4, conv5."""
    rfb_inter: int = 8
    """RFB width unit: bottlenecks have ``rfb_inter`` channels, branch outputs twice that."""
    rfb_scale: float = 0.1
    """Scale of the RFB's fused branches before the shortcut is added (Liu et al. use 0.1)."""
    cbam_reduction: int = 16
    """Channel reduction of the CBAM channel-attention MLP."""
    head_dim: int = 384
    """Width of the penultimate layer: the dimension D of ``embed``."""
    colour_hidden: int = 64
    """Width of the catalog-feature MLP's hidden layers."""
    dropout: float = 0.2
    """Dropout before each classifier layer (training only)."""
    w3_flag_index: int | None = 6
    """Index of the W3-detected indicator in the features, or None if there is none."""
    w3_feature_indices: tuple[int, ...] = (1, 5)
    """Features that depend on a W3 measurement (W2-W3, sigma W3); zeroed when W3 is undetected."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"unknown arch {self.arch!r}{did_you_mean(self.arch, ARCHS)}; use one of {ARCHS}"
            )
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(
            self, "w3_feature_indices", tuple(int(i) for i in self.w3_feature_indices)
        )
        if len(self.widths) != 6 or min(self.widths) < 1:
            raise ValueError(f"widths must be 6 positive channel counts, got {self.widths}")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {self.image_size}")
        for name in (
            "n_features",
            "n_classes",
            "in_channels",
            "rfb_inter",
            "cbam_reduction",
            "head_dim",
            "colour_hidden",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_classes != len(CLASSES):
            raise ValueError(f"n_classes must be {len(CLASSES)} ({CLASSES}), got {self.n_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        indices = self.w3_feature_indices + (
            () if self.w3_flag_index is None else (self.w3_flag_index,)
        )
        if any(not 0 <= i < self.n_features for i in indices):
            raise ValueError(
                f"W3 feature indices {indices} out of range for n_features={self.n_features}; "
                "set w3_flag_index=None and w3_feature_indices=() if the features have no W3 flag"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        return config_from_dict(cls, d)
