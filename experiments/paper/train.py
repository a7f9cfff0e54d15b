"""Training and scoring for the paper study: one plain torch loop for every network and variant.

Every network, IICnet and its ablations included, is trained by :func:`train` on the same rows
of the same training set, with the same schedule (:class:`Budget`): Adam, a fixed number of
epochs, the rate halved for the last third (the package's own schedule,
:func:`iic_survey.training.loop.lr_at`, over :meth:`Budget.schedule`), batch 64, the package's
random dihedral augmentation (:func:`iic_survey.training.loop.augment`), seeded shuffling and
initialisation.
It scores the test split with :func:`iic_survey.core.metrics.classification_report` (no
temperature scaling: accuracy and AUC do not depend on it). The package's Ray Train path is not
used because the comparison networks are not package architectures; the loop is the same kind.

IICnet variants (:func:`iicnet`) are the package's :func:`~iic_survey.model.network.build_model`
with modules swapped in place: a 3x3 stem; no RFB (a 1x1 convolution + BN in its place, the
RFB's own shortcut, so the channel count the next layer expects is kept); no CBAM 1 / 2 / both
(``nn.Identity``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from iic_survey.core import metrics
from iic_survey.core.constants import CLASSES
from iic_survey.model.config import ModelConfig
from iic_survey.model.network import ConvBN, build_model
from iic_survey.training.config import TrainConfig
from iic_survey.training.loop import augment, lr_at


@dataclasses.dataclass(frozen=True)
class Budget:
    """The training budget every network gets."""

    name: str
    epochs: int
    rows: int | None  # training rows used (None: all); the same first rows for everyone
    width: float  # uniform channel multiplier of every network, IICnet included
    seeds: tuple[int, ...]
    batch: int = 64
    lr: float = 1e-3

    def schedule(self) -> TrainConfig:
        """The budget as the package's training config, for its schedule
        (:func:`iic_survey.training.loop.lr_at`): the rate halved for the last third."""
        return TrainConfig(
            data="(in memory)",
            epochs=self.epochs,
            batch_size=self.batch,
            lr=self.lr,
            lr_halve_epoch=math.ceil(self.epochs * 2 / 3),
        )

    def describe(self) -> str:
        """One line for the section."""
        rows = "all" if self.rows is None else f"{self.rows:,}"
        return (
            f"`{self.name}`: {self.epochs} epochs over {rows} training rows, batch {self.batch}, "
            f"Adam lr {self.lr:g} halved for the last third of the epochs, width multiplier "
            f"{self.width:g} on every network, seeds {list(self.seeds)}"
        )


BUDGETS = {
    "cpu": Budget("cpu", epochs=4, rows=3000, width=0.25, seeds=(0, 1), batch=32),
    "paper": Budget("paper", epochs=30, rows=None, width=1.0, seeds=(0, 1, 2)),
    "smoke": Budget("smoke", epochs=1, rows=256, width=0.125, seeds=(0,)),  # a quick check
}


class ImageOnly(nn.Module):
    """A package Classifier seen as images -> logits, like the comparison networks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, 3)."""
        return self.model(images, None)


def iicnet_config(width: float, image_size: int = 80, in_channels: int = 3) -> ModelConfig:
    """IICnet's default config with every width (RFB unit and head too) scaled by ``width``."""
    base = ModelConfig()
    return ModelConfig(
        widths=tuple(max(1, round(w * width)) for w in base.widths),
        rfb_inter=max(2, round(base.rfb_inter * width)),
        head_dim=max(1, round(base.head_dim * width)),
        image_size=image_size,
        in_channels=in_channels,
    )


VARIANTS = ("full", "stem3x3", "no_rfb", "no_cbam1", "no_cbam2", "no_cbam", "no_rfb_no_cbam")


def iicnet(variant: str = "full", width: float = 1.0, image_size: int = 80, in_ch: int = 3) -> Any:
    """IICnet (a package Classifier) with the named modules swapped; see the module doc."""
    cfg = iicnet_config(width, image_size, in_ch)
    model = build_model(cfg, seed=None)
    enc = model.image
    c0, c1 = cfg.widths[0], cfg.widths[1]
    if variant == "stem3x3":
        enc.stem = ConvBN(cfg.in_channels, c0, 3)
    if variant in ("no_rfb", "no_rfb_no_cbam"):
        enc.rfb = ConvBN(c0, c1, 1)
    if variant in ("no_cbam1", "no_cbam", "no_rfb_no_cbam"):
        enc.cbam1 = nn.Identity()
    if variant in ("no_cbam2", "no_cbam", "no_rfb_no_cbam"):
        enc.cbam2 = nn.Identity()
    if variant not in VARIANTS:
        raise ValueError(f"unknown IICnet variant {variant!r}; one of {VARIANTS}")
    return model


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resampling of (B, C, 80, 80) stamps to (B, C, size, size) (same field of view)."""
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def _batches(n: int, batch: int, gen: torch.Generator) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=gen)
    return [order[i : i + batch] for i in range(0, n, batch)]


def predict(model: nn.Module, images: np.ndarray, size: int = 80, batch: int = 256) -> np.ndarray:
    """Logits (N, 3) of eval-mode ``model`` (images only) on float32 images (N, C, 80, 80)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = resize(torch.from_numpy(images[i : i + batch]).to(device), size)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def train(
    make: Any, data: dict[str, dict[str, np.ndarray]], budget: Budget, seed: int, size: int = 80
) -> dict[str, Any]:
    """Train ``make()`` (a fresh images -> logits module) on ``data["train"]`` and score
    ``data["test"]``; returns the report, test logits and timings."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = make().to(device)
    gen = torch.Generator().manual_seed(seed)
    tr = data["train"]
    n = len(tr["label"]) if budget.rows is None else min(budget.rows, len(tr["label"]))
    x_all = torch.from_numpy(tr["image"][:n])
    y_all = torch.from_numpy(np.array(tr["label"][:n], dtype=np.int64))  # a writable copy
    opt = torch.optim.Adam(model.parameters(), lr=budget.lr)
    schedule = budget.schedule()
    t0, losses = time.perf_counter(), []
    for epoch in range(budget.epochs):
        for group in opt.param_groups:
            group["lr"] = lr_at(epoch, schedule)
        model.train()
        total, count = 0.0, 0
        for idx in _batches(n, budget.batch, gen):
            if len(idx) < 2:
                continue  # BatchNorm needs two rows
            x = resize(augment(x_all[idx], gen).to(device), size)
            loss = F.cross_entropy(model(x), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
        print(f"    epoch {epoch}: loss {losses[-1]:.4f}", flush=True)
    train_s = time.perf_counter() - t0
    logits = predict(model, data["test"]["image"], size)
    report = metrics.classification_report(
        data["test"]["label"], metrics.softmax(logits), list(CLASSES)
    )
    report.pop("roc", None)
    report.pop("reliability", None)
    return {
        "report": report,
        "losses": losses,
        "train_seconds": train_s,
        "train_rows": n,
        "seed": seed,
        "logits": logits,
        "model": model.cpu(),
    }
