"""Selection products: completeness / purity tables, thresholds, reliability, masks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iic_survey.core.flags import QualityFlag
from iic_survey.training import selection


def _proba(pred: list[int], conf: list[float]) -> np.ndarray:
    """Rows whose arg-max is ``pred`` with top probability ``conf`` (the rest split evenly)."""
    p = np.zeros((len(pred), 3))
    for i, (k, c) in enumerate(zip(pred, conf, strict=True)):
        p[i] = (1 - c) / 2
        p[i, k] = c
    return p


def test_thresholds_are_the_smallest_reaching_each_purity_and_hold_elsewhere():
    # 40 galaxies predicted galaxy at 0.9, 10 quasars predicted galaxy at 0.5: purity 0.8 at
    # thresholds <= 0.5, 1.0 above; so 0.90 / 0.95 / 0.99 all need threshold 0.51
    y = np.array([0] * 40 + [1] * 10 + [2] * 30)
    proba = _proba([0] * 40 + [0] * 10 + [2] * 30, [0.9] * 40 + [0.5] * 10 + [0.95] * 30)
    rec = selection.recommended_thresholds(y, proba).set_index(["class", "target_purity"])
    assert rec.loc[("galaxy", 0.90), "threshold"] == pytest.approx(0.51)
    assert rec.loc[("galaxy", 0.99), "purity"] == 1.0
    assert rec.loc[("galaxy", 0.99), "completeness"] == 1.0
    assert rec.loc[("star", 0.90), "threshold"] == pytest.approx(0.34)  # pure at any threshold
    assert np.isnan(rec.loc[("quasar", 0.90), "threshold"])  # never predicted
    assert "not reached" in rec.loc[("quasar", 0.90), "note"]
    # another split where the same thresholds let contaminants through
    y2 = np.array([0] * 10 + [1] * 10)
    p2 = _proba([0] * 20, [0.9] * 10 + [0.6] * 10)
    held = selection.measure_thresholds(rec.reset_index(), y2, p2).set_index(
        ["class", "target_purity"]
    )
    assert held.loc[("galaxy", 0.90), "purity"] == pytest.approx(0.5)
    assert held.loc[("galaxy", 0.90), "promised_purity"] == 1.0


def test_tables_count_by_bin_and_threshold_on_clean_rows_only():
    y = np.array([0, 0, 1, 2, 0])
    proba = _proba([0, 1, 1, 2, 0], [0.8, 0.6, 0.9, 0.7, 0.99])
    w1 = np.array([12.0, 12.5, 15.2, 15.2, 12.0])
    ra, dec = np.array([10.0, 10.0, 10.0, 10.0, 10.0]), np.array([-60.0] * 5)  # |b| ~ 56.9
    flags = np.array([0, 0, 0, 0, int(QualityFlag.ARTEFACT)])  # the last row is not clean
    t = selection.selection_tables(y, proba, w1, ra, dec, flags)
    cp = t["completeness_purity"]
    g = cp[(cp["class"] == "galaxy") & (cp["threshold"] == 0.5) & (cp["w1_hi"] == 13.0)]
    (row,) = g.itertuples()
    assert (row.n_true, row.n_selected, row.n_correct) == (2, 1, 1)
    assert row.completeness == 0.5 and row.purity == 1.0 and row.abs_b_lo == 30.0
    q = cp[(cp["class"] == "quasar") & (cp["threshold"] == 0.5) & (cp["w1_hi"] == 13.0)]
    assert q["n_selected"].item() == 1 and q["n_from_galaxy"].item() == 1
    assert q["purity"].item() == 0.0 and np.isnan(q["completeness"].item())  # no true quasar
    # the W1 marginal sums the positional table
    w = t["completeness_purity_w1"]
    key = ["class", "threshold", "w1_lo"]
    summed = cp.groupby(key)[["n_true", "n_selected", "n_correct"]].sum()
    assert (w.set_index(key)[["n_true", "n_selected", "n_correct"]] == summed).all().all()
    rel = t["reliability_w1"]
    assert rel["n"].sum() == 4  # clean rows only


def test_positions_are_galactic_and_ecliptic_latitudes():
    b, beta = selection.positions(np.array([266.405, 270.0]), np.array([-28.936, 66.561]))
    assert b[0] < 0.1  # the Galactic centre
    assert beta[1] > 89.9  # the north ecliptic pole


def test_write_tables_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 600)
    proba = _proba(list(y), list(rng.uniform(0.5, 1.0, 600)))
    t = selection.selection_tables(
        y, proba, rng.uniform(10, 17, 600), rng.uniform(0, 360, 600),
        rng.uniform(-80, 80, 600), np.zeros(600, int),
    )  # fmt: skip
    selection.write_tables(tmp_path, t, {"split": "test"})
    back = pd.read_parquet(tmp_path / selection.FILES["thresholds"])
    pd.testing.assert_frame_equal(back, t["thresholds"])
    assert (tmp_path / selection.SUMMARY).exists()
