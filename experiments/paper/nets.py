"""The six comparison networks of Zhao et al. (2023), Table 3, as compact torch definitions.

torchvision does not import beside this project's torch, so these are written here (experiments
only, not part of the package), each following the reference implementation it names, so that its
standard ImageNet form (3x224x224, 1000 classes) has the published parameter count
(:data:`PUBLISHED_PARAMS`; ``tests/experiments/test_paper_nets.py`` holds every one to 1 %):

* ``vgg16``: Simonyan & Zisserman 2015, configuration D without BatchNorm (torchvision
  ``vgg16``): 13 3x3 convolutions, 7x7 adaptive pool, fc 4096-4096-classes, with torchvision's
  initialisation (Kaiming-normal convolutions, N(0, 0.01) linear layers): with no BN to
  rescale them, the initial weights decide whether it trains at all.
* ``googlenet``: Szegedy et al. 2015 as torchvision builds it (BN after every convolution, no
  auxiliary heads, the "5x5" branch as a 3x3 like torchvision's).
* ``resnet34``: He et al. 2016, basic blocks [3, 4, 6, 3].
* ``mobilenet_v1``: Howard et al. 2017, width 1.0 (depthwise-separable convolutions, BN, ReLU).
* ``efficientnet_v2_s``: Tan & Le 2021, the S configuration as torchvision builds it
  (Fused-MBConv and MBConv stages with squeeze-excitation, SiLU; no stochastic depth).
* ``repvgg_a0``: Ding et al. 2021, RepVGG-A0 ([2, 4, 14, 1] blocks, a = 0.75, b = 2.5). It
  trains with its three branches (3x3+BN, 1x1+BN, identity BN) and is counted and timed in its
  re-parameterised inference form (one 3x3 convolution per block, :meth:`RepVGGBlock.fold`),
  which is what the published 8.30 M counts.

Every constructor takes ``in_ch``, ``num_classes`` and ``width`` (a uniform multiplier of every
channel count, fully connected widths included: the reduced CPU budget trains all networks,
IICnet too, at the same multiplier); each network is a plain ``nn.Module`` taking images
(B, C, H, W) and giving logits (B, num_classes), at any input size (adaptive pooling).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

PUBLISHED_PARAMS: dict[str, tuple[int, str]] = {
    "vgg16": (138_357_544, "torchvision vgg16 (Simonyan & Zisserman: 138 M)"),
    "googlenet": (6_624_904, "torchvision googlenet, no aux heads"),
    "resnet34": (21_797_672, "torchvision resnet34 (He et al. 2016)"),
    "mobilenet_v1": (4_200_000, "Howard et al. 2017, Table 4: 4.2 M"),
    "efficientnet_v2_s": (21_458_488, "torchvision efficientnet_v2_s (Tan & Le 2021: 22 M)"),
    "repvgg_a0": (8_300_000, "Ding et al. 2021, Table 4: 8.30 M (inference form)"),
}
"""Parameter counts of the standard ImageNet forms (224x224, 1000 classes) and their source."""

REVISION: dict[str, int] = {"vgg16": 2}
"""A network's definition revision where it changed in a way that changes training (vgg16: 2,
torchvision's initialisation added); in the study's keys, so older kept runs are retrained."""


def _c(channels: int, width: float) -> int:
    """A channel count scaled by the width multiplier (at least 1)."""
    return max(1, round(channels * width))


class CBR(nn.Sequential):
    """Convolution (no bias) + BatchNorm + optional activation; :meth:`fold` merges the BN."""

    def __init__(
        self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: str = "relu"
    ) -> None:
        acts: dict[str, Callable[[], nn.Module]] = {
            "relu": lambda: nn.ReLU(inplace=True),
            "silu": lambda: nn.SiLU(inplace=True),
            "none": nn.Identity,
        }
        super().__init__(
            nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=1e-3 if act == "silu" else 1e-5),
            acts[act](),
        )

    def fold(self) -> None:
        """Fold the eval-mode BN into the convolution (inference only)."""
        if isinstance(self[1], nn.BatchNorm2d):
            self[0] = fuse_conv_bn_eval(self[0].eval(), self[1].eval())
            self[1] = nn.Identity()


def fold_all(model: nn.Module) -> nn.Module:
    """Fold every :class:`CBR` and :class:`RepVGGBlock` of ``model`` in place; returns it."""
    for m in list(model.modules()):
        if isinstance(m, (CBR, RepVGGBlock)):
            m.fold()
    return model


class _Head(nn.Sequential):
    """Global average pool -> (dropout) -> linear."""

    def __init__(self, cin: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin, num_classes)
        )


# ---------------------------------------------------------------------------------------------
# VGG16


def vgg16(in_ch: int = 3, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """VGG16 (configuration D), no BN: (B, C, H, W) -> (B, classes)."""
    layers: list[nn.Module] = []
    cin = in_ch
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        cout = _c(int(v), width)
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]
        cin = cout
    fc = _c(4096, width)
    model = nn.Sequential(
        *layers,
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(cin * 49, fc),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(fc, fc),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(fc, num_classes),
    )
    for m in model.modules():  # torchvision's VGG initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
    return model


# ---------------------------------------------------------------------------------------------
# GoogLeNet


class Inception(nn.Module):
    """Four branches (1x1; 1x1-3x3; 1x1-3x3; pool-1x1), concatenated."""

    def __init__(self, cin: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.b1 = CBR(cin, c1, 1)
        self.b2 = nn.Sequential(CBR(cin, c3r, 1), CBR(c3r, c3, 3))
        self.b3 = nn.Sequential(CBR(cin, c5r, 1), CBR(c5r, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), CBR(cin, cp, 1))
        self.out_ch = c1 + c3 + c5 + cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, out_ch, H, W)."""
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


_INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def googlenet(in_ch: int = 3, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """GoogLeNet (Inception v1) as torchvision builds it: (B, C, H, W) -> (B, classes)."""
    c64, c192 = _c(64, width), _c(192, width)
    layers: list[nn.Module] = [
        CBR(in_ch, c64, 7, 2),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        CBR(c64, c64, 1),
        CBR(c64, c192, 3),
        nn.MaxPool2d(3, 2, ceil_mode=True),
    ]
    cin = c192
    for name, spec in _INCEPTIONS.items():
        block = Inception(cin, *(_c(s, width) for s in spec))
        layers.append(block)
        cin = block.out_ch
        if name in ("3b", "4e"):
            layers.append(nn.MaxPool2d(3 if name == "3b" else 2, 2, ceil_mode=True))
    return nn.Sequential(*layers, _Head(cin, num_classes, 0.2))


# ---------------------------------------------------------------------------------------------
# ResNet34


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (1x1 projection when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(CBR(cin, cout, 3, stride), CBR(cout, cout, 3, act="none"))
        self.short = (
            CBR(cin, cout, 1, stride, act="none") if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        return torch.relu(self.body(x) + self.short(x))


def resnet34(in_ch: int = 3, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """ResNet34: (B, C, H, W) -> (B, classes)."""
    cin = _c(64, width)
    layers: list[nn.Module] = [CBR(in_ch, cin, 7, 2), nn.MaxPool2d(3, 2, 1)]
    for i, (ch, n) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3))):
        cout = _c(ch, width)
        for j in range(n):
            layers.append(BasicBlock(cin, cout, 2 if i > 0 and j == 0 else 1))
            cin = cout
    return nn.Sequential(*layers, _Head(cin, num_classes))


# ---------------------------------------------------------------------------------------------
# MobileNet v1

_MOBILENET = (
    ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2))
    + ((512, 1),) * 5
    + (
        (1024, 2),
        (1024, 1),
    )
)


