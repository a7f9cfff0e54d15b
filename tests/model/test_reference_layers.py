"""CBAM and RFB (iic_survey.model.network) against small reference implementations.

The references below are written from the papers' equations with plain torch functions
(``F.conv2d``, ``F.linear``, explicit BatchNorm arithmetic), not from our modules' methods; they
take our modules' weights (``state_dict``) and must give the same output to 1e-6 (float64).

* CBAM, Woo et al. 2018, eqs. (1)-(3): ``M_c(F) = sigma(MLP(AvgPool(F)) + MLP(MaxPool(F)))``
  with ``MLP(x) = W1 ReLU(W0 x)``; ``F' = M_c(F) * F``;
  ``M_s(F') = sigma(f7x7([AvgPool_c(F'); MaxPool_c(F')]))``; ``F'' = M_s(F') * F'``.
* RFB, Liu, Huang & Wang 2018, Fig. 4(a): three branches (1x1 bottleneck, then 3x3 / two 3x3
  convolutions standing for the 3x3 / 5x5 kernels, then a 3x3 with dilation 1, 3, 5), each
  convolution followed by BatchNorm and ReLU except the last of a branch; the concatenation fused
  by a 1x1 convolution, scaled, added to a 1x1 shortcut, then ReLU.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from iic_survey.model import network as M

EPS = 1e-5  # BatchNorm's eps (PyTorch's default)


def _randomise_batchnorm(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial BN statistics and affine parameters (at init BN is nearly the identity, so a
    reference that skipped it would agree)."""
    g = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.2)
            bn.weight.data.copy_(torch.randn(n, generator=g))
            bn.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


# ---------------------------------------------------------------------------------------------
# CBAM


def cbam_reference(x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    """Woo et al. 2018 eqs. (1)-(3) with the weights ``w`` (our state_dict's keys)."""
    b, c, h, wd = x.shape

    def mlp(v: torch.Tensor) -> torch.Tensor:  # (B, C) -> (B, C), shared between the two pools
        hidden = torch.clamp(F.linear(v, w["mlp.0.weight"], w["mlp.0.bias"]), min=0)
        return F.linear(hidden, w["mlp.2.weight"], w["mlp.2.bias"])

    flat = x.reshape(b, c, h * wd)
    avg = flat.sum(dim=2) / (h * wd)
    mx = flat.max(dim=2).values
    m_c = 1 / (1 + torch.exp(-(mlp(avg) + mlp(mx))))  # (B, C)
    f1 = x * m_c.reshape(b, c, 1, 1)
    pooled = torch.stack([f1.sum(dim=1) / c, f1.max(dim=1).values], dim=1)  # (B, 2, H, W)
    k = w["spatial.weight"].shape[-1]
    assert w["spatial.weight"].shape == (1, 2, 7, 7), "the paper's spatial kernel is 7x7"
    m_s = 1 / (
        1 + torch.exp(-F.conv2d(pooled, w["spatial.weight"], w["spatial.bias"], padding=k // 2))
    )
    return f1 * m_s


@pytest.mark.parametrize(("channels", "reduction"), [(32, 8), (64, 16), (12, 4)])
def test_cbam_equals_the_papers_equations(channels: int, reduction: int) -> None:
    torch.manual_seed(channels)
    cbam = M.CBAM(channels, reduction=reduction).double().eval()
    assert cbam.state_dict()["mlp.0.weight"].shape == (channels // reduction, channels)
    x = torch.randn(3, channels, 11, 13, dtype=torch.float64)
    x[:, :, 2:5, 4:8] += 2.5  # structure for the spatial attention to see
    weights = {k: v.clone() for k, v in cbam.state_dict().items()}
    with torch.no_grad():
        ours = cbam(x)
        ref = cbam_reference(x, weights)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ours - x).abs().max() > 0.1  # the attention does something


# ---------------------------------------------------------------------------------------------
# RFB

RFB_BRANCHES = {
    # branch: [(kernel, dilation, relu after)], the last of a branch without ReLU
    "branch0": [(1, 1, True), (3, 1, False)],
    "branch1": [(1, 1, True), (3, 1, True), (3, 3, False)],
    "branch2": [(1, 1, True), (3, 1, True), (3, 1, True), (3, 5, False)],
}


def conv_bn(
    x: torch.Tensor, w: dict[str, torch.Tensor], key: str, kd: tuple[int, int, bool]
) -> torch.Tensor:
    """conv (no bias, 'same' padding) -> BatchNorm (eval: running statistics) -> ReLU?"""
    kernel, dilation, relu = kd
    weight = w[f"{key}.0.weight"]
    assert weight.shape[-2:] == (kernel, kernel), f"{key}: kernel {tuple(weight.shape)}"
    y = F.conv2d(x, weight, padding=dilation * (kernel - 1) // 2, dilation=dilation)
    mean, var = w[f"{key}.1.running_mean"], w[f"{key}.1.running_var"]
    gamma, beta = w[f"{key}.1.weight"], w[f"{key}.1.bias"]
    y = (y - mean[:, None, None]) / torch.sqrt(var[:, None, None] + EPS)
    y = y * gamma[:, None, None] + beta[:, None, None]
    return torch.clamp(y, min=0) if relu else y


def rfb_reference(x: torch.Tensor, w: dict[str, torch.Tensor], scale: float) -> torch.Tensor:
    """Liu et al. 2018 Fig. 4(a) with the weights ``w`` (our state_dict's keys)."""
    outs = []
    for name, layers in RFB_BRANCHES.items():
        y = x
        for i, kd in enumerate(layers):
            y = conv_bn(y, w, f"{name}.{i}", kd)
        outs.append(y)
    fused = conv_bn(torch.cat(outs, dim=1), w, "fuse", (1, 1, False))
    short = conv_bn(x, w, "shortcut", (1, 1, False))
    return torch.clamp(fused * scale + short, min=0)


@pytest.mark.parametrize(("cin", "cout", "inter", "scale"), [(16, 24, 4, 0.1), (32, 64, 8, 0.5)])
def test_rfb_equals_the_papers_block(cin: int, cout: int, inter: int, scale: float) -> None:
    torch.manual_seed(cin)
    rfb = M.RFB(cin, cout, inter=inter, scale=scale).double().eval()
    _randomise_batchnorm(rfb, seed=cin)
    weights = {k: v.clone() for k, v in rfb.state_dict().items()}
    # every weight of ours is one the reference uses (nothing of ours goes unchecked)
    used = {f"{b}.{i}" for b, layers in RFB_BRANCHES.items() for i in range(len(layers))}
    assert {k.rsplit(".", 2)[0] for k in weights} == used | {"fuse", "shortcut"}
    x = torch.randn(2, cin, 23, 19, dtype=torch.float64)
    with torch.no_grad():
        ours = rfb(x)
        ref = rfb_reference(x, weights, scale)
    assert ours.shape == (2, cout, 23, 19)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert (ref > 0).float().mean() > 0.1  # not a degenerate all-zero output


def test_folded_rfb_still_equals_the_reference() -> None:
    """BN folded into the convolutions for inference: the same block, to 1e-6."""
    torch.manual_seed(3)
    rfb = M.RFB(16, 24, inter=4).double().eval()
    _randomise_batchnorm(rfb, seed=3)
    weights = {k: v.clone() for k, v in rfb.state_dict().items()}
    for m in rfb.modules():
        if isinstance(m, M.ConvBN):
            m.fold()
    x = torch.randn(2, 16, 17, 17, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(rfb(x), rfb_reference(x, weights, 0.1), rtol=0, atol=1e-6)
