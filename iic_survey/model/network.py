"""IICnet (Zhao et al. 2023, RAA 23 085010), an image + colour fusion variant and a colour baseline.

Every architecture is a :class:`Classifier` with the same two entry points, so training, inference
and the OOD statistics never need to know which one they hold:

* ``forward(images (B, 3, 80, 80), features (B, F)) -> logits (B, 3)`` in ``CLASSES`` order;
* ``embed(images, features) -> (B, D)``, the penultimate features.

Each architecture ignores the input it does not use (it may be ``None``).

The image network follows the paper's description: a 5x5 stem convolution + BN + ReLU, a Receptive
Field Block (Liu et al. 2018), a CBAM (Woo et al. 2018), four more 3x3 convolutions (five
convolutional layers in all), three 2x2 max-pool down-sampling layers, a second CBAM at the end of
the feature extractor and a fully connected classifier. MACs are counted by
:func:`~iic_survey.model.size.count_macs` as ``torch.utils.flop_counter`` FLOPs / 2: convolutions
and matrix products only, as thop and the paper do; BN, activations, pooling and the attention
products are not counted. ``python -m iic_survey.model`` prints the table.

Departures from Zhao et al. 2023
--------------------------------
Where the paper leaves a choice open, or where this code differs from the blocks' reference
designs; all of them are :class:`~iic_survey.model.config.ModelConfig` defaults.

====================  =========================================================================
What                  Here
====================  =========================================================================
Channel widths        Not listed in the paper; stem, RFB, conv2..conv5 = 32, 64, 64, 128, 240,
                      512, chosen to match its Table 3 parameter count (1.747 M vs 1.75 M).
RFB bottleneck        ``rfb_inter=8`` channels (branch outputs 16), where RFBNet's code uses
                      ``in // 8`` (4 for the 32-channel stem).
RFB dilations         1, 3 and 5 in the three branches, after Liu et al.'s Fig. 4(a) (RFBNet's
                      ``BasicRFB`` code: ``visual``, ``visual + 1``, ``2 * visual + 1``); the
                      3x3 and 5x5 kernels are one and two stacked 3x3 convolutions.
CBAM spatial conv     A 7x7 convolution with a bias and no BatchNorm over [mean; max] of the
                      channels (Woo et al.'s code uses a conv without bias followed by BN).
Head                  Global average pool -> dropout -> fc 384 + ReLU (``embed``) -> dropout ->
                      fc 3 (``dropout=0.2``, ``head_dim=384``).
MACs                  225.15 M for one 1x3x80x80 image, +3 % over the paper's 218.66 M.
====================  =========================================================================

The model directory (``weights.pt`` + ``model.json``) is written by
:func:`~iic_survey.model.directory.save_model_dir` and read by
:func:`~iic_survey.model.directory.load_model_dir`; the weights load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from iic_survey.model.config import ModelConfig

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
