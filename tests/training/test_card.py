"""The model card (README.md of a model directory): written by training's finalize from the
numbers it measured, and saying above all when the model was trained on a synthetic sky."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from iic_survey.testing.training import finalize_fake_run
from iic_survey.training import card


def _report() -> dict:
    return {
        "n": 6,
        "accuracy": 0.5,
        "macro": {"auc": 0.75},
        "per_class": {
            c: {"precision": 0.5, "recall": 0.5, "f1": 0.5} for c in ("galaxy", "quasar", "star")
        },
        "ece": 0.031,
        "ece_uncalibrated": 0.12,
        "ece_single_temperature": 0.05,
        "calibration": {"knots_w1": [12.0, 15.0]},
        "ece_w1": [
            {
                "w1_lo": float("-inf"),
                "w1_hi": 14.0,
                "n": 4,
                "ece_uncalibrated": 0.2,
                "ece_single": 0.1,
                "ece": 0.0412,
            },
            {
                "w1_lo": 14.0,
                "w1_hi": float("inf"),
                "n": 2,
                "ece_uncalibrated": 0.3,
                "ece_single": 0.2,
                "ece": 0.0987,
            },
        ],
    }


def test_card_holds_the_measured_numbers_per_depth() -> None:
    label = np.array([0, 1, 2, 0, 1, 2])
    proba = np.eye(3)[[0, 1, 0, 1, 1, 0]]  # right: rows 0, 1, 4
    w1 = np.array([10.0, 12.0, 13.0, 13.5, 15.0, 16.0])
    meta = {"arch": "iicnet", "training_set": "ts", "epochs": 3, "best_epoch": 1, "n_val": 9,
            "temperature": 1.2, "n_params": 1234, "code_version": "0.1.0"}  # fmt: skip
    counts = {"train": {"galaxy": 5, "quasar": 4, "star": 3},
              "test": {"galaxy": 2, "quasar": 2, "star": 2}}  # fmt: skip
    manifest = {"source": "synthetic", "counts": counts}
    domain = {"w1": [9.5, 16.5], "w1_w2": [-0.2, 1.5], "n": 12, "quantiles": [0.001, 0.999]}
    text = card.model_card(_report(), meta, manifest, domain, {"label": label, "proba": proba,
                                                               "w1": w1})  # fmt: skip
    assert text.splitlines()[0].endswith("(trained on a synthetic sky)")
    assert "**Trained on a synthetic sky.**" in text and "Do not use" in text
    # accuracy per W1 bin: rows < 14 are 0..3 (2 of 4 right), >= 14 are 4, 5 (1 of 2)
    assert re.search(r"\| < 14 \| 4 \| 0\.5000 \| 0\.2000 \| 0\.0412 \|", text)
    assert re.search(r"\| >= 14 \| 2 \| 0\.5000 \| 0\.3000 \| 0\.0987 \|", text)
    assert "| train | 5 | 4 | 3 | 12 |" in text and "| val | 0 | 0 | 0 | 0 |" in text
    assert "W1 (mag): 9.50 to 16.50" in text and "## Intended use" in text
    real = card.model_card(_report(), meta, {**manifest, "source": "sdss"}, domain,
                           {"label": label, "proba": proba, "w1": w1})  # fmt: skip
    assert "synthetic" not in real.lower()


@pytest.mark.slow
def test_finalize_writes_the_card(tmp_path: Path) -> None:
    finalize_fake_run(tmp_path)
    text = (tmp_path / "model" / card.CARD_FILE).read_text()
    doc = json.loads((tmp_path / "model" / "model.json").read_text())
    test = doc["metrics"]["test"]
    assert f"accuracy {test['accuracy']:.4f}" in text
    assert f"{test['ece']:.4f} with T(W1)" in text
    for row in test["ece_w1"]:
        assert f"| {row['n']} |" in text
    assert f"{doc['meta']['n_params']} parameters" in text
