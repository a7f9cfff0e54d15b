"""Training IICnet (and its fusion / colour-only variants) with Ray Train V2.

One :class:`TrainConfig` describes a run; :func:`train` runs it: a ``TorchTrainer`` whose
workers stream their shard of the training set (``ray.train.get_dataset_shard`` +
``iter_torch_batches``), train with the paper's schedule (Adam, lr 1e-4 halved after epoch 50,
200 epochs) and report a checkpoint every epoch. Checkpoints go to ``RunConfig(name,
storage_path)``; the best by validation loss are kept. Rerunning with the same name resumes:
Ray Train restores its checkpoint list and the loop continues after the last finished epoch, and
``FailureConfig(max_failures)`` restarts a dead worker group from the last checkpoint the same
way. At the end :func:`iic_survey.evaluation.finalize` calibrates the best checkpoint on the
validation split, reports on the test split and writes the model directory.

The pure pieces (the LR schedule, sky-respecting augmentation, the precision choice) are plain
functions so they are tested without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from iic_survey._util import config_from_dict, did_you_mean

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a GPU that supports it, else fp16 on GPU, fp32 on CPU."""

CRASH_ENV = "IIC_TRAIN_CRASH_AT"
"""Test hook: ``"epoch:step"`` makes the rank-0 worker ``os._exit(1)`` there, once per marker."""
CRASH_MARKER_ENV = "IIC_TRAIN_CRASH_MARKER"
"""Test hook: a file created just before the crash; if it exists, the crash is skipped."""

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


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
        from iic_survey.model import ARCHS

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
# Pure pieces


def lr_at(epoch: int, config: TrainConfig) -> float:
    """Learning rate of a (0-based) epoch: ``lr`` before ``lr_halve_epoch``, half of it after."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return config.lr * (0.5 if epoch >= config.lr_halve_epoch else 1.0)


def dihedral(images: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """One of the 8 symmetries of the square on (..., H, W): a mirror (optional), then k x 90 deg.

    Pixels are only permuted, so every channel's flux is kept exactly and channels never mix.
    """
    x = torch.flip(images, dims=(-1,)) if flip else images
    return torch.rot90(x, k % 4, dims=(-2, -1))


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random dihedral transform per image of (B, C, H, W); the same one for all its channels."""
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"augment expects square images (B, C, S, S), got {tuple(images.shape)}")
    choice = torch.randint(0, 8, (images.shape[0],), generator=generator)  # (B,)
    out = torch.empty_like(images)
    for g in range(8):
        idx = torch.nonzero(choice == g).flatten().to(images.device)
        if idx.numel():
            out[idx] = dihedral(images[idx], g % 4, g >= 4)
    return out


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp32" or device.type != "cuda":
        return None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _maybe_crash(epoch: int, step: int, rank: int) -> None:
    """The test hook behind :data:`CRASH_ENV`: a real process death, once per marker file.

    Before dying it waits until Ray Train has committed every checkpoint reported so far: Ray's
    controller collects reports asynchronously, and the hook must test recovery from the last
    finished epoch, not the (legitimate) loss of a report still in flight.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec or rank != 0:
        return
    e, s = (int(x) for x in spec.split(":"))
    marker = os.environ.get(CRASH_MARKER_ENV)
    if (epoch, step) != (e, s) or (marker and Path(marker).exists()):
        return
    import ray.train

    ray.train.get_all_reported_checkpoints(
        consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120
    )
    if marker:
        Path(marker).write_text(f"crashed at epoch {epoch} step {step}\n")
    logger.warning("test hook %s: worker exiting at epoch %d step %d", CRASH_ENV, epoch, step)
    os._exit(1)


# ---------------------------------------------------------------------------------------------
# The per-worker loop


def _batch_to(batch: dict[str, torch.Tensor], device: torch.device) -> tuple[torch.Tensor, ...]:
    images = batch["image"].to(device, dtype=torch.float32, non_blocking=True)
    features = batch["features"].to(device, dtype=torch.float32, non_blocking=True)
    labels = batch["label"].to(device, dtype=torch.long, non_blocking=True)
    return images, features, labels


def _all_reduce(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return [float(v) for v in t.cpu()]


def load_state(checkpoint_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(training state, history) of one checkpoint directory; tensors load ``weights_only``."""
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    history = json.loads((Path(checkpoint_dir) / HISTORY_FILE).read_text())
    return state, history


