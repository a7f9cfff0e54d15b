"""IICnet (Zhao et al. 2023, RAA 23 085010), an image + colour fusion variant and a colour baseline.

Every architecture is a :class:`Classifier` with the same two entry points, so training, inference
and the OOD statistics never need to know which one they hold:

* ``forward(images (B, 3, 80, 80), features (B, F)) -> logits (B, 3)`` in ``CLASSES`` order;
* ``embed(images, features) -> (B, D)``, the penultimate features.

Each architecture ignores the input it does not use (it may be ``None``).

The image network follows the paper's description: a 5x5 stem convolution + BN + ReLU, a Receptive
Field Block (Liu et al. 2018), a CBAM (Woo et al. 2018), four more 3x3 convolutions (five
convolutional layers in all), three 2x2 max-pool down-sampling layers, a second CBAM at the end of
the feature extractor and a fully connected classifier. The paper does not list channel widths;
the defaults below are chosen to match its Table 3 size (1.75 M parameters, 218.66 M MACs for one
1x3x80x80 image). MACs are counted by :func:`count_macs` as ``torch.utils.flop_counter`` FLOPs / 2:
convolutions and matrix products only, as thop and the paper do; BN, activations, pooling and the
attention products are not counted. ``python -m iic_survey.model`` prints the table.

The model directory (``weights.pt`` + ``model.json``) is written by :func:`save_model_dir` and read
by :func:`load_model_dir`; the weights load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import pathlib
import pickle
import tempfile
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.flop_counter import FlopCounterMode

from iic_survey import CLASSES, __version__
from iic_survey._util import config_from_dict, did_you_mean
from iic_survey.rgb import FEATURE_NAMES

logger = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("iicnet", "fusion", "colour")
"""Architectures :func:`build_model` knows: image only, image + catalog features, features only."""

DEFAULT_FEATURE_NAMES: tuple[str, ...] = FEATURE_NAMES
"""Catalog feature order the defaults of :class:`ModelConfig` assume (``rgb.FEATURE_NAMES``)."""

FORMAT_VERSION = 1
"""Version of the model-directory layout; a reader refuses directories with a newer one."""

WEIGHTS_FILE = "weights.pt"
META_FILE = "model.json"
EXTRA_KEYS: tuple[str, ...] = ("rgb", "temperature", "feature_stats", "metrics", "meta")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of a classifier; ``dataclasses.asdict`` of it is stored in ``model.json``."""

    arch: str = "iicnet"
    """One of :data:`ARCHS`."""
    n_features: int = 7
    """Catalog features per source (``len(rgb.FEATURE_NAMES)``); used by "fusion" and "colour"."""
    n_classes: int = len(CLASSES)
    """Output classes, in ``CLASSES`` order."""
    image_size: int = 80
    """Side of the square input images in pixels; a multiple of 8 (three 2x down-samplings)."""
    in_channels: int = 3
    """Image channels (W1, W2, W3)."""
    widths: tuple[int, int, int, int, int, int] = (32, 64, 64, 128, 240, 512)
    """Output channels of: stem, RFB, conv2, conv3, conv4, conv5."""
    rfb_inter: int = 8
    """RFB width unit: bottlenecks have ``rfb_inter`` channels, branch outputs twice that."""
    rfb_scale: float = 0.1
    """Scale of the RFB's fused branches before the shortcut is added (Liu et al. use 0.1)."""
    cbam_reduction: int = 16
    """Channel reduction of the CBAM channel-attention MLP."""
    head_dim: int = 384
    """Width of the penultimate layer: the dimension D of ``embed``."""
    colour_hidden: int = 64
    """Width of the catalog-feature MLP's hidden layers."""
    dropout: float = 0.2
    """Dropout before each classifier layer (training only)."""
    w3_flag_index: int | None = 6
    """Index of the W3-detected indicator in the features, or None if there is none."""
    w3_feature_indices: tuple[int, ...] = (1, 5)
    """Features that depend on a W3 measurement (W2-W3, sigma W3); zeroed when W3 is undetected."""

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(
                f"unknown arch {self.arch!r}{did_you_mean(self.arch, ARCHS)}; use one of {ARCHS}"
            )
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(
            self, "w3_feature_indices", tuple(int(i) for i in self.w3_feature_indices)
        )
        if len(self.widths) != 6 or min(self.widths) < 1:
            raise ValueError(f"widths must be 6 positive channel counts, got {self.widths}")
        if self.image_size < 8 or self.image_size % 8:
            raise ValueError(f"image_size must be a positive multiple of 8, got {self.image_size}")
        for name in (
            "n_features",
            "n_classes",
            "in_channels",
            "rfb_inter",
            "cbam_reduction",
            "head_dim",
            "colour_hidden",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_classes != len(CLASSES):
            raise ValueError(f"n_classes must be {len(CLASSES)} ({CLASSES}), got {self.n_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        indices = self.w3_feature_indices + (
            () if self.w3_flag_index is None else (self.w3_flag_index,)
        )
        if any(not 0 <= i < self.n_features for i in indices):
            raise ValueError(
                f"W3 feature indices {indices} out of range for n_features={self.n_features}; "
                "set w3_flag_index=None and w3_feature_indices=() if the features have no W3 flag"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        return config_from_dict(cls, d)


# ---------------------------------------------------------------------------------------------
# Building blocks


class ConvBN(nn.Sequential):
    """Convolution (no bias) + BatchNorm + optional ReLU; :meth:`fold` merges BN into the conv."""

    def __init__(self, cin: int, cout: int, k: int, dilation: int = 1, relu: bool = True) -> None:
        pad = dilation * (k - 1) // 2  # "same" padding: spatial size is kept
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)

    def fold(self) -> None:
        """Fold the (eval-mode) BN into the convolution, for inference only."""
        if isinstance(self[1], nn.BatchNorm2d):
            conv, bn = self[0], self[1]
            if not isinstance(conv, nn.Conv2d):
                raise TypeError("ConvBN expects a Conv2d first")
            self[0] = fuse_conv_bn_eval(conv.eval(), bn.eval())
            self[1] = nn.Identity()


class RFB(nn.Module):
    """Receptive Field Block (Liu, Huang & Wang 2018, Fig. 4a).

    Three branches, each a 1x1 bottleneck and 3x3 convolutions ending in a dilated 3x3 with rate 1,
    3 and 5 (the 3x3 / 5x5 kernels of the paper as 1 / 2 stacked 3x3s); their outputs are
    concatenated, fused by a 1x1 convolution, scaled and added to a 1x1 projection shortcut.
    """

    def __init__(self, cin: int, cout: int, inter: int, scale: float = 0.1) -> None:
        super().__init__()
        i, b = inter, 2 * inter
        self.branch0 = nn.Sequential(ConvBN(cin, b, 1), ConvBN(b, b, 3, dilation=1, relu=False))
        self.branch1 = nn.Sequential(
            ConvBN(cin, i, 1), ConvBN(i, b, 3), ConvBN(b, b, 3, dilation=3, relu=False)
        )
        self.branch2 = nn.Sequential(
            ConvBN(cin, i, 1),
            ConvBN(i, 3 * i // 2, 3),
            ConvBN(3 * i // 2, b, 3),
            ConvBN(b, b, 3, dilation=5, relu=False),
        )
        self.fuse = ConvBN(3 * b, cout, 1, relu=False)
        self.shortcut = ConvBN(cin, cout, 1, relu=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H, W)."""
        y = torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)  # (B, 6i, H, W)
        return F.relu(self.fuse(y) * self.scale + self.shortcut(x))


class CBAM(nn.Module):
    """Convolutional Block Attention Module (Woo et al. 2018): channel then spatial attention."""

    def __init__(self, channels: int, reduction: int = 16, kernel: int = 7) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels)
        )
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> weights in (0, 1), (B, C, 1, 1): shared MLP on avg- and max-pooled."""
        avg = self.mlp(x.mean(dim=(2, 3)))  # (B, C)
        mx = self.mlp(x.amax(dim=(2, 3)))  # (B, C)
        return torch.sigmoid(avg + mx)[:, :, None, None]

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> weights in (0, 1), (B, 1, H, W): 7x7 conv over [mean; max] over C."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x * self.channel_attention(x)
        return x * self.spatial_attention(x)


class ImageEncoder(nn.Module):
    """IICnet's feature extractor: (B, 3, S, S) images -> (B, widths[-1]) pooled features."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c0, c1, c2, c3, c4, c5 = cfg.widths
        self.stem = ConvBN(cfg.in_channels, c0, 5)  # conv 1 of 5
        self.pool1 = nn.MaxPool2d(2)  # down-sampling 1 of 3
        self.rfb = RFB(c0, c1, cfg.rfb_inter, cfg.rfb_scale)
        self.cbam1 = CBAM(c1, cfg.cbam_reduction)
        self.pool2 = nn.MaxPool2d(2)  # down-sampling 2 of 3
        self.conv2 = ConvBN(c1, c2, 3)
        self.conv3 = ConvBN(c2, c3, 3)
        self.pool3 = nn.MaxPool2d(2)  # down-sampling 3 of 3
        self.conv4 = ConvBN(c3, c4, 3)
        self.conv5 = ConvBN(c4, c5, 3)
        self.cbam2 = CBAM(c5, cfg.cbam_reduction)
        self.out_dim = c5

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Shapes for the default 80x80 input and widths."""
        x = torch.nan_to_num(images, nan=0.0, posinf=0.0, neginf=0.0)  # (B, 3, 80, 80)
        x = self.pool1(self.stem(x))  # (B, 32, 40, 40)
        x = self.cbam1(self.rfb(x))  # (B, 64, 40, 40)
        x = self.pool2(x)  # (B, 64, 20, 20)
        x = self.conv3(self.conv2(x))  # (B, 128, 20, 20)
        x = self.pool3(x)  # (B, 128, 10, 10)
        x = self.cbam2(self.conv5(self.conv4(x)))  # (B, 512, 10, 10)
        return x.mean(dim=(2, 3))  # (B, 512)


class ColourEncoder(nn.Module):
    """MLP over catalog features (B, F) -> (B, colour_hidden), robust to NaN and missing W3.

    NaN/inf become 0; when the W3-detected flag is 0 (or a W3 feature is not finite) the W3
    features are zeroed and the flag cleared, so an undetected W3 looks the same whatever value
    the feature code left there. A non-affine BatchNorm standardises the inputs from training data.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.flag = cfg.w3_flag_index
        self.w3 = list(cfg.w3_feature_indices)
        self.n_features = cfg.n_features
        h = cfg.colour_hidden
        self.norm = nn.BatchNorm1d(cfg.n_features, affine=False)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_features, h),
            nn.ReLU(inplace=True),
            nn.Linear(h, h),
            nn.ReLU(inplace=True),
        )
        self.out_dim = h

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, H)."""
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"features must be (B, {self.n_features}), got {tuple(features.shape)}"
            )
        x = torch.nan_to_num(features.float(), nan=0.0, posinf=0.0, neginf=0.0)
        if self.flag is not None:
            finite = torch.isfinite(features[:, self.w3]).all(dim=1)  # (B,)
            detected = ((x[:, self.flag] > 0.5) & finite).to(x.dtype)[:, None]  # (B, 1)
            x = x.clone()
            x[:, self.w3] = x[:, self.w3] * detected
            x[:, self.flag] = detected[:, 0]
        # A training batch of one has no batch statistics: standardise it with the running ones.
        train_stats = self.training and x.shape[0] > 1
        x = F.batch_norm(
            x,
            self.norm.running_mean,
            self.norm.running_var,
            training=train_stats,
            momentum=self.norm.momentum or 0.1,
            eps=self.norm.eps,
        )
        return self.mlp(x)  # (B, H)


class Classifier(nn.Module):
    """Image and/or colour encoders, concatenated, then a two-layer head: the common interface."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.image = ImageEncoder(cfg) if cfg.arch in ("iicnet", "fusion") else None
        self.colour = ColourEncoder(cfg) if cfg.arch in ("fusion", "colour") else None
        d_in = (self.image.out_dim if self.image else 0) + (
            self.colour.out_dim if self.colour else 0
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.fc1 = nn.Linear(d_in, cfg.head_dim)
        self.fc2 = nn.Linear(cfg.head_dim, cfg.n_classes)

    def embed(self, images: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        """Penultimate features, (B, head_dim); inputs the architecture does not use may be None."""
        parts: list[torch.Tensor] = []
        if self.image is not None:
            if images is None or images.ndim != 4:
                raise ValueError(f"{self.config.arch} needs images (B, C, H, W)")
            parts.append(self.image(images))  # (B, C5)
        if self.colour is not None:
            if features is None:
                raise ValueError(f"{self.config.arch} needs catalog features (B, F)")
            parts.append(self.colour(features))  # (B, H)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, d_in)
        return F.relu(self.fc1(self.drop(x)))  # (B, D)

    def forward(self, images: torch.Tensor | None, features: torch.Tensor | None) -> torch.Tensor:
        """Logits (B, n_classes) in ``CLASSES`` order; softmax them for probabilities."""
        return self.fc2(self.drop(self.embed(images, features)))


def build_model(config: ModelConfig, seed: int | None = None) -> Classifier:
    """A freshly initialised classifier; with ``seed`` the weights are reproducible.

    The global torch RNG is left as it was when a seed is given.
    """
    if seed is None:
        return Classifier(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Classifier(config)


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


def optimize_for_inference(
    model: Classifier, compile: bool = False, dynamic: bool | None = None
) -> nn.Module:
    """A copy of ``model`` made faster for inference; outputs equal the original's to fp32 rounding.

    Folds every BatchNorm into its convolution, freezes the parameters and stores the weights
    channels-last (NHWC), which lets oneDNN pick its fast convolution kernels on CPU and tensor
    cores on GPU; the original model is left untouched. Call the result under
    ``torch.inference_mode()``. With ``compile=True`` it is also ``torch.compile``-d with
    Inductor freezing (constant-folded weights, fused ReLU/attention ops); that costs tens of
    seconds on the first call and needs a C++ compiler on CPU. ``dynamic`` goes to
    ``torch.compile``: False compiles one static graph per batch size (fastest; pad a short
    last batch), None lets torch switch to a dynamic-batch graph at the second batch size.
    """
    fast = copy.deepcopy(model).eval()
    for module in fast.modules():
        if isinstance(module, ConvBN):
            module.fold()
    fast.requires_grad_(False)
    fast = fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile:
        compiled = torch.compile(fast, dynamic=dynamic, options={"freezing": True})
        return compiled  # type: ignore[return-value]
    return fast


# ---------------------------------------------------------------------------------------------
# The model directory: weights.pt (state_dict) + model.json


@dataclasses.dataclass(frozen=True)
class ModelBundle:
    """Everything :func:`load_model_dir` reads back: the model (eval mode) and its context."""

    model: Classifier
    config: ModelConfig
    classes: tuple[str, ...]
    rgb: dict[str, Any]
    """``RGBParams.to_dict()`` of the images the model was trained on."""
    temperature: float
    """Temperature fitted on the validation set: calibrated probabilities = softmax(logits / T)."""
    feature_stats: dict[str, Any]
    """Statistics of the training embeddings / features for out-of-distribution scores."""
    metrics: dict[str, Any]
    meta: dict[str, Any]
    """Free-form provenance, plus ``code_version``, ``weights_sha256`` and ``format_version``."""


def _jsonable(obj: Any) -> Any:
    """Plain JSON types: arrays and tuples become lists, non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.detach().cpu().tolist())
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # numpy arrays and scalars
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in model.json; convert it to plain data")


def _sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: pathlib.Path, write: Any) -> None:
    """Write via ``write(file)`` to a temporary file beside ``path``, then rename it to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        inners = [getattr(model, a, None) for a in ("module", "_orig_mod")]
        inner = next((m for m in inners if isinstance(m, nn.Module)), None)
        if inner is None:
            return model
        model = inner


def save_model_dir(
    path: str | os.PathLike[str],
    model: nn.Module,
    cfg: ModelConfig,
    extra: dict[str, Any] | None = None,
) -> pathlib.Path:
    """Write ``weights.pt`` and ``model.json`` into the folder ``path`` (created if needed).

    ``extra`` may hold ``rgb``, ``temperature``, ``feature_stats``, ``metrics`` and ``meta``
    (plain data, numpy arrays allowed). Each file is written to a temporary name and renamed,
    ``model.json`` last, so a reader never sees a half-written directory. Pass the trained model,
    not the output of :func:`optimize_for_inference` (its folded weights have other names).
    """
    extra = dict(extra or {})
    unknown = [k for k in extra if k not in EXTRA_KEYS]
    if unknown:
        raise ValueError(
            f"unknown extra key {unknown[0]!r}{did_you_mean(unknown[0], EXTRA_KEYS)}; "
            f"allowed: {EXTRA_KEYS}"
        )
    model = _unwrap(model)
    if not isinstance(model, Classifier):
        raise TypeError(f"expected a Classifier from build_model, got {type(model).__name__}")
    if model.config != cfg:
        raise ValueError(f"model was built from {model.config}, not from the given config {cfg}")
    temperature = float(extra.get("temperature", 1.0))
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")
    out = pathlib.Path(path)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out / WEIGHTS_FILE, lambda f: torch.save(state, f))
    meta = {
        **dict(extra.get("meta", {})),
        "code_version": __version__,
        "torch_version": torch.__version__,
        "n_params": count_params(model),
    }
    doc = {
        "format_version": FORMAT_VERSION,
        "arch": cfg.arch,
        "config": cfg.to_dict(),
        "classes": list(CLASSES),
        "rgb": extra.get("rgb", {}),
        "temperature": temperature,
        "feature_stats": extra.get("feature_stats", {}),
        "metrics": extra.get("metrics", {}),
        "meta": meta,
        "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(out / WEIGHTS_FILE)},
    }
    text = json.dumps(_jsonable(doc), indent=2, allow_nan=False).encode()
    _atomic_write(out / META_FILE, lambda f: f.write(text))
    logger.info("saved %s model to %s (sha256 %s)", cfg.arch, out, doc["weights"]["sha256"][:12])
    return out


def load_model_dir(
    path: str | os.PathLike[str],
    device: str | torch.device | None = None,
    expect_arch: str | None = None,
) -> ModelBundle:
    """Read a directory written by :func:`save_model_dir`; the model comes back in eval mode.

    Refuses, with an error saying why: a missing or unparsable ``model.json``, a newer
    ``format_version``, other classes, an architecture other than ``expect_arch``, weights whose
    sha256 differs from the recorded one, and weights that do not fit the recorded architecture.
    """
    root = pathlib.Path(path)
    meta_path = root / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {root} is not a model directory")
    try:
        doc = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_path} is not valid JSON: {err}") from err
    missing = [k for k in ("format_version", "config", "classes", "weights") if k not in doc]
    if missing:
        raise ValueError(
            f"{meta_path} lacks required keys {missing}; it was not written by save_model_dir"
        )
    version = doc["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ValueError(
            f"{root} has model format_version {version!r}, newer than this iic_survey "
            f"({__version__}) reads ({FORMAT_VERSION}); upgrade iic_survey"
        )
    if tuple(doc["classes"]) != CLASSES:
        raise ValueError(
            f"{root} was trained for classes {doc['classes']}, this code expects {CLASSES}"
        )
    cfg = ModelConfig.from_dict(doc["config"])
    if expect_arch is not None and cfg.arch != expect_arch:
        raise ValueError(f"{root} holds a {cfg.arch!r} model, but {expect_arch!r} was expected")
    weights = root / doc["weights"].get("file", WEIGHTS_FILE)
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found (model.json refers to it)")
    digest = _sha256(weights)
    if digest != doc["weights"].get("sha256"):
        raise ValueError(
            f"{weights} has sha256 {digest}, model.json records "
            f"{doc['weights'].get('sha256')}: the file is corrupt or was replaced"
        )
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"{weights} is not a plain state_dict and was refused by "
            f"torch.load(weights_only=True): {str(exc).splitlines()[0]}"
        ) from None
    model = build_model(cfg)
    expected, found = set(model.state_dict()), set(state)
    if expected != found:
        raise ValueError(
            f"{weights} does not fit a {cfg.arch!r} model: missing keys "
            f"{sorted(expected - found)[:5]}, unexpected keys {sorted(found - expected)[:5]}"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{weights} does not fit a {cfg.arch!r} model of config {cfg}: {err}"
        ) from err
    if device is not None:
        model = model.to(device)
    model.eval()
    meta = {**doc.get("meta", {}), "format_version": version, "weights_sha256": digest}
    return ModelBundle(
        model=model,
        config=cfg,
        classes=CLASSES,
        rgb=dict(doc.get("rgb") or {}),
        temperature=float(doc.get("temperature", 1.0)),
        feature_stats=dict(doc.get("feature_stats") or {}),
        metrics=dict(doc.get("metrics") or {}),
        meta=meta,
    )


def cli(argv: list[str] | None = None) -> int:
    """`python -m iic_survey.model [--arch A]` or `iic-survey model-info`: the size table."""
    import argparse

    parser = argparse.ArgumentParser(description=cli.__doc__)
    parser.add_argument("--arch", choices=ARCHS, default="iicnet")
    args = parser.parse_args(argv)
    print(model_summary(ModelConfig(arch=args.arch)))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
