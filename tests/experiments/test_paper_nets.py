"""The comparison networks of experiments/paper (issue 19): published sizes, shapes, folding.

experiments/ is outside the package; these tests guard its network definitions, because the paper
comparison is only meaningful if VGG16, GoogLeNet, ResNet34, MobileNet v1, EfficientNetV2-S and
RepVGG-A0 are the networks their names say (their ImageNet forms must have the published
parameter counts) and if the IICnet ablations remove what they say they remove.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.paper import cost, errors, nets, train
from iic_survey.model.network import build_model
from iic_survey.model.size import count_macs, count_params


@pytest.mark.parametrize("name", list(nets.NETS))
def test_imagenet_form_has_the_published_parameter_count(name):
    with torch.device("meta"):  # no memory, no initialisation cost
        model = nets.inference_form(name, in_ch=3, num_classes=1000)
        out = model(torch.zeros(1, 3, 224, 224))
    published, _source = nets.PUBLISHED_PARAMS[name]
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / published - 1) < 0.01, (name, count, published)
    assert tuple(out.shape) == (1, 1000)


@pytest.mark.parametrize("name", list(nets.NETS))
def test_80px_three_class_forms_give_three_logits(name):
    with torch.device("meta"):  # the full-width form, shapes only
        full = nets.build(name, in_ch=3, num_classes=3)
        assert tuple(full(torch.zeros(5, 3, 80, 80)).shape) == (5, 3)
    torch.manual_seed(0)
    narrow = nets.build(name, in_ch=4, num_classes=3, width=0.125).eval()
    with torch.no_grad():
        out = narrow(torch.rand(3, 4, 80, 80))
    assert tuple(out.shape) == (3, 3) and torch.isfinite(out).all()


def _with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics and affine parameters, so folding has something to fold."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("name", ["repvgg_a0", "mobilenet_v1", "efficientnet_v2_s"])
def test_folding_keeps_the_outputs(name):
    torch.manual_seed(0)
    model = _with_running_stats(nets.build(name, width=0.25))
    x = torch.rand(2, 3, 80, 80)
    with torch.no_grad():
        before = model(x)
        after = nets.fold_all(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_repvgg_fold_gives_the_inference_form():
    folded = nets.fold_all(_with_running_stats(nets.build("repvgg_a0")))
    deploy = nets.repvgg_a0(3, 3, deploy=True)
    assert count_params(folded) == count_params(deploy)


def test_iicnet_variants_remove_what_they_say():
    full = train.iicnet("full")
    assert count_params(full) == count_params(build_model(train.iicnet_config(1.0)))
    counts = {v: count_params(train.iicnet(v)) for v in train.VARIANTS}
    enc = full.image
    rfb, c1, c2 = (count_params(m) for m in (enc.rfb, enc.cbam1, enc.cbam2))
    assert counts["no_cbam1"] == counts["full"] - c1
    assert counts["no_cbam2"] == counts["full"] - c2
    assert counts["no_cbam"] == counts["full"] - c1 - c2
    shortcut = count_params(enc.rfb.shortcut)  # the 1x1 conv + BN that stands in for the RFB
    assert counts["no_rfb"] == counts["full"] - rfb + shortcut
    assert counts["stem3x3"] < counts["full"]
    for v in train.VARIANTS:
        model = train.ImageOnly(train.iicnet(v, 0.25, 64, 4)).eval()
        with torch.no_grad():
            assert tuple(model(torch.rand(2, 4, 64, 64)).shape) == (2, 3)


def test_the_cost_counter_counts_like_count_macs():
    model = build_model(train.iicnet_config(1.0), seed=0)
    assert cost.macs(train.ImageOnly(model)) == count_macs(model)["total"]


def test_kmeans_separates_two_blobs():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (30, 3)), rng.normal(5, 0.1, (20, 3))])
    labels, _ = errors.kmeans(x, 2, seed=0)
    assert len(set(labels[:30])) == 1 and len(set(labels[30:])) == 1
    assert labels[0] != labels[-1]


def test_vgg16_starts_from_torchvisions_initialisation():
    torch.manual_seed(0)
    model = nets.vgg16(num_classes=3, width=0.25)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    for conv in convs:  # Kaiming normal, fan out, ReLU gain: std = sqrt(2 / (9 * out))
        expected = (2 / (9 * conv.out_channels)) ** 0.5
        assert abs(conv.weight.std().item() / expected - 1) < 0.15
        assert not conv.bias.any()
    assert all(abs(lin.weight.std().item() - 0.01) < 0.002 for lin in linears)


def test_a_kept_run_is_keyed_by_its_schedule_and_the_networks_revision():
    import dataclasses as dc

    from experiments.paper.__main__ import Runs

    b = train.BUDGETS["cpu"]
    base = Runs.key(b, "resnet34", "full", 80, 3, 0)
    assert Runs.key(dc.replace(b, lr=b.lr / 10), "resnet34", "full", 80, 3, 0) != base
    assert Runs.key(dc.replace(b, width=1.0), "resnet34", "full", 80, 3, 0) != base
    assert "vgg16@r2" in Runs.key(b, "vgg16", "full", 80, 3, 0)


def test_every_network_trains_on_the_packages_schedule_halved_for_the_last_third():
    from iic_survey.training.loop import lr_at

    budget = train.BUDGETS["cpu"]  # 4 epochs: the rate halves from epoch 3 (ceil(4 * 2 / 3))
    schedule = budget.schedule()
    assert [lr_at(e, schedule) for e in range(4)] == [1e-3, 1e-3, 1e-3, 5e-4]
    assert (schedule.epochs, schedule.batch_size) == (budget.epochs, budget.batch)