def _worker_logging() -> None:
    """Show this package's INFO lines (epoch summaries) in the worker's log / the job's output."""
    pkg = logging.getLogger("iic_survey")
    if not pkg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        pkg.addHandler(handler)
        pkg.setLevel(logging.INFO)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function: resume if there is a checkpoint, train, report every epoch."""
    import ray.train
    import ray.train.torch

    from iic_survey.model import build_model

    _worker_logging()
    cfg = TrainConfig.from_dict(config["train"])
    model_cfg = model_config_from_dict(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model: Any = build_model(model_cfg, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    start, history, starts = 0, list[dict[str, Any]](), list[int]()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state, history = load_state(d)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start = int(state["epoch"]) + 1
        starts = list(state.get("starts", []))
        logger.info("rank %d: resuming after epoch %d", rank, start - 1)
    starts.append(start)
    model = ray.train.torch.prepare_model(model)
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + rank * 7919 + start)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    cols = {"image": torch.float32, "features": torch.float32, "label": torch.int64}

    for epoch in range(start, cfg.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, cfg)
        model.train()
        t0 = time.perf_counter()
        # Sums stay on the device: no host sync per step (it would stall a GPU).
        loss_t = torch.zeros((), dtype=torch.float64, device=device)
        correct_t = torch.zeros((), dtype=torch.int64, device=device)
        n = 0.0
        batches = train_shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            dtypes=cols,
            drop_last=True,
            device=device,
            local_shuffle_buffer_size=cfg.shuffle_buffer,
            local_shuffle_seed=cfg.seed + epoch,
        )
        for step, batch in enumerate(batches):
            _maybe_crash(epoch, step, rank)
            images, features, labels = _batch_to(batch, device)
            if cfg.augment:
                images = augment(images, gen)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                logits = model(images, features)  # (B, 3)
                loss = F.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_t += loss.detach() * len(labels)
            correct_t += (logits.argmax(1) == labels).sum()
            n += len(labels)
        loss_sum, correct = float(loss_t), float(correct_t)
        train_s = time.perf_counter() - t0
        model.eval()
        v_loss = v_correct = v_n = 0.0
        with torch.no_grad():
            for batch in val_shard.iter_torch_batches(batch_size=256, dtypes=cols, device=device):
                images, features, labels = _batch_to(batch, device)
                with torch.autocast(
                    device.type, dtype=amp or torch.float32, enabled=amp is not None
                ):
                    logits = model(images, features).float()
                v_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
                v_correct += float((logits.argmax(1) == labels).sum())
                v_n += len(labels)
        loss_sum, correct, n, v_loss, v_correct, v_n, t_sum = _all_reduce(
            [loss_sum, correct, n, v_loss, v_correct, v_n, train_s], device
        )
        val_s = time.perf_counter() - t0 - train_s
        row = {
            "epoch": epoch,
            "lr": lr_at(epoch, cfg),
            "train_loss": loss_sum / max(n, 1),
            "train_acc": correct / max(n, 1),
            "val_loss": v_loss / max(v_n, 1),
            "val_acc": v_correct / max(v_n, 1),
            "train_images": int(n),
            "train_seconds": train_s,
            "val_seconds": val_s,
            "images_per_s": n / max(t_sum / world, 1e-9),
            "workers": world,
            "torch_threads": torch.get_num_threads(),  # Ray sets it to the CPUs reserved
        }
        history = [*history, row]
        if rank == 0:
            logger.info(
                "epoch %d/%d: loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f img/s "
                "| train %.1f s, val %.1f s",
                epoch + 1,
                cfg.epochs,
                row["train_loss"],
                row["train_acc"],
                row["val_loss"],
                row["val_acc"],
                row["images_per_s"],
                train_s,
                val_s,
            )
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                net = model.module if hasattr(model, "module") else model
                state = {
                    "model": net.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch,
                    "starts": starts,
                }
                torch.save(state, Path(tmp) / STATE_FILE)
                (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history, indent=1))
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                {k: v for k, v in row.items() if isinstance(v, int | float)},
                checkpoint=checkpoint,
                checkpoint_dir_name=f"epoch_{epoch:05d}",
            )


# ---------------------------------------------------------------------------------------------
# The driver


def model_config_from_dict(d: dict[str, Any]) -> Any:
    """``ModelConfig.from_dict`` (kept here so workers import model.py lazily)."""
    from iic_survey.model import ModelConfig

    return ModelConfig.from_dict(d)


def model_config_for(config: TrainConfig, feature_names: list[str]) -> Any:
    """The ``ModelConfig`` for a run: the arch, widths, and the W3 features found by name."""
    from iic_survey.model import ModelConfig

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


def detect_gpu(mode: str) -> bool:
    """``--use-gpu auto|yes|no``: auto asks the connected Ray cluster whether it has GPUs."""
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"use-gpu must be auto, yes or no, got {mode!r}")
    if mode != "auto":
        return mode == "yes"
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def split_datasets(config: TrainConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """Ray Data datasets of the train and val splits (the columns the loop needs only).

    Small splits are materialised once in the object store (see ``TrainConfig.cache``), which
    saves re-reading and re-decoding the Parquet every epoch.
    """
    import ray

    from iic_survey import labels

    cols = ["image", "features", "label", "cntr"]
    train_ds = labels.read_split_ray(config.data, "train", columns=cols)
    if config.max_train_rows is not None:
        total = train_ds.count()  # from the Parquet footers: no data is read
        if total > config.max_train_rows:
            key = f"iic-subset-{config.seed}"
            train_ds = train_ds.map_batches(
                _SubsetFilter(key, config.max_train_rows / total), batch_format="numpy"
            )
    val_ds = labels.read_split_ray(config.data, "val", columns=cols)
    out = {"train": train_ds.drop_columns(["cntr"]), "val": val_ds.drop_columns(["cntr"])}
    rows = sum(manifest["counts"][s][c] for s in ("train", "val") for c in manifest["counts"][s])
    if config.max_train_rows is not None:
        rows = min(rows, config.max_train_rows + sum(manifest["counts"]["val"].values()))
    nbytes = (
        rows
        * 4
        * (
            int(np.prod(manifest.get("image_shape", (3, 80, 80))))
            + len(manifest["feature_names"])
            + 2
        )
    )
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    if config.cache == "yes" or (config.cache == "auto" and nbytes < store / 4):
        logger.info(
            "caching %d rows (~%.0f MB) of train + val in the object store", rows, nbytes / 1e6
        )
        out = {k: v.materialize() for k, v in out.items()}
    return out


class _SubsetFilter:
    """Keep rows whose keyed hash of cntr is below ``frac``: a stable subset."""

    def __init__(self, key: str, frac: float) -> None:
        self.key, self.frac = key, frac

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from iic_survey.labels import hash_unit

        keep = hash_unit(batch["cntr"], self.key) < self.frac
        return {k: v[keep] for k, v in batch.items()}


def fit(config: TrainConfig, run: RunSettings) -> Any:
    """Run (or resume) the Ray Train part only; returns the ``ray.train.Result``."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from iic_survey import labels, paths

    info = labels.read_manifest(config.data)
    model_cfg = model_config_for(config, list(info["feature_names"]))
    resources = {"CPU": run.cpus_per_worker, **({"GPU": 1} if run.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": dataclasses.asdict(config), "model": model_cfg.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.num_workers, use_gpu=run.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage_path or paths.default_runs(),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.num_to_keep,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
        ),
        datasets=split_datasets(config, info),
    )
    return trainer.fit()