def mobilenet_v1(in_ch: int = 3, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """MobileNet v1: a 3x3 stem and 13 depthwise-separable blocks: (B, C, H, W) -> (B, classes)."""
    cin = _c(32, width)
    layers: list[nn.Module] = [CBR(in_ch, cin, 3, 2)]
    for ch, stride in _MOBILENET:
        cout = _c(ch, width)
        layers += [CBR(cin, cin, 3, stride, groups=cin), CBR(cin, cout, 1)]
        cin = cout
    return nn.Sequential(*layers, _Head(cin, num_classes))


# ---------------------------------------------------------------------------------------------
# EfficientNetV2-S


class MBConv(nn.Module):
    """(Fused-)MBConv: expand (1x1, or kxk when fused), depthwise kxk + SE, project 1x1."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, fused: bool) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if fused:
            layers.append(CBR(cin, mid if mid != cin else cout, 3, stride, act="silu"))
        else:
            sq = max(1, cin // 4)
            layers += [
                CBR(cin, mid, 1, act="silu"),
                CBR(mid, mid, 3, stride, groups=mid, act="silu"),
                SqueezeExcite(mid, sq),
            ]
        if mid != cin or not fused:
            layers.append(CBR(mid, cout, 1, act="none"))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        y = self.body(x)
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    """Channel gates from a pooled 1x1-conv bottleneck (SiLU, sigmoid)."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.nn.functional.silu(self.fc1(s))))


_EFFV2S = (  # expand, stride, out, layers, fused
    (1, 1, 24, 2, True),
    (4, 2, 48, 4, True),
    (4, 2, 64, 4, True),
    (4, 2, 128, 6, False),
    (6, 1, 160, 9, False),
    (6, 2, 256, 15, False),
)


def efficientnet_v2_s(in_ch: int = 3, num_classes: int = 1000, width: float = 1.0) -> nn.Module:
    """EfficientNetV2-S: (B, C, H, W) -> (B, classes)."""
    cin = _c(24, width)
    layers: list[nn.Module] = [CBR(in_ch, cin, 3, 2, act="silu")]
    for expand, stride, out, n, fused in _EFFV2S:
        cout = _c(out, width)
        for j in range(n):
            layers.append(MBConv(cin, cout, expand, stride if j == 0 else 1, fused))
            cin = cout
    head = _c(1280, width)
    return nn.Sequential(*layers, CBR(cin, head, 1, act="silu"), _Head(head, num_classes, 0.2))


# ---------------------------------------------------------------------------------------------
# RepVGG-A0


class RepVGGBlock(nn.Module):
    """3x3+BN, 1x1+BN and (same shape) identity-BN branches summed, then ReLU; ``deploy``
    (or :meth:`fold`) makes it one 3x3 convolution with a bias."""

    def __init__(self, cin: int, cout: int, stride: int, deploy: bool = False) -> None:
        super().__init__()
        self.fused: nn.Conv2d | None = None
        if deploy:
            self.fused = nn.Conv2d(cin, cout, 3, stride, 1)
            return
        self.k3 = CBR(cin, cout, 3, stride, act="none")
        self.k1 = CBR(cin, cout, 1, stride, act="none")
        self.idn = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, H / stride, W / stride)."""
        if self.fused is not None:
            return torch.relu(self.fused(x))
        y = self.k3(x) + self.k1(x)
        return torch.relu(y + self.idn(x) if self.idn is not None else y)

    def fold(self) -> None:
        """Re-parameterise the three eval-mode branches into one 3x3 convolution."""
        if self.fused is not None:
            return
        self.k3.fold()
        self.k1.fold()
        w3, b3 = self.k3[0].weight, self.k3[0].bias
        w1, b1 = self.k1[0].weight, self.k1[0].bias
        weight = w3 + nn.functional.pad(w1, (1, 1, 1, 1))
        bias = b3 + b1
        if self.idn is not None:
            bn, c = self.idn, w3.shape[0]
            std = (bn.running_var + bn.eps).sqrt()
            eye = torch.zeros_like(w3)
            eye[torch.arange(c), torch.arange(c), 1, 1] = 1.0
            weight = weight + eye * (bn.weight / std)[:, None, None, None]
            bias = bias + bn.bias - bn.running_mean * bn.weight / std
        conv = self.k3[0]
        self.fused = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1)
        self.fused.weight.data.copy_(weight.detach())
        self.fused.bias.data.copy_(bias.detach())
        del self.k3, self.k1, self.idn


def repvgg_a0(
    in_ch: int = 3, num_classes: int = 1000, width: float = 1.0, deploy: bool = False
) -> nn.Module:
    """RepVGG-A0 (train-time branches unless ``deploy``): (B, C, H, W) -> (B, classes)."""
    a, b = 0.75, 2.5
    chans = (min(64, int(64 * a)), int(64 * a), int(128 * a), int(256 * a), int(512 * b))
    cin, layers = in_ch, []
    for ch, n in zip(chans, (1, 2, 4, 14, 1), strict=True):
        cout = _c(ch, width)
        for j in range(n):
            layers.append(RepVGGBlock(cin, cout, 2 if j == 0 else 1, deploy))
            cin = cout
    return nn.Sequential(*layers, _Head(cin, num_classes))


NETS: dict[str, Callable[..., nn.Module]] = {
    "vgg16": vgg16,
    "googlenet": googlenet,
    "resnet34": resnet34,
    "mobilenet_v1": mobilenet_v1,
    "efficientnet_v2_s": efficientnet_v2_s,
    "repvgg_a0": repvgg_a0,
}
"""The comparison networks by name, in the paper's Table 3 order."""


def build(name: str, in_ch: int = 3, num_classes: int = 3, width: float = 1.0) -> nn.Module:
    """A comparison network by name (RepVGG in its train-time form)."""
    return NETS[name](in_ch=in_ch, num_classes=num_classes, width=width)


def inference_form(name: str, in_ch: int = 3, num_classes: int = 1000) -> nn.Module:
    """The form whose parameters are published: RepVGG re-parameterised, the rest as built."""
    if name == "repvgg_a0":
        return repvgg_a0(in_ch, num_classes, deploy=True)
    return NETS[name](in_ch=in_ch, num_classes=num_classes)
