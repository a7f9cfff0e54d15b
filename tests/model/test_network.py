"""iic_survey.model: shapes, size, blocks, robustness, speed-ups and the model directory."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

from iic_survey.core.constants import CLASSES
from iic_survey.model import config, directory
from iic_survey.model import network as M
from iic_survey.model import size as model_size
from iic_survey.testing.model import TINY

# Narrow IICnets (same layers, far fewer channels) keep tests that train or run many forward
# passes at a few seconds on two shared cores; size, speed-up and shape tests use the defaults.
# Narrower still, for the overfit test (~4 M MACs per image).
TINIER: dict[str, Any] = dict(
    widths=(4, 8, 8, 16, 16, 32), rfb_inter=2, cbam_reduction=4, head_dim=32, dropout=0.0
)
F_DEFAULT = config.ModelConfig().n_features


def inputs(b: int, seed: int = 0, size: int = 80) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, size, size, generator=g)
    features = torch.randn(b, F_DEFAULT, generator=g)
    features[:, 6] = (torch.rand(b, generator=g) > 0.3).float()  # W3-detected flag
    return images, features


@pytest.fixture(scope="module")
def iicnet() -> M.Classifier:
    return M.build_model(config.ModelConfig(), seed=0).eval()


# ---------------------------------------------------------------------------------------------
# Size and shapes


def test_size_matches_paper_table3(iicnet: M.Classifier) -> None:
    params = model_size.count_params(iicnet)
    macs = model_size.count_macs(iicnet)
    assert abs(params / 1.75e6 - 1) <= 0.05, params
    assert abs(macs["total"] / 218.66e6 - 1) <= 0.10, macs["total"]
    # The per-layer counts add up, and the expensive part is the image encoder.
    assert macs["image"] + macs["fc1"] + macs["fc2"] == macs["total"]
    assert macs["image.rfb"] > 0 and macs["image.stem"] == 5 * 5 * 3 * 32 * 80 * 80


def test_model_summary_and_cli(capsys: pytest.CaptureFixture[str]) -> None:
    text = model_size.model_summary()
    assert "image.rfb" in text and "M parameters" in text and "M MACs" in text
    assert model_size.cli(["--arch", "fusion"]) == 0
    assert "colour.mlp" in capsys.readouterr().out


@pytest.mark.parametrize("arch", config.ARCHS)
@pytest.mark.parametrize("batch", [1, 5])
def test_output_shapes_no_squeeze(arch: str, batch: int) -> None:
    cfg = config.ModelConfig(arch=arch)
    net = M.build_model(cfg, seed=0).eval()
    images, features = inputs(batch)
    with torch.no_grad():
        logits = net(images, features)
        emb = net.embed(images, features)
    assert logits.shape == (batch, len(CLASSES))
    assert emb.shape == (batch, cfg.head_dim)
    proba = torch.softmax(logits, dim=1)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(batch))


def test_unused_inputs_may_be_none() -> None:
    images, features = inputs(2)
    with torch.no_grad():
        assert M.build_model(config.ModelConfig(**TINY)).eval()(images, None).shape == (2, 3)
        assert M.build_model(config.ModelConfig(arch="colour")).eval()(None, features).shape == (
            2,
            3,
        )
    with pytest.raises(ValueError, match="needs catalog features"):
        M.build_model(config.ModelConfig(arch="fusion", **TINY))(images, None)
    with pytest.raises(ValueError, match=r"features must be \(B, 7\)"):
        M.build_model(config.ModelConfig(arch="colour"))(None, features[:, :5])


def test_train_mode_batch_of_one() -> None:
    net = M.build_model(config.ModelConfig(arch="fusion", **TINY)).train()
    images, features = inputs(1)
    assert net(images, features).shape == (1, 3)


def test_gradients_reach_the_stem() -> None:
    net = M.build_model(config.ModelConfig(arch="fusion", **TINY), seed=0).train()
    images, features = inputs(4)
    loss = nn.functional.cross_entropy(net(images, features), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert net.image is not None and net.colour is not None
    stem_conv, colour_in = net.image.stem[0], net.colour.mlp[0]
    assert isinstance(stem_conv, nn.Conv2d) and isinstance(colour_in, nn.Linear)
    assert stem_conv.weight.grad is not None and stem_conv.weight.grad.abs().sum() > 0
    assert colour_in.weight.grad is not None
    assert all(p.grad is not None for p in net.parameters()), "some parameter gets no gradient"


# ---------------------------------------------------------------------------------------------
# Blocks


def test_rfb_shape_and_dilated_receptive_field() -> None:
    torch.manual_seed(0)
    rfb = M.RFB(16, 24, inter=4).eval()
    x = torch.zeros(1, 16, 41, 41)
    x[:, :, 20, 20] = 1.0  # an impulse: in eval mode a zero background stays zero
    with torch.no_grad():
        y = rfb(x)
        y_short = rfb.shortcut(x)
    assert y.shape == (1, 24, 41, 41)
    reach = (y.abs().sum(dim=(0, 1)) > 0).nonzero()
    radius = (reach - 20).abs().max().item()
    # The deepest branch: two 3x3 (radius 2) then a 3x3 with dilation 5 (radius 5) -> 7.
    assert radius == 7
    assert (y_short.abs().sum(dim=(0, 1)) > 0).sum() == 1  # the 1x1 shortcut alone stays local
    # Each dilation shows up: the dilation-3 branch reaches radius 4, dilation-1 radius 2.
    with torch.no_grad():
        r1 = (rfb.branch1(x).abs().sum(dim=(0, 1)) > 0).nonzero()
        r0 = (rfb.branch0(x).abs().sum(dim=(0, 1)) > 0).nonzero()
    assert (r1 - 20).abs().max().item() == 4 and (r0 - 20).abs().max().item() == 1


def test_cbam_attention_maps_in_unit_interval_and_not_constant() -> None:
    torch.manual_seed(0)
    cbam = M.CBAM(32, reduction=8).eval()
    x = torch.randn(2, 32, 12, 12)
    x[:, :, 3:6, 3:6] += 3.0  # a bright patch the spatial attention can see
    with torch.no_grad():
        ca = cbam.channel_attention(x)
        sa = cbam.spatial_attention(x * ca)
        y = cbam(x)
    assert ca.shape == (2, 32, 1, 1) and sa.shape == (2, 1, 12, 12)
    for att in (ca, sa):
        assert att.min() > 0 and att.max() < 1
        assert att.std() > 1e-3
    assert sa[:, :, 3:6, 3:6].mean() != pytest.approx(sa.mean().item(), abs=1e-4)
    assert y.shape == x.shape
    torch.testing.assert_close(y, x * ca * sa)


# ---------------------------------------------------------------------------------------------
# Robustness and determinism


def test_nan_inputs_give_finite_output() -> None:
    net = M.build_model(config.ModelConfig(arch="fusion", **TINY), seed=0).eval()
    images, features = inputs(3)
    images[0, 2, :10] = float("nan")
    images[1, 0, 5, 5] = float("inf")
    features[2, 1] = float("nan")
    with torch.no_grad():
        assert torch.isfinite(net(images, features)).all()


def test_undetected_w3_ignores_w3_values() -> None:
    net = M.build_model(config.ModelConfig(arch="colour"), seed=0).eval()
    _, features = inputs(4)
    features[:, 6] = 0.0  # W3 undetected
    other = features.clone()
    other[:, 1] = torch.tensor([9.0, -3.0, float("nan"), 0.0])  # W2-W3 upper limits / missing
    other[:, 5] = 99.0
    with torch.no_grad():
        torch.testing.assert_close(net(None, features), net(None, other))
        # A NaN W3 feature with the flag set counts as undetected too.
        flagged = other.clone()
        flagged[2, 6] = 1.0
        torch.testing.assert_close(net(None, flagged)[2], net(None, features)[2])


def test_seeded_build_is_deterministic_and_leaves_global_rng() -> None:
    cfg = config.ModelConfig(arch="fusion", **TINY)
    images, features = inputs(2)
    state = torch.random.get_rng_state()
    a, b = M.build_model(cfg, seed=3).eval(), M.build_model(cfg, seed=3).eval()
    c = M.build_model(cfg, seed=4).eval()
    assert torch.equal(state, torch.random.get_rng_state())
    with torch.no_grad():
        assert torch.equal(a(images, features), b(images, features))
        assert not torch.equal(a(images, features), c(images, features))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="did you mean 'fusion'"):
        config.ModelConfig(arch="fuson")
    with pytest.raises(ValueError, match="multiple of 8"):
        config.ModelConfig(image_size=84)
    with pytest.raises(ValueError, match="out of range"):
        config.ModelConfig(n_features=5)
    with pytest.raises(ValueError, match="did you mean 'head_dim'"):
        config.ModelConfig.from_dict({"head_dims": 3})
    cfg = config.ModelConfig(arch="colour", n_features=4, w3_flag_index=None, w3_feature_indices=())
    assert config.ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# 56 s measured on 2 shared cores at load average 15 (2026-12-07): near the 120 s default under
# heavier load, so it has its own limit rather than a larger default for every test.
@pytest.mark.timeout(300)
def test_tiny_model_overfits_64_stamps() -> None:
    """64 synthetic stamps, class = colour and width of a central blob, fitted to ~100 %."""
    g = torch.Generator().manual_seed(0)
    n = 64
    labels = torch.arange(n) % 3
    yy, xx = torch.meshgrid(torch.arange(80.0), torch.arange(80.0), indexing="ij")
    r2 = (yy - 40) ** 2 + (xx - 40) ** 2
    width = torch.tensor([6.0, 3.0, 2.0])[labels]  # galaxies extended, quasars/stars compact
    colour = torch.tensor([[1.0, 0.8, 0.6], [0.6, 0.9, 1.0], [1.0, 0.5, 0.2]])[labels]  # (n, 3)
    blob = torch.exp(-r2[None] / (2 * width[:, None, None] ** 2))  # (n, 80, 80)
    noise = 0.05 * torch.randn(n, 3, 80, 80, generator=g)
    images = colour[:, :, None, None] * blob[:, None] + noise  # (n, 3, 80, 80)
    net = M.build_model(config.ModelConfig(**TINIER), seed=0).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(images, None), labels)
        loss.backward()
        opt.step()
    # 30 steps are too few for the BN running averages to follow the weights: recompute them
    # once (cumulative average) so that the eval-mode model is the one being checked.
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        net(images, None)
    net.eval()
    with torch.no_grad():
        accuracy = (net(images, None).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.98, (accuracy, loss.item())


# ---------------------------------------------------------------------------------------------
# Speed-ups keep the outputs


@pytest.mark.parametrize("arch", ["iicnet", "fusion"])
def test_optimize_for_inference_keeps_outputs(arch: str) -> None:
    net = M.build_model(config.ModelConfig(arch=arch), seed=0)
    # Non-trivial BN statistics, so that folding them is actually tested.
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, nn.BatchNorm2d):
                assert mod.running_mean is not None and mod.running_var is not None
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    net.eval()
    fast = M.optimize_for_inference(net)
    images, features = inputs(3)
    with torch.inference_mode():
        ref = net(images, features)
        out = fast(images, features)
        emb = fast.embed(images, features)  # type: ignore[operator]
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(emb, net.embed(images, features), rtol=1e-4, atol=1e-4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules()), "original left untouched"


def test_the_cpu_model_batch_keeps_outputs() -> None:
    """The pipeline's small CPU forward batches (a speed-up) give the outputs of one big batch."""
    from iic_survey.model.ood import predict
    from iic_survey.survey.config import CPU_MODEL_BATCH

    net = M.optimize_for_inference(M.build_model(config.ModelConfig(arch="fusion"), seed=0).eval())
    images, features = inputs(2 * CPU_MODEL_BATCH + 3)  # a short last batch too
    cpu = torch.device("cpu")
    with torch.inference_mode():
        small = predict(net, images.numpy(), features.numpy(), cpu, CPU_MODEL_BATCH)
        big = predict(net, images.numpy(), features.numpy(), cpu, 256)
    for a, b in zip(small, big, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_inference_keeps_outputs() -> None:
    net = M.build_model(config.ModelConfig(), seed=0).eval()
    fast = M.optimize_for_inference(net, compile=True)
    images, features = inputs(4)
    with torch.inference_mode():
        torch.testing.assert_close(
            fast(images, features), net(images, features), rtol=1e-4, atol=1e-4
        )


# ---------------------------------------------------------------------------------------------
# The model directory


def saved(tmp_path: pathlib.Path, arch: str = "fusion") -> tuple[pathlib.Path, M.Classifier]:
    cfg = config.ModelConfig(arch=arch, **TINY)
    net = M.build_model(cfg, seed=1).eval()
    extra = {
        "rgb": {"stretch": "asinh", "q": 8.0},
        "temperature": 1.3,
        "feature_stats": {"mean": np.zeros(3), "cov_inv": np.eye(3)},
        "metrics": {"accuracy": 0.9, "auc_star": float("nan")},
        "meta": {"run": "test"},
    }
    return directory.save_model_dir(tmp_path / "model", net, cfg, extra), net


def test_save_load_round_trip(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, net = saved(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == [
        "model.json",
        "weights.pt",
        "weights.safetensors",
    ]
    calls = []
    real_load = torch.load

    def spy(*args: object, **kwargs: object) -> object:
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    bundle = directory.load_model_dir(path, expect_arch="fusion")
    assert calls == [True]
    assert isinstance(real_load(path / "weights.pt", weights_only=True), dict)
    assert bundle.config == net.config and bundle.classes == CLASSES
    assert bundle.temperature == 1.3 and bundle.rgb["stretch"] == "asinh"
    assert bundle.feature_stats["cov_inv"] == np.eye(3).tolist()
    assert bundle.metrics["auc_star"] is None  # NaN is stored as JSON null
    assert bundle.meta["run"] == "test" and len(bundle.meta["weights_sha256"]) == 64
    assert not bundle.model.training
    images, features = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(images, features), net(images, features))


def _edit_json(path: pathlib.Path, **changes: object) -> None:
    doc = json.loads((path / "model.json").read_text())
    doc.update(changes)
    (path / "model.json").write_text(json.dumps(doc))


def test_load_refuses_newer_format(tmp_path: pathlib.Path) -> None:
    path, _ = saved(tmp_path)
    _edit_json(path, format_version=directory.FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="newer than this iic_survey"):
        directory.load_model_dir(path)


def test_load_refuses_other_architecture(tmp_path: pathlib.Path) -> None:
    path, _ = saved(tmp_path)
    with pytest.raises(ValueError, match="holds a 'fusion' model, but 'iicnet'"):
        directory.load_model_dir(path, expect_arch="iicnet")
    # model.json claiming another arch than the weights: the keys do not fit.
    doc = json.loads((path / "model.json").read_text())
    _edit_json(path, config={**doc["config"], "arch": "iicnet"})
    with pytest.raises(ValueError, match=r"does not fit a .iicnet. model.*unexpected keys"):
        directory.load_model_dir(path)


def test_load_refuses_missing_keys_and_bad_hash(tmp_path: pathlib.Path) -> None:
    path, net = saved(tmp_path)
    state = net.state_dict()
    del state["fc2.bias"]
    torch.save(state, path / "weights.pt")
    with pytest.raises(ValueError, match="sha256"):
        directory.load_model_dir(path)
    doc = json.loads((path / "model.json").read_text())
    _edit_json(path, weights={**doc["weights"], "sha256": directory._sha256(path / "weights.pt")})
    # the two weight files now disagree: refused, naming both
    with pytest.raises(ValueError, match=r"weights.safetensors and .*weights.pt hold different"):
        directory.load_model_dir(path)
    (path / directory.SAFETENSORS_FILE).unlink()
    with pytest.raises(ValueError, match=r"missing keys \['fc2.bias'\]"):
        directory.load_model_dir(path)
    doc = json.loads((path / "model.json").read_text())
    del doc["config"]
    (path / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"lacks required keys \['config'\]"):
        directory.load_model_dir(path)
    with pytest.raises(FileNotFoundError, match="not a model directory"):
        directory.load_model_dir(tmp_path / "nowhere")


def test_safetensors_hold_the_same_weights_and_are_preferred(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    path, net = saved(tmp_path)
    from_st = load_file(path / directory.SAFETENSORS_FILE)  # any safetensors reader
    from_pt = torch.load(path / directory.WEIGHTS_FILE, weights_only=True)
    assert set(from_st) == set(from_pt) == set(net.state_dict())
    for k, v in from_st.items():  # bit-exact
        assert v.dtype == from_pt[k].dtype and torch.equal(v, from_pt[k]), k
    doc = json.loads((path / "model.json").read_text())
    assert doc["safetensors"]["sha256"] == directory._sha256(path / directory.SAFETENSORS_FILE)
    images, features = inputs(2)
    # safetensors only: loads without torch.load (which unpickles)
    (path / directory.WEIGHTS_FILE).rename(tmp_path / "weights.pt")
    monkeypatch.setattr(torch, "load", mock.Mock(side_effect=AssertionError("torch.load used")))
    bundle = directory.load_model_dir(path)
    assert bundle.meta["weights_sha256"] == doc["weights"]["sha256"]  # identity unchanged
    with torch.no_grad():
        assert torch.equal(bundle.model(images, features), net(images, features))
    monkeypatch.undo()
    # an older directory: weights.pt only, model.json without a safetensors record
    (tmp_path / "weights.pt").rename(path / directory.WEIGHTS_FILE)
    (path / directory.SAFETENSORS_FILE).unlink()
    del doc["safetensors"]
    (path / "model.json").write_text(json.dumps(doc))
    with torch.no_grad():
        out = directory.load_model_dir(path).model(images, features)
    assert torch.equal(out, net(images, features))
    (path / directory.WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"weights\.pt not found"):
        directory.load_model_dir(path)


def test_save_checks_its_inputs(tmp_path: pathlib.Path) -> None:
    cfg = config.ModelConfig(**TINY)
    net = M.build_model(cfg)
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        directory.save_model_dir(tmp_path, net, cfg, {"temperatur": 1.0})
    with pytest.raises(ValueError, match="not from the given config"):
        directory.save_model_dir(tmp_path, net, dataclasses.replace(cfg, head_dim=8))
    with pytest.raises(ValueError, match="temperature must be"):
        directory.save_model_dir(tmp_path, net, cfg, {"temperature": 0.0})
    with pytest.raises(TypeError, match="Classifier"):
        directory.save_model_dir(tmp_path, M.optimize_for_inference(net, compile=False).image, cfg)  # type: ignore[arg-type]


def test_save_unwraps_ddp_like_wrappers(tmp_path: pathlib.Path) -> None:
    class Wrapper(nn.Module):  # what DistributedDataParallel looks like from outside
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

    cfg = config.ModelConfig(**TINY)
    net = M.build_model(cfg, seed=2).eval()
    path = directory.save_model_dir(tmp_path / "m", Wrapper(net), cfg)
    images, _ = inputs(2)
    with torch.no_grad():
        torch.testing.assert_close(
            directory.load_model_dir(path).model(images, None), net(images, None)
        )
