"""A training checkpoint's files, and the best checkpoint of a finished run.

The worker loop (:mod:`iic_survey.training.loop`) writes each epoch's checkpoint as
:data:`STATE_FILE` (weights, optimiser and scaler state, epoch, starts; loadable with
``weights_only``) beside :data:`HISTORY_FILE` (one JSON row per epoch so far). Resuming and
finalising both read them back with :func:`load_state`. Ray Train's own record of the
checkpoints it has committed, :data:`SNAPSHOT_FILE` in the run folder, tells the driver how far
a run has come (:func:`epochs_committed`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from iic_survey.core.paths import PathLike, as_path

STATE_FILE = "state.pt"
"""The training state of a checkpoint (``torch.save`` of plain tensors and numbers)."""
HISTORY_FILE = "history.json"
"""The per-epoch history of a checkpoint, as JSON."""
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"
"""Ray Train's list of a run's committed checkpoints (every worker reported them), with their
metrics; in the run folder ``<storage_path>/<name>``."""


def load_state(checkpoint_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(training state, history) of one checkpoint directory; tensors load ``weights_only``."""
    state = torch.load(Path(checkpoint_dir) / STATE_FILE, map_location="cpu", weights_only=True)
    history = json.loads((Path(checkpoint_dir) / HISTORY_FILE).read_text())
    return state, history


def best_checkpoint(result: Any) -> Any:
    """The kept checkpoint with the lowest validation loss (the latest if none has metrics)."""
    if result.checkpoint is None:
        raise RuntimeError(f"run at {result.path} has no checkpoint: no epoch finished")
    scored = [
        (m.get("val_loss", float("inf")), i, c)
        for i, (c, m) in enumerate(result.best_checkpoints or [])
    ]
    return min(scored)[2] if scored else result.checkpoint


def epochs_committed(run_dir: PathLike) -> int:
    """Epochs a run has finished for good: one past the highest ``epoch`` among the checkpoints
    Ray Train has committed in ``run_dir`` (0 before the first; the latest is always kept)."""
    try:
        with as_path(run_dir).joinpath(SNAPSHOT_FILE).open("rb") as f:
            results = json.loads(f.read())["checkpoint_results"]
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0
    epochs = [int(r["metrics"]["epoch"]) for r in results if "epoch" in r.get("metrics", {})]
    return max(epochs) + 1 if epochs else 0
