"""``python -m iic_survey.model export-onnx``: the network and its calibration, run by ONNX
Runtime, give the probabilities PyTorch and the catalog's calibration give."""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import torch

from iic_survey.core.calibration import DepthCalibration
from iic_survey.core.constants import CLASSES
from iic_survey.model import config, directory, onnx_export
from iic_survey.model import network as M
from iic_survey.model.__main__ import main
from iic_survey.testing.model import TINY

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

CALIBRATION = DepthCalibration(
    knots=(10.0, 13.0, 15.5), log_t=(math.log(0.9), math.log(1.4), math.log(2.2)), temperature=1.3
)


def _model_dir(tmp_path: pathlib.Path, arch: str) -> tuple[pathlib.Path, M.Classifier]:
    cfg = config.ModelConfig(arch=arch, **TINY)
    net = M.build_model(cfg, seed=3).eval()
    extra = {"temperature": 1.3, "calibration": CALIBRATION, "rgb": {"stretch": "asinh"}}
    return directory.save_model_dir(tmp_path / arch, net, cfg, extra), net


@pytest.mark.parametrize("arch", ["fusion", "iicnet", "colour"])
def test_onnx_matches_pytorch_and_the_calibration(tmp_path: pathlib.Path, arch: str) -> None:
    path, net = _model_dir(tmp_path, arch)
    out = tmp_path / f"{arch}.onnx"
    assert main(["export-onnx", str(path), str(out)]) == 0
    g = torch.Generator().manual_seed(7)
    b = 9  # not the export's batch size: the batch axis is dynamic
    images = torch.rand(b, 3, 80, 80, generator=g)
    features = torch.randn(b, 7, generator=g)
    features[2, 3] = float("nan")  # missing photometry and off-edge pixels, as in the catalog
    images[4, :, :10, :] = float("nan")
    w1 = torch.tensor([6.0, 10.0, 11.7, 13.0, 14.2, 15.5, 18.0, float("nan"), 12.5])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feeds = {"images": images, "features": features, "w1": w1}
    names = [i.name for i in session.get_inputs()]
    assert names == {"fusion": ["images", "features", "w1"], "iicnet": ["images", "w1"],
                     "colour": ["features", "w1"]}[arch]  # fmt: skip
    logits, proba = session.run(None, {n: feeds[n].numpy() for n in names})
    with torch.no_grad():
        want_logits = net(images if arch != "colour" else None,
                          features if arch != "iicnet" else None).numpy()  # fmt: skip
    want = CALIBRATION.probabilities(want_logits, w1.numpy())  # the catalog's own calibration
    diff = float(np.abs(proba - want).max())
    assert diff < 1e-5, diff
    np.testing.assert_allclose(logits, want_logits, atol=1e-5, rtol=0)
    assert np.allclose(proba.sum(1), 1.0, atol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES) and meta["arch"] == arch
    assert (
        meta["weights_sha256"] == json.loads((path / "model.json").read_text())["weights"]["sha256"]
    )
    print(f"{arch}: ONNX Runtime vs PyTorch + calibration, max |dp| = {diff:.2e}")


@pytest.mark.parametrize("calibration", [CALIBRATION, DepthCalibration.constant(1.7)])
def test_the_graph_temperature_is_the_catalogs(
    tmp_path: pathlib.Path, calibration: DepthCalibration
) -> None:
    """``Calibrated.temperature`` (torch ops the graph is traced from) is ``T(W1)`` of the
    catalog's calibration at every depth, flat beyond the end knots, the single temperature
    without a W1; a constant calibration (one knot) too."""
    cfg = config.ModelConfig(arch="iicnet", **TINY)
    net = M.build_model(cfg, seed=3).eval()
    extra = {"temperature": calibration.temperature, "calibration": calibration}
    bundle = directory.load_model_dir(directory.save_model_dir(tmp_path / "m", net, cfg, extra))
    w1 = np.array([4.0, 10.0, 11.2, 13.0, 14.9, 15.5, 19.0, np.nan])
    got = onnx_export.Calibrated(bundle).temperature(torch.tensor(w1, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), calibration.temperatures(w1), rtol=1e-6)
    assert onnx_export.input_names(bundle) == ["images", "w1"]
    shapes = [tuple(x.shape) for x in onnx_export.example_inputs(bundle, batch=5)]
    assert shapes == [(5, cfg.in_channels, cfg.image_size, cfg.image_size), (5,)]
