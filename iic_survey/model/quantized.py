"""The ``int8`` plan: IICnet's image encoder quantized to int8 for x86 CPUs, and the gate set.

On a CPU without native bf16 (AVX2 only) autocast to bf16 is emulated and runs slower than
fp32; int8 is what such a CPU computes fast. :func:`quantize_int8` applies PyTorch's
post-training static quantization (FX graph mode, the ``x86`` backend: FBGEMM and oneDNN
kernels) to a copy of the model's image encoder: every convolution (BN folded, ReLU fused)
runs in int8, with per-channel weight scales and per-tensor activation scales observed on
calibration images. The two CBAM attention modules stay fp32 (their inputs dequantized, their
outputs quantized again): in int8 their sigmoids and element-wise products cost more than they
save (on the tiny demo IICnet 1.27x fp32 with them in int8, 1.56x without; the paper-sized one
2.74x / 2.80x, AVX-512) and the catalog's agreement with fp32 is the same. The colour encoder
and the head (``fc1``, ``fc2``) stay fp32, so the embeddings and logits come back as fp32 like
every plan. The result keeps the model's ``embed`` / ``fc2`` interface, so
:class:`~iic_survey.model.inference.Predictor` runs it on its fixed-shape batches unchanged.

Measured (``python -m benchmarks.precision plans``; paper-sized IICnet, one thread, batch 16): about
1.8-1.9x eager fp32 with the ISA forced to AVX2 (``ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2``) and about 3x with AVX-512 VNNI.

The gate set (:data:`GATE_SET`, written at training time by :func:`write_gate_set`) holds
validation stamps for the precision gate and training stamps for the int8 calibration, so both
are the same for every run of a model; :func:`load_gate_set` reads it back (None when a model
directory predates it).
"""

from __future__ import annotations

import copy
import logging
import pathlib
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from iic_survey.model.network import CBAM

logger = logging.getLogger(__name__)

INT8 = "int8"
"""The plan's name (a ``--precision`` choice)."""
ENGINE = "x86"
"""PyTorch's quantized engine for x86 CPUs (FBGEMM or oneDNN kernels, picked per operator)."""
CALIBRATION_IMAGES = 256
"""Images the int8 activation ranges are observed on."""
CALIBRATION_BATCH = 16
"""Images per calibration pass (fixed: the observers' result depends on it)."""
GATE_SET = "gate_set.npz"
"""File of the model directory holding the gate set and the int8 calibration images."""
GATE_SET_ROWS = 2048
"""Validation rows in a gate set (the gate's statistical bound needs >= ~600, see
:func:`~iic_survey.model.agreement.lower_bound`)."""
GATE_COLUMNS: tuple[str, ...] = ("features", "w1mpro", "w2mpro", "w3mpro", "quality_flags")
"""Columns kept beside the images: what the run's scoring (``T(W1)``, domain) reads."""


def int8_available() -> bool:
    """True when this PyTorch build has the x86 quantized engine (FBGEMM)."""
    return ENGINE in torch.backends.quantized.supported_engines


def _plain_convs(model: nn.Module) -> None:
    """Drop the ``Identity`` a folded ConvBN keeps in place of its BN, in place, so the
    quantizer sees conv -> ReLU and fuses them (an unfolded conv -> BN -> ReLU fuses as is)."""
    for module in model.modules():
        if isinstance(module, nn.Sequential) and any(isinstance(m, nn.Identity) for m in module):
            kept = [m for m in module if not isinstance(m, nn.Identity)]
            for key in list(module._modules):
                del module._modules[key]
            for i, m in enumerate(kept):
                module.add_module(str(i), m)


