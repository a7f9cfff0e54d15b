"""How big and how costly a classifier is: parameters, multiply-accumulates, the size table.

The paper states IICnet's size as parameters and MACs for one 1x3x80x80 image (its Table 3);
:func:`count_params` and :func:`count_macs` measure ours the same way, so the widths in
:class:`~iic_survey.model.config.ModelConfig` can be checked against it. :func:`model_summary`
is the per-layer table that ``python -m iic_survey model-info`` and ``python -m
iic_survey.model`` print (:func:`cli`).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from iic_survey.model.config import ARCHS, ModelConfig
from iic_survey.model.network import Classifier, build_model

# ---------------------------------------------------------------------------------------------
# Size and speed


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_macs(model: Classifier, image_size: int | None = None) -> dict[str, int]:
    """Multiply-accumulates for one image (+ one feature row), total and per top-level layer.

    Counted as ``torch.utils.flop_counter`` FLOPs / 2, which covers convolutions and matrix
    products only (thop's convention, used by the paper's Table 3); BN, ReLU, pooling, sigmoid
    and the attention products are not counted. Keys: ``"total"`` and module paths such as
    ``"image.rfb"`` or ``"fc1"``.
    """
    cfg = model.config
    size = image_size or cfg.image_size
    images = torch.zeros(1, cfg.in_channels, size, size)
    features = torch.zeros(1, cfg.n_features)
    counter = FlopCounterMode(display=False, depth=3)
    was_training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(images, features)
    finally:
        model.train(was_training)
    out = {"total": counter.get_total_flops() // 2}
    root = type(model).__name__ + "."
    for name, counts in counter.get_flop_counts().items():
        if name.startswith(root):
            out[name[len(root) :]] = sum(counts.values()) // 2
    return out


def model_summary(config: ModelConfig | None = None) -> str:
    """A text table of the layers, parameters and MACs of a model (``model-info`` prints it)."""
    cfg = config or ModelConfig()
    model = build_model(cfg, seed=0)
    macs = count_macs(model)
    s = cfg.image_size
    lines = [
        f"arch={cfg.arch}  input 1x{cfg.in_channels}x{s}x{s} + {cfg.n_features} features",
        f"{'layer':<16}{'params':>12}{'MACs':>16}",
    ]
    for name, module in model.named_modules():
        depth = name.count(".")
        if not name or depth > 1 or isinstance(module, nn.Dropout):
            continue
        lines.append(f"{name:<16}{count_params(module):>12,}{macs.get(name, 0):>16,}")
    total_p = count_params(model)
    lines.append(f"{'total':<16}{total_p:>12,}{macs['total']:>16,}")
    lines.append(
        f"= {total_p / 1e6:.3f} M parameters, {macs['total'] / 1e6:.2f} M MACs "
        "(torch.utils.flop_counter FLOPs / 2: convolutions and matmuls only)"
    )
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    """`python -m iic_survey.model [--arch A]` or `iic-survey model-info`: the size table."""
    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("--arch", choices=ARCHS, default="iicnet")
    args = parser.parse_args(argv)
    print(model_summary(ModelConfig(arch=args.arch)))
    return 0
