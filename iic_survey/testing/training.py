"""A fake training set: tiny, learnable, in the real on-disk format (no sky, no cutouts)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core.constants import CLASSES
from iic_survey.training import splits, trainingset

FEATURES = ("w1_w2", "w2_w3", "w1", "w1_sigma", "w2_sigma", "w3_sigma", "w3_detected")
"""The feature columns of the fake set."""


def make_fake_training_set(root: Path, n: int = 240, seed: int = 0) -> dict[str, Any]:
    """A tiny, learnable training set in the real on-disk format (no sky, no cutouts).

    Class k puts a bright blob in channel k: separable, so a few steps lower the loss.
    """
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 3
    yy, xx = np.mgrid[:80, :80]
    blob = np.exp(-((yy - 40) ** 2 + (xx - 40) ** 2) / 50.0).astype(np.float32)
    images = rng.normal(0, 0.1, (n, 3, 80, 80)).astype(np.float32)
    images[np.arange(n), label] += blob
    features = rng.normal(0, 1, (n, len(FEATURES))).astype(np.float32)
    features[:, 0] += label
    features[:, 6] = 1.0
    cntr = rng.choice(10**9, n, replace=False).astype(np.int64) + 1
    df = pd.DataFrame(
        {
            "cntr": cntr,
            "ra": rng.uniform(10, 11, n),
            "dec": rng.uniform(-1, 1, n),
            "w1mpro": rng.uniform(10.0, 17.0, n),
            "w2mpro": rng.uniform(10.0, 16.0, n),
            "w3mpro": rng.uniform(7.0, 12.0, n),
            "label": label.astype(np.int64),
            "class": np.asarray(CLASSES, dtype=object)[label],
            "quality_flags": np.zeros(n, dtype=np.uint32),
            "healpix_k5": np.zeros(n, dtype=np.int64),
        }
    )
    df["split"] = splits.assign_split(df["cntr"], df["ra"], df["dec"])
    w = trainingset.TrainingSetWriter(str(root))
    for part in np.array_split(np.arange(n), 2):
        w.write(df.iloc[part], images[part], features[part])
    return w.close(
        {
            "source": "fake",
            "feature_names": list(FEATURES),
            "rgb": {"stretch": "fake"},
            "cutout": {},
        }
    )
