"""TODO docstring for training.loop (from training)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from iic_survey.model.network import build_model
from iic_survey.training.checkpoints import HISTORY_FILE, STATE_FILE, load_state
from iic_survey.training.config import PRECISIONS, TrainConfig, model_config_from_dict

logger = logging.getLogger(__name__)

CRASH_ENV = "IIC_TRAIN_CRASH_AT"
"""Test hook: ``"epoch:step"`` makes the rank-0 worker ``os._exit(1)`` there, once per marker."""
CRASH_MARKER_ENV = "IIC_TRAIN_CRASH_MARKER"
"""Test hook: a file created just before the crash; if it exists, the crash is skipped."""


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
