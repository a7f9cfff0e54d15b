"""The cost side of Table 3 for the paper study: parameters, MACs and CPU images/s.

Every network in its full-width 80x80 / 3-channel / 3-class form. MACs for one 1x3x80x80 image
are ``torch.utils.flop_counter`` FLOPs / 2 (convolutions and matrix products only), which is
exactly what :func:`iic_survey.model.size.count_macs` does for IICnet (the run checks that the
two agree on IICnet). Speed is measured at the pipeline's CPU settings (the classify actor's:
one torch thread, batch :data:`~iic_survey.survey.config.CPU_MODEL_BATCH`, fp32, eval mode,
BatchNorm folded into the convolutions, channels-last weights, ``torch.inference_mode``;
IICnet through :func:`~iic_survey.model.network.optimize_for_inference`, the others through
:func:`nets.fold_all`, RepVGG re-parameterised), all networks interleaved in rounds so a
load swing hits every one; the best round is reported.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments.paper import nets, train
from iic_survey.model.network import build_model, optimize_for_inference
from iic_survey.model.size import count_macs, count_params
from iic_survey.survey.config import CPU_MODEL_BATCH

PAPER_TABLE3: dict[str, tuple[float | None, float | None]] = {
    "iicnet": (1.75e6, 218.66e6),
}
"""The paper's Table 3 (parameters, MACs) where this repository records them (README,
docs/design.md): IICnet's. The comparison networks' Table 3 entries are not recorded here
and are left blank rather than typed from memory."""


def macs(model: nn.Module, in_ch: int = 3, size: int = 80) -> int:
    """MACs of one (1, in_ch, size, size) image: flop_counter FLOPs / 2, as count_macs."""
    counter = FlopCounterMode(display=False)
    model.eval()
    with counter, torch.no_grad():
        model(torch.zeros(1, in_ch, size, size))
    return int(counter.get_total_flops() // 2)


def _fast(name: str, model: nn.Module) -> nn.Module:
    """The inference form at the pipeline's settings."""
    if name == "iicnet":
        return train.ImageOnly(optimize_for_inference(model.model))
    fast = nets.fold_all(copy.deepcopy(model).eval())
    fast.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last)


def _rate(model: nn.Module, batch: torch.Tensor, seconds: float) -> float:
    """Images/s over at least two batches and ``seconds``."""
    with torch.inference_mode():
        model(batch)  # warm
        n, t0 = 0, time.perf_counter()
        while n < 2 * len(batch) or time.perf_counter() - t0 < seconds:
            model(batch)
            n += len(batch)
        return n / (time.perf_counter() - t0)


def cost(rounds: int = 3, seconds: float = 1.0) -> dict[str, Any]:
    """Parameters, MACs and images/s of IICnet and the six comparison networks."""
    iic = build_model(train.iicnet_config(1.0), seed=0)
    models: dict[str, nn.Module] = {"iicnet": train.ImageOnly(iic)}
    torch.manual_seed(0)
    models.update({n: nets.build(n) for n in nets.NETS})
    rows: dict[str, dict[str, Any]] = {}
    for name, m in models.items():
        fast = _fast(name, m)
        rows[name] = {
            "params": count_params(m),
            "params_inference": sum(p.numel() for p in fast.parameters()),
            "macs": macs(fast),
            "paper": PAPER_TABLE3.get(name, (None, None)),
            "rates": [],
            "fast": fast,
        }
    rows["iicnet"]["count_macs"] = count_macs(iic)["total"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = torch.rand(CPU_MODEL_BATCH, 3, 80, 80).to(memory_format=torch.channels_last)
        for rnd in range(rounds):
            for name, r in rows.items():
                r["rates"].append(_rate(r["fast"], batch, seconds))
                print(f"  round {rnd} {name}: {r['rates'][-1]:.1f} images/s", flush=True)
    finally:
        torch.set_num_threads(threads)
    for r in rows.values():
        r.pop("fast")
        r["rate"] = max(r["rates"])
    return {"rows": rows, "batch": CPU_MODEL_BATCH, "rounds": rounds, "threads": 1}
