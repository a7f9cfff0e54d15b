"""TODO docstring for training.config (from training)."""

from __future__ import annotations

import dataclasses
from typing import Any

from iic_survey.core.config import config_from_dict, did_you_mean
from iic_survey.model.config import ARCHS, ModelConfig

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a GPU that supports it, else fp16 on GPU, fp32 on CPU."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. ``dataclasses.asdict`` of it is Ray Train's ``train_loop_config``."""

    data: str
    """Root of the training set written by :func:`iic_survey.labels.write_training_set`."""
    arch: str = "iicnet"
    """``iicnet`` (image), ``fusion`` (image + catalog features) or ``colour`` (features)."""
    epochs: int = 200
    """Epochs in all (a resumed run counts the ones already done)."""
    lr: float = 1e-4
    """Adam learning rate."""
    lr_halve_epoch: int = 50
    """From this (0-based) epoch on, the learning rate is halved (the paper: after 50 epochs)."""
    batch_size: int = 64
    """Images per batch per worker."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    augment: bool = True
    """Random flips and 90-degree rotations (the dihedral group; the sky has no "up")."""
    precision: str = "auto"
    """One of :data:`PRECISIONS`."""
    widths: tuple[int, ...] | None = None
    """IICnet channel widths (``ModelConfig.widths``); None keeps the paper-sized default."""
    head_dim: int | None = None
    """Penultimate width (``ModelConfig.head_dim``); None keeps the default."""
    max_train_rows: int | None = None
    """Train on about this many rows of the train split (a stable subset chosen by a hash of
    cntr); None: all of it."""
    seed: int = 0
    """Seeds the initial weights, the shuffle and the augmentation."""
    shuffle_buffer: int = 2048
    """Rows in each worker's local shuffle buffer."""
    ood_rows: int = 20_000
    """Training rows whose embeddings give the out-of-distribution statistics."""
    cache: str = "auto"
    """Hold the splits in Ray's object store (``yes``) or re-read the Parquet every epoch
    (``no``); ``auto`` caches when they take under a quarter of the object store."""

    def __post_init__(self) -> None:

        if self.arch not in ARCHS:
            raise ValueError(f"unknown arch {self.arch!r}{did_you_mean(self.arch, ARCHS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown precision {self.precision!r}{did_you_mean(self.precision, PRECISIONS)}"
            )
        for name in ("epochs", "batch_size", "lr_halve_epoch", "shuffle_buffer", "ood_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.max_train_rows is not None and self.max_train_rows < 1:
            raise ValueError(f"max_train_rows must be >= 1 or None, got {self.max_train_rows}")
        if self.widths is not None:
            object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.cache not in ("auto", "yes", "no"):
            raise ValueError(f"cache must be auto, yes or no, got {self.cache!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of ``dataclasses.asdict``; unknown keys are an error."""
        return config_from_dict(cls, d)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where and how a run executes (not part of the model's identity)."""

    name: str = "iicnet"
    """Ray Train run name: rerunning with the same name and storage resumes."""
    storage_path: str = ""
    """Checkpoint storage (local path or ``s3://``); empty: ``paths.default_runs()``."""
    model_dir: str = ""
    """Where the final model directory goes; empty: ``paths.default_model()``."""
    num_workers: int = 2
    """Ray Train workers (one GPU each when ``use_gpu``)."""
    use_gpu: bool = False
    """Train on GPUs."""
    cpus_per_worker: float = 1.0
    """CPUs each worker reserves."""
    max_failures: int = 3
    """Worker-group failures survived by restarting from the last checkpoint (-1: forever)."""
    num_to_keep: int = 2
    """Checkpoints kept (the best by validation loss; the latest is always kept too)."""

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.num_to_keep < 1 or self.cpus_per_worker <= 0:
            raise ValueError("num_workers, num_to_keep and cpus_per_worker must be positive")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1, got {self.max_failures}")


# ---------------------------------------------------------------------------------------------
# The driver


def model_config_from_dict(d: dict[str, Any]) -> Any:
    """``ModelConfig.from_dict`` (kept here so workers import model.py lazily)."""

    return ModelConfig.from_dict(d)


def model_config_for(config: TrainConfig, feature_names: list[str]) -> Any:
    """The ``ModelConfig`` for a run: the arch, widths, and the W3 features found by name."""

    kw: dict[str, Any] = {"arch": config.arch, "n_features": len(feature_names)}
    if config.widths is not None:
        kw["widths"] = config.widths
    if config.head_dim is not None:
        kw["head_dim"] = config.head_dim
    flag = [i for i, n in enumerate(feature_names) if n in ("w3_detected", "w3_det")]
    kw["w3_flag_index"] = flag[0] if flag else None
    kw["w3_feature_indices"] = (
        tuple(i for i, n in enumerate(feature_names) if "w3" in n and i not in flag) if flag else ()
    )
    return ModelConfig(**kw)
