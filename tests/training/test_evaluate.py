"""iic_survey.training.evaluate: calibration fitted on the validation split, reported on the test
split, per depth; the training domain measured on the training split."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iic_survey.core.calibration import DepthCalibration, fit_depth_calibration
from iic_survey.model import config
from iic_survey.model import network as M
from iic_survey.testing.model import TINY
from iic_survey.testing.training import make_fake_training_set
from iic_survey.training import evaluate, trainingset


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("evaluate") / "ts"
    make_fake_training_set(root, n=150)
    return str(root)


def test_read_rows_limit_is_a_stable_subset(data: str) -> None:
    every = evaluate.read_rows(data, "train", columns=("cntr", "label"))
    some = evaluate.read_rows(data, "train", limit=25, columns=("cntr", "label"))
    assert len(every["cntr"]) == 112 and len(some["cntr"]) == 25
    assert set(some["cntr"]) <= set(every["cntr"])
    again = evaluate.read_rows(data, "train", limit=25, columns=("cntr", "label"))
    assert sorted(again["cntr"]) == sorted(some["cntr"])
    assert len(evaluate.read_rows(data, "val", limit=10_000)["cntr"]) == 18  # all when fewer


def test_calibration_report_per_depth() -> None:
    rng = np.random.default_rng(0)
    n = 600
    labels = rng.integers(0, 3, n)
    w1 = rng.uniform(12.0, 17.0, n)
    logits = rng.normal(0, 1, (n, 3))
    logits[np.arange(n), labels] += 2.0
    cal = DepthCalibration(knots=(13.0, 16.0), log_t=(math.log(0.8), math.log(2.0)),
                           temperature=1.3)  # fmt: skip
    report = evaluate.calibration_report({"label": labels, "w1mpro": w1}, logits, cal)
    assert report["n"] == n and report["temperature"] == 1.3
    assert report["calibration"] == cal.to_dict()
    assert [b["n"] for b in report["ece_w1"]] == [
        int(((w1 >= lo) & (w1 < hi)).sum())
        for lo, hi in zip(evaluate.ECE_W1_EDGES[:-1], evaluate.ECE_W1_EDGES[1:], strict=True)
    ]
    assert {"ece_uncalibrated", "ece_single", "ece"} <= set(report["ece_w1"][1])
    # the report's own ECE is the calibrated one, over all depths
    assert report["ece_uncalibrated"] != report["ece"] != report["ece_single_temperature"]


def test_evaluate_fits_on_validation_and_reports_on_test(data: str) -> None:
    net = M.build_model(config.ModelConfig(**TINY), seed=0).eval()
    result = evaluate.evaluate(net, data, torch.device("cpu"))
    val = trainingset.read_split(data, "val", columns=["cntr"])
    test = trainingset.read_split(data, "test", columns=["cntr"])
    assert result.n_val == 18 and sorted(result.val["cntr"]) == sorted(val["cntr"])
    assert sorted(result.test["cntr"]) == sorted(test["cntr"])
    assert result.report["n"] == len(test["cntr"]) == 20
    np.testing.assert_allclose(result.test_proba.sum(axis=1), 1.0, rtol=1e-6)
    assert result.val_logits.shape == (18, 3)
    refit = fit_depth_calibration(result.val_logits, result.val["label"], result.val["w1mpro"])
    assert result.calibration == refit
    assert result.temperature == result.calibration.temperature


def test_training_domain_is_the_training_splits_range(data: str) -> None:
    domain = evaluate.training_domain(data)
    train = trainingset.read_split(data, "train", columns=["w1mpro"])
    assert domain.n == len(train["w1mpro"]) == 112
    lo, hi = np.quantile(train["w1mpro"], (0.001, 0.999))
    assert domain.w1 == pytest.approx((lo, hi))
