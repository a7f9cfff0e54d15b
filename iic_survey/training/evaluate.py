"""The best checkpoint on the held-out splits: calibration at every depth, the test report.

:func:`evaluate` runs the network over the validation and test splits, fits the depth-dependent
calibration (:func:`iic_survey.core.calibration.fit_depth_calibration`) on the validation
logits, and reports on the test split with the calibrated probabilities: the paper's metrics,
ECE before calibration, with the single temperature and with ``T(w1)``, and ECE per W1 bin
for both (:data:`ECE_W1_EDGES`). :func:`training_domain` measures the ranges of the training
split that define the catalog's ``safe`` subset.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from iic_survey.core import metrics
from iic_survey.core.calibration import DepthCalibration, ece_by_depth, fit_depth_calibration
from iic_survey.core.constants import CLASSES
from iic_survey.core.hashing import hash_unit
from iic_survey.model.domain import TrainingDomain
from iic_survey.model.ood import predict
from iic_survey.stamps.features import FEATURE_NAMES
from iic_survey.training import trainingset

logger = logging.getLogger(__name__)

ECE_W1_EDGES = np.array([-np.inf, 14.0, 15.0, 15.5, 16.0, np.inf])
"""W1 bins of the per-depth ECE in the test report (the quality run's depth bins)."""

EVAL_COLUMNS = ("cntr", "image", "features", "label", "w1mpro", "w2mpro", "w3mpro",
                "ra", "dec", "quality_flags")  # fmt: skip
"""Columns read of the validation and test splits."""


def read_rows(
    data: str, split: str, limit: int | None = None, columns: tuple[str, ...] = EVAL_COLUMNS
) -> dict[str, np.ndarray]:
    """``columns`` of one split; with ``limit``, a stable hash-chosen subset (only the chosen
    rows' images are read)."""
    import pyarrow.compute as pc

    cols = list(columns)
    if limit is None:
        return trainingset.read_split(data, split, columns=cols)
    ids = trainingset.read_split(data, split, columns=["cntr"]).get("cntr", np.zeros(0, np.int64))
    if len(ids) <= limit:
        return trainingset.read_split(data, split, columns=cols)
    chosen = ids[np.argsort(hash_unit(ids, "iic-ood-sample"), kind="stable")[:limit]]
    return trainingset.read_split(data, split, columns=cols, filter=pc.field("cntr").isin(chosen))


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The best checkpoint's network on the validation and test splits."""

    val: dict[str, np.ndarray]
    """The validation rows (``label``, ``w1mpro``, ...)."""
    val_logits: np.ndarray
    """(N_val, 3) validation logits; (0, 3) when the split is empty."""
    calibration: DepthCalibration
    """``T(w1)`` fitted on the validation logits (constant 1 without any)."""
    test: dict[str, np.ndarray]
    """The test rows (the validation rows when the test split is empty)."""
    test_proba: np.ndarray
    """(N_test, 3) calibrated test probabilities."""
    report: dict[str, Any]
    """The test split's report, calibrated, with ECE before and per depth, the temperature."""

    @property
    def temperature(self) -> float:
        """The single temperature (all depths; rows without a W1 get it)."""
        return self.calibration.temperature

    @property
    def n_val(self) -> int:
        """Validation rows."""
        return len(self.val.get("label", ()))


def _w1(rows: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(rows["w1mpro"], dtype=np.float64)


def calibration_report(
    test: dict[str, np.ndarray], logits: np.ndarray, calibration: DepthCalibration
) -> dict[str, Any]:
    """Test report with ``calibration``'s probabilities, plus ECE uncalibrated / single-T and
    per W1 bin (``ece_w1``: rows of {w1_lo, w1_hi, n, ece_uncalibrated, ece_single, ece})."""
    y, w1 = test["label"], _w1(test)
    proba = calibration.probabilities(logits, w1)
    single = metrics.softmax(logits, calibration.temperature)
    report = metrics.classification_report(y, proba, CLASSES)
    report["ece_uncalibrated"] = metrics.expected_calibration_error(y, metrics.softmax(logits))
    report["ece_single_temperature"] = metrics.expected_calibration_error(y, single)
    report["temperature"] = calibration.temperature
    report["calibration"] = calibration.to_dict()
    per_bin = zip(
        ece_by_depth(y, metrics.softmax(logits), w1, ECE_W1_EDGES),
        ece_by_depth(y, single, w1, ECE_W1_EDGES),
        ece_by_depth(y, proba, w1, ECE_W1_EDGES),
        strict=True,
    )
    report["ece_w1"] = [
        {**a, "ece_uncalibrated": u["ece"], "ece_single": s["ece"]} for u, s, a in per_bin
    ]
    return report


def evaluate(model: torch.nn.Module, data: str, device: torch.device) -> Evaluation:
    """Fit ``T(w1)`` on the validation split and report on the test split.

    An empty test split is replaced by the validation split; an empty validation split leaves
    the temperature at 1 at every depth.
    """
    val = read_rows(data, "val")
    test = read_rows(data, "test")
    if not len(test.get("label", ())):
        logger.warning("the test split is empty: reporting on the validation split instead")
        test = val
    if len(val.get("label", ())):
        val_logits, _ = predict(model, val["image"], val["features"], device)
        calibration = fit_depth_calibration(val_logits, val["label"], _w1(val))
    else:
        logger.warning("the validation split is empty: temperature left at 1")
        val_logits, calibration = np.zeros((0, len(CLASSES))), DepthCalibration.constant(1.0)
    logits, _ = predict(model, test["image"], test["features"], device)
    report = calibration_report(test, logits, calibration)
    proba = calibration.probabilities(logits, _w1(test))
    return Evaluation(val, val_logits, calibration, test, proba, report)


def training_domain(data: str) -> TrainingDomain:
    """The W1 and colour ranges of the whole training split (no images read)."""
    rows = trainingset.read_split(data, "train", columns=["w1mpro", "w2mpro", "w3mpro", "features"])
    detected = np.asarray(rows["features"])[:, FEATURE_NAMES.index("w3_detected")] > 0.5
    return TrainingDomain.from_photometry({**rows, "w3_detected": detected})