def best_checkpoint(result: Any) -> Any:
    """The kept checkpoint with the lowest validation loss (the latest if none has metrics)."""
    if result.checkpoint is None:
        raise RuntimeError(f"run at {result.path} has no checkpoint: no epoch finished")
    scored = [
        (m.get("val_loss", float("inf")), i, c)
        for i, (c, m) in enumerate(result.best_checkpoints or [])
    ]
    return min(scored)[2] if scored else result.checkpoint


def train(config: TrainConfig, run: RunSettings) -> dict[str, Any]:
    """Run (or resume) training on the connected Ray cluster, then finalise the model directory.

    Returns a summary: run path, best checkpoint, test metrics, model directory.
    """
    from iic_survey import evaluation, labels, paths

    result = fit(config, run)
    best = best_checkpoint(result)
    logger.info("training done: best checkpoint %s, latest %s", best.path, result.checkpoint.path)
    info = labels.read_manifest(config.data)
    summary = evaluation.finalize(
        config,
        model_config_for(config, list(info["feature_names"])),
        best_checkpoint=best,
        latest_checkpoint=result.checkpoint,
        model_dir=run.model_dir or paths.default_model(),
        use_gpu=run.use_gpu,
        manifest=info,
        run_meta={
            "run_name": run.name,
            "run_path": result.path,
            "num_workers": run.num_workers,
            "use_gpu": run.use_gpu,
        },
    )
    summary.update(run_path=result.path, best_checkpoint=best.path)
    return summary


__all__ = [
    "PRECISIONS",
    "RunSettings",
    "TrainConfig",
    "augment",
    "autocast_dtype",
    "best_checkpoint",
    "dihedral",
    "fit",
    "lr_at",
    "train",
    "train_loop_per_worker",
]
