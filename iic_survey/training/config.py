"""The configs of a training run: what is trained (:class:`TrainConfig`) and where it runs.

:class:`TrainConfig` is the model's identity (architecture, schedule, seed); ``dataclasses.asdict``
of it is Ray Train's ``train_loop_config`` and goes into the model directory's ``meta``.
:class:`RunSettings` says where and how a run executes (workers, GPUs, checkpoint storage) and
is not part of the model. Both are built from ``jobs/train.py``'s parsed options by ``from_args``;
:func:`model_config_for` derives the network's :class:`~iic_survey.model.config.ModelConfig`.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, TypeVar

from iic_survey.core import paths
from iic_survey.core.config import config_from_dict, did_you_mean
from iic_survey.model.config import ARCHS, ModelConfig

T = TypeVar("T")

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a GPU that supports it, else fp16 on GPU, fp32 on CPU."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run. ``dataclasses.asdict`` of it is Ray Train's ``train_loop_config``."""

    data: str
    """Root of the training set written by :func:`iic_survey.training.labels.build_training_set`."""
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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The config that ``jobs/train.py``'s options describe (options named like the fields)."""
        return _from_namespace(cls, args)


PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
"""Ray placement-group strategies a run's workers may use."""


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
    placement_strategy: str = "PACK"
    """How Ray places the workers: ``PACK`` (as few nodes as possible, the fastest all-reduce)
    or ``SPREAD`` (one per node where possible); the ``STRICT_`` forms refuse to do otherwise."""

    def __post_init__(self) -> None:
        if self.num_workers < 1 or self.num_to_keep < 1 or self.cpus_per_worker <= 0:
            raise ValueError("num_workers, num_to_keep and cpus_per_worker must be positive")
        if self.max_failures < -1:
            raise ValueError(f"max_failures must be >= -1, got {self.max_failures}")
        if self.placement_strategy not in PLACEMENT_STRATEGIES:
            raise ValueError(
                f"placement_strategy must be one of {PLACEMENT_STRATEGIES}, "
                f"got {self.placement_strategy!r}"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> RunSettings:
        """The settings that ``jobs/train.py``'s options describe, with ``overrides`` for the
        ones the job resolves itself (``num_workers``, ``use_gpu``)."""
        return _from_namespace(cls, args, **overrides)


def _from_namespace(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """A config dataclass from the parsed options named like its fields (lists become tuples);
    fields without an option keep their defaults."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    values = {n: getattr(args, n) for n in names if hasattr(args, n)}
    return config_from_dict(cls, {**values, **overrides})


# ---------------------------------------------------------------------------------------------
# The command line of jobs/train.py: one option per field, read back by ``from_args``


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a training run, in groups, as :meth:`TrainConfig.from_args` and
    :meth:`RunSettings.from_args` read them (defaults: the paper's schedule)."""
    d = TrainConfig(data="")
    _add_model_arguments(parser.add_argument_group("data and model"), d)
    _add_schedule_arguments(parser.add_argument_group("schedule"), d)
    _add_run_arguments(parser.add_argument_group("where and how it runs"), d)


def _add_model_arguments(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument(
        "--data",
        default=paths.default_training_set(),
        help="training set root, local or s3:// (default: %(default)s)",
    )
    g.add_argument("--arch", choices=ARCHS, default=d.arch)
    g.add_argument(
        "--widths",
        type=int,
        nargs=6,
        default=None,
        help="IICnet channel widths (stem, RFB, conv2..conv5); default: paper-sized",
    )
    g.add_argument("--head-dim", type=int, default=None, help="penultimate (embedding) width")
    g.add_argument(
        "--ood-rows",
        type=int,
        default=d.ood_rows,
        help="training rows whose embeddings give the OOD statistics",
    )


def _add_schedule_arguments(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    g.add_argument("--epochs", type=int, default=d.epochs)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument(
        "--lr-halve-epoch",
        type=int,
        default=d.lr_halve_epoch,
        help="0-based epoch from which the learning rate is halved",
    )
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random flips / 90-degree rotations",
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=d.precision,
        help="autocast on GPU: auto = bf16 where supported, else fp16",
    )
    g.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="train on a stable subset of about this many rows",
    )
    g.add_argument("--seed", type=int, default=d.seed)


def _add_run_arguments(g: argparse._ArgumentGroup, d: TrainConfig) -> None:
    r = RunSettings()
    g.add_argument(
        "--cache",
        choices=("auto", "yes", "no"),
        default=d.cache,
        help="hold train + val in Ray's object store (auto: when small)",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="Ray Train workers (default: one per GPU, or 2 on CPU)",
    )
    g.add_argument(
        "--use-gpu",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: use GPUs if the Ray cluster has any",
    )
    g.add_argument("--cpus-per-worker", type=float, default=r.cpus_per_worker)
    g.add_argument("--name", default=r.name, help="run name: the same name resumes")
    g.add_argument(
        "--storage-path",
        default=paths.default_runs(),
        help="checkpoints, local or s3:// (default: %(default)s)",
    )
    g.add_argument(
        "--model-dir",
        default=paths.default_model(),
        help="where the model directory goes (default: %(default)s)",
    )
    g.add_argument(
        "--max-failures",
        type=int,
        default=r.max_failures,
        help="worker failures survived by restarting from the last checkpoint",
    )
    g.add_argument("--num-to-keep", type=int, default=r.num_to_keep, help="best checkpoints kept")
    g.add_argument(
        "--placement-strategy",
        choices=PLACEMENT_STRATEGIES,
        default=r.placement_strategy,
        help="where Ray puts the workers: PACK (default) or SPREAD over nodes",
    )


def model_config_for(config: TrainConfig, feature_names: list[str]) -> ModelConfig:
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