def quantize_int8(model: nn.Module, images: np.ndarray | torch.Tensor, batch: int) -> nn.Module:
    """A copy of ``model`` whose image encoder runs in int8, calibrated on ``images``.

    Parameters
    ----------
    model
        A :class:`~iic_survey.model.network.Classifier` in eval mode (folded or not; it is not
        changed).
    images
        Calibration images (N, 3, H, W), e.g. the gate set's training stamps; run through the
        observers in batches of ``batch``.
    batch
        Images per calibration pass (the run's fixed batch).

    Raises
    ------
    ValueError
        The model has no image encoder (the colour-only baseline), or no calibration images.
    RuntimeError
        This PyTorch has no x86 quantized engine.
    """
    if getattr(model, "image", None) is None:
        raise ValueError("this model has no image encoder to run in int8")
    if not int8_available():
        raise RuntimeError(
            f"this PyTorch has no {ENGINE!r} quantized engine "
            f"(has {torch.backends.quantized.supported_engines})"
        )
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))
    if not len(x):
        raise ValueError("int8 needs calibration images; got none")
    torch.backends.quantized.engine = ENGINE
    quant = copy.deepcopy(model).eval()
    quant = quant.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    _plain_convs(quant.image)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # torch.ao.quantization warns that it moves to torchao; it is what this torch has
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        mapping = get_default_qconfig_mapping(ENGINE)
        for name, module in quant.image.named_modules():
            if isinstance(module, CBAM):
                mapping.set_module_name(name, None)  # attention in fp32 (module docstring)
        prepared = prepare_fx(quant.image, mapping, (x[:batch],))
        for i in range(0, len(x), batch):
            prepared(x[i : i + batch])  # (B, 3, H, W): observers record activation ranges
        quant.image = convert_fx(prepared)
    quant.requires_grad_(False)
    return quant


# ---------------------------------------------------------------------------------------------
# The gate set


def write_gate_set(
    model_dir: str | pathlib.Path,
    gate_rows: Mapping[str, np.ndarray],
    calibration_images: np.ndarray,
) -> pathlib.Path:
    """Write the gate set: ``gate_rows`` (``image`` plus :data:`GATE_COLUMNS`) and the int8
    ``calibration_images``, images as float16 (half the bytes; the gate compares plans on the
    same inputs, so their rounding does not bias it)."""
    path = pathlib.Path(model_dir) / GATE_SET
    arrays: dict[str, Any] = {
        "image": np.asarray(gate_rows["image"], dtype=np.float16),
        "calibration_image": np.asarray(calibration_images, dtype=np.float16),
    }
    for name in GATE_COLUMNS:
        if name in gate_rows:
            arrays[name] = np.asarray(gate_rows[name])
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    logger.info("gate set: %d rows, %d calibration images -> %s", len(arrays["image"]),
                len(arrays["calibration_image"]), path)  # fmt: skip
    return path


def has_gate_set(model_dir: str | pathlib.Path) -> bool:
    """True when the model directory has a gate set."""
    return (pathlib.Path(model_dir) / GATE_SET).is_file()


def load_gate_set(model_dir: str | pathlib.Path) -> dict[str, np.ndarray] | None:
    """The model directory's gate set (images as float32), or None when it has none."""
    path = pathlib.Path(model_dir) / GATE_SET
    if not has_gate_set(model_dir):
        return None
    with np.load(path, allow_pickle=False) as npz:
        out = {k: npz[k] for k in npz.files}
    for k in ("image", "calibration_image"):
        out[k] = out[k].astype(np.float32)
    return out


def int8_model(model: nn.Module, model_dir: str, device: torch.device | str) -> nn.Module:
    """The int8 model of a model directory, calibrated on its gate set's training stamps in
    batches of :data:`CALIBRATION_BATCH` (so the gate and every actor build the same one).

    Raises ValueError where int8 cannot run: not a CPU, or a directory without a gate set.
    """
    if torch.device(device).type != "cpu":
        raise ValueError(f"int8 runs on x86 CPUs only, not on {torch.device(device).type}")
    gate_set = load_gate_set(model_dir)
    if gate_set is None or not len(gate_set.get("calibration_image", ())):
        raise ValueError(
            f"model {model_dir} has no gate set ({GATE_SET}, written by training since issue "
            f"25) to calibrate int8 on"
        )
    images = gate_set["calibration_image"][:CALIBRATION_IMAGES]
    return quantize_int8(model, images, CALIBRATION_BATCH)
