"""The Ray Train worker loop: what each worker of a ``TorchTrainer`` runs, epoch by epoch.

:func:`train_loop_per_worker` resumes from Ray Train's checkpoint if there is one, trains on the
worker's shard of the training split (Adam, the paper's halved learning rate, random dihedral
augmentation, autocast on GPU, and bf16 on a CPU that has it when asked for), validates, and
reports every epoch's metrics with a checkpoint of the training state (weights, optimiser,
scaler, history) from rank 0. The pure pieces (the LR schedule, the augmentation, the precision
choice) are plain functions tested without Ray. A ``step_hook`` in ``train_loop_config``
(:data:`StepHook`) is called before every training step: the tests pass one that kills a worker
mid-epoch to test recovery.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from iic_survey.model.config import ModelConfig
from iic_survey.model.network import build_model
from iic_survey.model.precision import cpu_has_native_bf16
from iic_survey.training.checkpoints import HISTORY_FILE, STATE_FILE, load_state
from iic_survey.training.config import PRECISIONS, TrainConfig

logger = logging.getLogger(__name__)

StepHook = Callable[[int, int, int], None]
"""``hook(epoch, step, rank)``, called by every worker before each training step (a picklable
callable in ``train_loop_config["step_hook"]``; tests use it to kill a worker mid-epoch)."""


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
    """The autocast dtype for ``precision`` on ``device``; None means plain fp32.

    On CUDA: ``auto`` is bf16 where the device has it, else fp16 (with a GradScaler, see
    :func:`_start_worker`). On a CPU: ``bf16`` where the CPU has it natively (avx512_bf16 or
    AMX; :func:`iic_survey.model.precision.cpu_has_native_bf16`), fp32 otherwise; ``auto`` and
    ``fp16`` stay fp32 there (fp16 is emulated on CPUs, and ``auto`` keeps CPU training as it
    was until a bf16 CPU run has been compared with an fp32 one).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    if precision == "fp32":
        return None
    if device.type != "cuda":
        native = device.type == "cpu" and cpu_has_native_bf16()
        return torch.bfloat16 if precision == "bf16" and native else None
    if precision == "bf16" or (precision == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


# ---------------------------------------------------------------------------------------------
# The per-worker loop


_COLUMNS = {"image": torch.float32, "features": torch.float32, "label": torch.int64}
"""The columns a batch needs, with the dtypes ``iter_torch_batches`` gives them."""


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


@dataclasses.dataclass(frozen=True)
class _Worker:
    """What one Ray Train worker trains with, fixed once it has started (or resumed)."""

    cfg: TrainConfig
    model: Any
    """The network as ``prepare_model`` returned it (wrapped in DDP across several workers)."""
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp: torch.dtype | None
    """Autocast dtype (:func:`autocast_dtype`); None: plain fp32."""
    device: torch.device
    rank: int
    world: int
    starts: tuple[int, ...]
    """The first epoch of every start of the run so far, this one last."""
    step_hook: StepHook | None = None
    """Called before every training step (:data:`StepHook`); None in real runs."""

    def autocast(self) -> torch.autocast:
        """The autocast context of a forward pass (a no-op in fp32)."""
        return torch.autocast(
            self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None
        )


def _resume(
    model: torch.nn.Module, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rank: int
) -> tuple[int, list[dict[str, Any]], list[int]]:
    """Load Ray Train's checkpoint, if any, into the model, optimiser and scaler.

    Returns the first epoch to run, the history so far and the earlier starts.
    """
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return 0, [], []
    with ckpt.as_directory() as d:
        state, history = load_state(d)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    start = int(state["epoch"]) + 1
    logger.info("rank %d: resuming after epoch %d", rank, start - 1)
    return start, history, list(state.get("starts", []))


def _start_worker(config: dict[str, Any]) -> tuple[_Worker, list[dict[str, Any]]]:
    """Build the network and optimiser from ``train_loop_config``, resume, prepare for DDP."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.from_dict(config["train"])
    model_cfg = ModelConfig.from_dict(config["model"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    model: Any = build_model(model_cfg, seed=cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = autocast_dtype(cfg.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    start, history, starts = _resume(model, opt, scaler, rank)
    worker = _Worker(
        cfg=cfg,
        model=ray.train.torch.prepare_model(model),
        opt=opt,
        scaler=scaler,
        amp=amp,
        device=device,
        rank=rank,
        world=world,
        starts=(*starts, start),
        step_hook=config.get("step_hook"),
    )
    return worker, history


def _train_epoch(w: _Worker, epoch: int, shard: Any, gen: torch.Generator) -> list[float]:
    """One epoch over this worker's shard; returns its [loss sum, correct, images]."""
    cfg = w.cfg
    w.model.train()
    # Sums stay on the device: no host sync per step (it would stall a GPU).
    loss_t = torch.zeros((), dtype=torch.float64, device=w.device)
    correct_t = torch.zeros((), dtype=torch.int64, device=w.device)
    n = 0.0
    batches = shard.iter_torch_batches(
        batch_size=cfg.batch_size,
        dtypes=_COLUMNS,
        drop_last=True,
        device=w.device,
        local_shuffle_buffer_size=cfg.shuffle_buffer,
        local_shuffle_seed=cfg.seed + epoch,
    )
    for step, batch in enumerate(batches):
        if w.step_hook is not None:
            w.step_hook(epoch, step, w.rank)
        images, features, labels = _batch_to(batch, w.device)
        if cfg.augment:
            images = augment(images, gen)
        with w.autocast():
            logits = w.model(images, features)  # (B, 3)
            loss = F.cross_entropy(logits.float(), labels)
        w.opt.zero_grad(set_to_none=True)
        w.scaler.scale(loss).backward()
        w.scaler.step(w.opt)
        w.scaler.update()
        loss_t += loss.detach() * len(labels)
        correct_t += (logits.argmax(1) == labels).sum()
        n += len(labels)
    return [float(loss_t), float(correct_t), n]


def _validate(w: _Worker, shard: Any) -> list[float]:
    """The validation shard's [loss sum, correct, images] (no gradients)."""
    w.model.eval()
    v_loss = v_correct = v_n = 0.0
    with torch.no_grad():
        for batch in shard.iter_torch_batches(batch_size=256, dtypes=_COLUMNS, device=w.device):
            images, features, labels = _batch_to(batch, w.device)
            with w.autocast():
                logits = w.model(images, features).float()
            v_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
            v_correct += float((logits.argmax(1) == labels).sum())
            v_n += len(labels)
    return [v_loss, v_correct, v_n]


def _run_epoch(
    w: _Worker, epoch: int, train_shard: Any, val_shard: Any, gen: torch.Generator
) -> dict[str, Any]:
    """Train and validate one epoch; its history row, summed over all workers."""
    for group in w.opt.param_groups:
        group["lr"] = lr_at(epoch, w.cfg)
    t0 = time.perf_counter()
    trained = _train_epoch(w, epoch, train_shard, gen)
    train_s = time.perf_counter() - t0
    validated = _validate(w, val_shard)
    loss_sum, correct, n, v_loss, v_correct, v_n, t_sum = _all_reduce(
        [*trained, *validated, train_s], w.device
    )
    val_s = time.perf_counter() - t0 - train_s
    return {
        "epoch": epoch,
        "lr": lr_at(epoch, w.cfg),
        "train_loss": loss_sum / max(n, 1),
        "train_acc": correct / max(n, 1),
        "val_loss": v_loss / max(v_n, 1),
        "val_acc": v_correct / max(v_n, 1),
        "train_images": int(n),
        "train_seconds": train_s,
        "val_seconds": val_s,
        "images_per_s": n / max(t_sum / w.world, 1e-9),
        "workers": w.world,
        "torch_threads": torch.get_num_threads(),  # Ray sets it to the CPUs reserved
    }


def _log_epoch(row: dict[str, Any], epochs: int) -> None:
    """The one-line summary of an epoch in the job's output."""
    logger.info(
        "epoch %d/%d: loss %.4f acc %.4f | val loss %.4f acc %.4f | %.1f img/s "
        "| train %.1f s, val %.1f s",
        row["epoch"] + 1,
        epochs,
        row["train_loss"],
        row["train_acc"],
        row["val_loss"],
        row["val_acc"],
        row["images_per_s"],
        row["train_seconds"],
        row["val_seconds"],
    )


def _report(w: _Worker, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Report the epoch's metrics to Ray Train, with rank 0's checkpoint of the training state.

    Every worker calls ``ray.train.report`` (it is a barrier); only rank 0 attaches a checkpoint.
    """
    import ray.train

    epoch = row["epoch"]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if w.rank == 0:
            net = w.model.module if hasattr(w.model, "module") else w.model
            state = {
                "model": net.state_dict(),
                "optimizer": w.opt.state_dict(),
                "scaler": w.scaler.state_dict(),
                "epoch": epoch,
                "starts": list(w.starts),
            }
            torch.save(state, Path(tmp) / STATE_FILE)
            (Path(tmp) / HISTORY_FILE).write_text(json.dumps(history, indent=1))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(
            {k: v for k, v in row.items() if isinstance(v, int | float)},
            checkpoint=checkpoint,
            checkpoint_dir_name=f"epoch_{epoch:05d}",
        )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker function: resume if there is a checkpoint, train, report every epoch."""
    import ray.train

    _worker_logging()
    w, history = _start_worker(config)
    start = w.starts[-1]
    gen = torch.Generator().manual_seed(w.cfg.seed * 1_000_003 + w.rank * 7919 + start)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start, w.cfg.epochs):
        row = _run_epoch(w, epoch, train_shard, val_shard, gen)
        history = [*history, row]
        if w.rank == 0:
            _log_epoch(row, w.cfg.epochs)
        _report(w, row, history)
