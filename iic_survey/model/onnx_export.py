"""The classifier as an ONNX graph, so the network runs outside this package.

:func:`export_onnx` writes a model directory's network *and its calibration* as one ONNX file:

* inputs ``images`` (B, 3, S, S) float32 (the RGB stamps, as :mod:`iic_survey.stamps` makes
  them; for the ``iicnet`` and ``fusion`` architectures), ``features`` (B, F) float32 (the
  catalog features, for ``fusion`` and ``colour``) and ``w1`` (B,) float32 (W1 in Vega mag;
  NaN where unknown);
* outputs ``logits`` (B, 3) and ``probabilities`` (B, 3), the calibrated probabilities
  ``softmax(logits / T(w1))`` of the catalog's ``p_galaxy``, ``p_quasar``, ``p_star`` (in
  ``CLASSES`` order), with ``T(w1)`` the model's depth calibration
  (:class:`~iic_survey.core.calibration.DepthCalibration`: ``log T`` piecewise linear in W1,
  flat outside its knots, the single temperature where W1 is NaN).

The class names, the input layout and the model's identity go into the graph's metadata.
:func:`cli` is ``python -m iic_survey.model export-onnx MODEL_DIR OUT.onnx``; the test checks
the graph against PyTorch with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import pathlib
from collections.abc import Sequence

import torch
from torch import nn

from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.constants import CLASSES
from iic_survey.model.directory import ModelBundle, load_model_dir

logger = logging.getLogger(__name__)

OPSET = 17
"""ONNX opset of the export (ONNX Runtime >= 1.12 runs it)."""


class Calibrated(nn.Module):
    """A classifier followed by its depth calibration: (inputs, w1) -> (logits, probabilities)."""

    knots: torch.Tensor
    log_t0: torch.Tensor
    slopes: torch.Tensor
    log_t_null: torch.Tensor

    def __init__(self, bundle: ModelBundle) -> None:
        super().__init__()
        self.model = bundle.model
        cal = bundle.calibration or DepthCalibration.constant(bundle.temperature)
        k, lt = list(cal.knots), list(cal.log_t)
        if len(k) == 1:  # a constant: two knots with one value (no empty tensors in the graph)
            k, lt = [k[0], k[0] + 1.0], [lt[0], lt[0]]
        knots = torch.tensor(k, dtype=torch.float64)  # (K,)
        log_t = torch.tensor(lt, dtype=torch.float64)  # (K,)
        slopes = (log_t[1:] - log_t[:-1]) / (knots[1:] - knots[:-1])  # (K-1,)
        self.register_buffer("knots", knots.float())
        self.register_buffer("log_t0", log_t[:1].float())
        self.register_buffer("slopes", slopes.float())
        self.register_buffer("log_t_null", torch.tensor([math.log(cal.temperature)]))
        self.uses = (bundle.model.image is not None, bundle.model.colour is not None)

    def temperature(self, w1: torch.Tensor) -> torch.Tensor:
        """``T(w1)`` (B,): ``log T`` piecewise linear between the knots, flat outside."""
        good = torch.isfinite(w1)
        w = torch.where(good, w1, self.knots[0])  # (B,)
        seg = torch.clamp(w[:, None], self.knots[None, :-1], self.knots[None, 1:])  # (B, K-1)
        log_t = self.log_t0 + ((seg - self.knots[None, :-1]) * self.slopes).sum(dim=1)  # (B,)
        return torch.exp(torch.where(good, log_t, self.log_t_null))

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images?, features?, w1) -> logits (B, 3), probabilities (B, 3)."""
        args = list(inputs)
        images = args.pop(0) if self.uses[0] else None
        features = args.pop(0) if self.uses[1] else None
        logits = self.model(images, features)  # (B, 3)
        t = self.temperature(args.pop(0))  # (B,)
        return logits, torch.softmax(logits / t[:, None], dim=1)


def input_names(bundle: ModelBundle) -> list[str]:
    """The graph's inputs for this model's architecture, in order."""
    uses = (bundle.model.image is not None, bundle.model.colour is not None)
    return [n for n, u in zip(("images", "features"), uses, strict=True) if u] + ["w1"]


def example_inputs(bundle: ModelBundle, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes (random images and features, a W1 per row)."""
    cfg = bundle.config
    g = torch.Generator().manual_seed(0)
    shapes = {"images": (batch, cfg.in_channels, cfg.image_size, cfg.image_size),
              "features": (batch, cfg.n_features), "w1": (batch,)}  # fmt: skip
    out = []
    for name in input_names(bundle):
        x = torch.rand(shapes[name], generator=g)
        out.append(x * 10 + 8 if name == "w1" else x)
    return tuple(out)


def export_onnx(model_dir: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Write the model of ``model_dir`` with its calibration as the ONNX file ``out``."""
    import onnx

    bundle = load_model_dir(model_dir, device="cpu")
    wrapper = Calibrated(bundle).eval()
    names = input_names(bundle)
    sink = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            example_inputs(bundle),
            sink,  # type: ignore[arg-type]  # a file object works (torch's hint says a path)
            input_names=names,
            output_names=["logits", "probabilities"],
            dynamic_axes={n: {0: "batch"} for n in [*names, "logits", "probabilities"]},
            opset_version=OPSET,
            dynamo=False,
        )
    graph = onnx.load_from_string(sink.getvalue())
    meta = {"classes": json.dumps(list(CLASSES)), "arch": bundle.config.arch,
            "weights_sha256": bundle.meta["weights_sha256"], "rgb": json.dumps(bundle.rgb),
            "inputs": ", ".join(names), "source": "iic_survey.model export-onnx"}  # fmt: skip
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=str(value))
    path = pathlib.Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    logger.info("wrote %s (%s model, inputs %s)", path, bundle.config.arch, names)
    return path


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m iic_survey.model export-onnx MODEL_DIR OUT.onnx``."""
    parser = argparse.ArgumentParser(prog="iic_survey.model export-onnx",
                                     description=export_onnx.__doc__)  # fmt: skip
    parser.add_argument("model_dir", help="a model directory written by training")
    parser.add_argument("out", help="the .onnx file to write")
    args = parser.parse_args(argv)
    export_onnx(args.model_dir, args.out)
    return 0
