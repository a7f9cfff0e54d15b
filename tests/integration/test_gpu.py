"""The CUDA paths: inference, the torch RGB and an AMP training step on a GPU equal the CPU's.

Every test here carries ``@pytest.mark.gpu`` and is skipped where torch sees no CUDA device
(tests/conftest.py), so on the CPU-only CI they are collected and skipped. Run them on a GPU
machine with ``.venv/bin/python -m pytest tests/integration/test_gpu.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
from iic_survey.inputs.catalog import open_catalog
from iic_survey.model import inference, precision
from iic_survey.model.config import ModelConfig
from iic_survey.model.network import build_model, optimize_for_inference
from iic_survey.stamps import rgb
from iic_survey.stamps.rgb_torch import make_rgb_torch
from iic_survey.stamps.split import StampCutter
from iic_survey.survey.classify import Classify, gate_precision
from iic_survey.testing.model import TINY_MODEL
from iic_survey.training import loop

pytestmark = pytest.mark.gpu
CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def cut(tiny_sky) -> dict[str, np.ndarray]:
    """300 rows of the tiny sky, cut (stamps, not images), with the pipeline's key columns."""
    cat = open_catalog(tiny_sky.catalog_url)
    rows = cat.read_pixel(int(tiny_sky.pixels[0]), 5, columns=PIPELINE_COLUMNS).head(300)
    rows["_pixel"], rows["_row"], rows["_chunk"] = int(tiny_sky.pixels[0]), range(len(rows)), 0
    return dict(StampCutter.from_spec(tiny_sky.images_url)(rows))


def test_torch_rgb_on_cuda_equals_the_cpu(cut):
    stamps = np.nan_to_num(cut["stamp"][:64], nan=0.0)  # NaNs too: keep both as they are
    stamps[3, 1, :4] = np.nan
    want, want_flags = rgb.make_rgb(stamps)
    got, got_flags = make_rgb_torch(torch.from_numpy(stamps).to(CUDA))
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(got_flags.cpu().numpy().astype(np.uint32), want_flags)


def test_cuda_inference_equals_cpu_inference():
    net = build_model(ModelConfig(), seed=0).eval()
    x = torch.rand(300, 3, 80, 80, generator=torch.Generator().manual_seed(0)).numpy()
    f = np.zeros((300, 7), np.float32)
    cpu = inference.Predictor(optimize_for_inference(net), CPU, None, 64)(x, f)
    gpu_net = optimize_for_inference(net.to(CUDA))
    for dtype, atol in ((None, 1e-3), (torch.bfloat16, 5e-2), (torch.float16, 1e-2)):
        logits, emb = inference.Predictor(gpu_net, CUDA, dtype, 128)(x, f)
        np.testing.assert_allclose(logits, cpu[0], atol=atol, rtol=0, err_msg=str(dtype))
        assert emb.shape == cpu[1].shape
    batch = inference.gpu_batch_size(gpu_net, CUDA, torch.bfloat16)
    assert inference.MIN_GPU_BATCH <= batch <= inference.MAX_GPU_BATCH


def test_the_classify_actor_on_cuda_equals_the_cpu_one(cut, tiny_model_dir):
    a = Classify(tiny_model_dir, "cpu", 64, None, precision="fp32")(cut)
    b = Classify(tiny_model_dir, "cuda", None, None, precision="fp32")(cut)
    np.testing.assert_array_equal(a["quality_flags"], b["quality_flags"])
    for k in ("p_galaxy", "p_quasar", "p_star"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-4, equal_nan=True, err_msg=k)
    agree = np.mean(a["class"][a["class"] != None] == b["class"][b["class"] != None])  # noqa: E711
    assert agree >= 0.99


def test_the_gate_on_cuda_resolves_auto_for_the_device(cut, tiny_model_dir):
    res = gate_precision(tiny_model_dir, "cuda", "auto", cut)
    assert res["device"] == "cuda"
    expected = "bf16" if precision.cuda_has_bf16() else "fp32"
    assert res["used"] in (expected, "fp32") and res["reason"]


@pytest.mark.parametrize("requested", ["auto", "fp16"])
def test_an_amp_training_step_on_cuda_lowers_the_loss(requested):
    dtype = loop.autocast_dtype(requested, CUDA)
    assert dtype in (torch.bfloat16, torch.float16)
    model = build_model(TINY_MODEL, seed=0).to(CUDA).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 80, 80, generator=gen).to(CUDA)
    f = torch.rand(64, 7, generator=gen).to(CUDA)
    y = torch.randint(0, 3, (64,), generator=gen).to(CUDA)
    losses = []
    for _ in range(10):
        with torch.autocast("cuda", dtype=dtype):
            loss = F.cross_entropy(model(x, f).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
