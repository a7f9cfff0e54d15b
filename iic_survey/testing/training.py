"""A fake training set: tiny, learnable, in the real on-disk format (no sky, no cutouts); and a
model directory finalised from it without Ray Train (:func:`finalize_fake_run`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from iic_survey.core.constants import CLASSES
from iic_survey.model.network import build_model
from iic_survey.training import config, splits, trainingset
from iic_survey.training.finalize import FinishedRun, finalize_local

FEATURES = ("w1_w2", "w2_w3", "w1", "w1_sigma", "w2_sigma", "w3_sigma", "w3_detected")
"""The feature columns of the fake set."""


def make_fake_training_set(root: Path, n: int = 240, seed: int = 0) -> trainingset.Manifest:
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


TINY_TRAINING: dict[str, Any] = {
    "widths": (4, 8, 8, 8, 8, 8),
    "head_dim": 16,
    "batch_size": 16,
    "lr": 1e-3,
    "shuffle_buffer": 64,
}
"""``TrainConfig`` keywords of a tiny, fast run."""


def finalize_fake_run(root: Path, epochs: int = 2) -> tuple[dict[str, Any], trainingset.Manifest]:
    """Finalise an untrained tiny IICnet on a fake training set under ``root`` as a finished
    run would be (one checkpoint, ``epochs`` rows of history), into ``root / "model"``:
    (finalize's summary, the training set's manifest)."""
    import torch
    from ray.train import Checkpoint

    man = make_fake_training_set(root / "ts", n=150)
    cfg = config.TrainConfig(data=str(root / "ts"), epochs=epochs, **TINY_TRAINING)
    mcfg = config.model_config_for(cfg, man["feature_names"])
    history = [
        {"epoch": e, "train_loss": 1.0 - e / 10, "val_loss": 1.1 - e / 10, "train_acc": 0.4,
         "val_acc": 0.4, "lr": 1e-3}
        for e in range(epochs)
    ]  # fmt: skip
    ck_dir = root / "ck"
    ck_dir.mkdir(parents=True)
    state = {"model": build_model(mcfg, seed=0).state_dict(), "epoch": epochs - 1, "starts": [0]}
    torch.save(state, ck_dir / "state.pt")
    (ck_dir / "history.json").write_text(json.dumps(history))
    ck = Checkpoint.from_directory(str(ck_dir))
    run = FinishedRun(
        best_checkpoint=ck,
        latest_checkpoint=ck,
        model_dir=str(root / "model"),
        manifest=man,
        run_meta={"run_name": "t"},
        use_gpu=False,
    )
    return finalize_local(cfg, mcfg, run), man
