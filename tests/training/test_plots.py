"""iic_survey.training.plots: the report's figures are written, from the numbers given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iic_survey.core import metrics
from iic_survey.core.constants import CLASSES
from iic_survey.training import plots


def _png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def test_history_figure(tmp_path: Path) -> None:
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / (e + 1),
            "val_loss": 1.1 / (e + 1),
            "train_acc": 0.5 + 0.1 * e,
            "val_acc": 0.45 + 0.1 * e,
        }
        for e in range(4)
    ]
    plots.plot_history(history, tmp_path / "history.png")
    assert _png(tmp_path / "history.png").shape == (350, 900, 3)  # 9 x 3.5 in at 100 dpi
    with pytest.raises(KeyError, match="val_loss"):
        plots.plot_history([{"epoch": 0, "train_loss": 1.0}], tmp_path / "bad.png")


def test_roc_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    proba = rng.dirichlet(np.ones(3), 300)
    proba[np.arange(300), y] += 1.0
    report = metrics.classification_report(y, proba / proba.sum(axis=1, keepdims=True), CLASSES)
    plots.plot_roc(report, tmp_path / "roc.png")
    assert _png(tmp_path / "roc.png").shape == (450, 450, 3)


def test_confusion_figure_shades_by_row_fraction(tmp_path: Path) -> None:
    """Cells are shaded by their row's fraction ('Blues', 0..1): a diagonal matrix has three dark
    cells, an empty one (rows without sources count as fraction 0, not NaN) none."""
    plots.plot_confusion(np.diag([50, 3, 7]), tmp_path / "diag.png")
    plots.plot_confusion(np.zeros((3, 3), dtype=int), tmp_path / "empty.png")
    diag, empty = (_png(tmp_path / n).astype(int) for n in ("diag.png", "empty.png"))
    assert diag.shape == empty.shape == (400, 450, 3)
    dark = [int((img.sum(axis=2) < 200).sum()) for img in (diag, empty)]
    assert dark[0] > 5000 and dark[1] < dark[0] / 10, dark
