"""Depth-dependent calibration: a temperature that is a smooth function of W1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iic_survey.core import metrics
from iic_survey.core.calibration import (
    DepthCalibration,
    _hat_basis,
    _objective,
    choose_knots,
    ece_by_depth,
    ece_noise_floor,
    fit_depth_calibration,
)

EDGES = np.array([8.0, 13.0, 15.0, 16.0, 18.0])


def _sky(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits whose true temperature falls with depth: bright rows under-confident (T = 0.5),
    faint ones over-confident (T = 2.5), so no single temperature fits every depth."""
    rng = np.random.default_rng(seed)
    w1 = rng.uniform(9.0, 17.5, n)
    true_t = np.interp(w1, [9.0, 17.5], [0.5, 2.5])
    clean = rng.normal(0.0, 1.0, (n, 3)) * 1.5
    y = np.array([rng.choice(3, p=metrics.softmax(c[None])[0]) for c in clean])
    return clean * true_t[:, None], y, w1  # logits = clean logits * T_true


def test_depth_calibration_meets_ece_goal_in_every_bin_where_one_temperature_does_not() -> None:
    z_val, y_val, w_val = _sky(6000, 1)
    z_test, y_test, w_test = _sky(30000, 2)  # large bins: ECE's own noise well below 0.03
    cal = fit_depth_calibration(z_val, y_val, w_val)
    single = metrics.fit_temperature(z_val, y_val)
    before = ece_by_depth(y_test, metrics.softmax(z_test, single), w_test, EDGES)
    after = ece_by_depth(y_test, cal.probabilities(z_test, w_test), w_test, EDGES)
    assert max(b["ece"] for b in before) > 0.05  # the single temperature misses at the ends
    assert all(a["ece"] <= 0.03 for a in after if a["n"] >= 300), after
    # temperature scaling keeps every arg-max: classes and accuracy are unchanged
    assert np.array_equal(cal.probabilities(z_test, w_test).argmax(1), z_test.argmax(1))
    grid = np.array([9.5, 11.0, 13.0, 15.0, 17.0])
    truth = np.interp(grid, [9.0, 17.5], [0.5, 2.5])
    assert np.allclose(cal.temperatures(grid), truth, rtol=0.1)  # it found the trend


def test_temperature_is_continuous_flat_outside_and_global_without_w1() -> None:
    cal = DepthCalibration(knots=(12.0, 15.0, 17.0), log_t=(-0.5, 0.0, 0.7), temperature=1.3)
    t = cal.temperatures(np.array([5.0, 12.0, 13.5, 15.0, 16.999, 30.0, np.nan]))
    assert t[0] == pytest.approx(math.exp(-0.5)) and t[5] == pytest.approx(math.exp(0.7))
    assert t[2] == pytest.approx(math.exp(-0.25))
    assert t[6] == pytest.approx(1.3)
    grid = np.linspace(10, 19, 2001)
    assert np.max(np.abs(np.diff(np.log(cal.temperatures(grid))))) < 0.01  # no jumps
    assert DepthCalibration.from_dict(cal.to_dict()) == cal


def test_few_rows_give_one_temperature_and_bad_values_are_refused() -> None:
    z, y, w = _sky(400, 3)
    cal = fit_depth_calibration(z, y, w)
    assert len(cal.knots) == 1
    assert cal.temperature == pytest.approx(metrics.fit_temperature(z, y))
    assert np.allclose(cal.temperatures(w), cal.temperature)
    assert len(choose_knots(np.full(5000, 15.0))) == 1  # one depth: one knot
    with pytest.raises(ValueError, match="increase"):
        DepthCalibration(knots=(15.0, 14.0), log_t=(0.0, 0.0), temperature=1.0)
    with pytest.raises(ValueError, match="finite"):
        DepthCalibration(knots=(15.0,), log_t=(float("nan"),), temperature=1.0)
    with pytest.raises(ValueError, match="method"):
        DepthCalibration.from_dict({"method": "vector-scaling"})


def test_gradient_is_exact() -> None:
    z, y, w = _sky(500, 4)
    knots = choose_knots(w, 100)
    basis = _hat_basis(w, knots)
    theta = np.linspace(-0.3, 0.4, len(knots))
    _, grad = _objective(theta, z, y, basis)
    eps = 1e-6
    num = [
        (_objective(theta + eps * e, z, y, basis)[0] - _objective(theta - eps * e, z, y, basis)[0])
        / (2 * eps)
        for e in np.eye(len(knots))
    ]
    assert np.allclose(grad, num, atol=1e-6)


def test_noise_floor_is_what_a_calibrated_sample_of_that_size_shows() -> None:
    rng = np.random.default_rng(7)
    z = rng.normal(0.0, 1.0, (300, 3))
    p = metrics.softmax(z)
    floor = ece_noise_floor(p, draws=100)
    # 300 low-confidence sources: a calibrated model's ECE is several hundredths by noise alone
    seen = [
        metrics.expected_calibration_error(np.array([rng.choice(3, p=row) for row in p]), p)
        for _ in range(40)
    ]
    assert 0.03 < floor < 0.12
    assert abs(np.mean(seen) - floor) < 0.2 * floor
    assert ece_noise_floor(metrics.softmax(z * 0 + np.array([9.0, 0, 0])), draws=20) < 0.01
