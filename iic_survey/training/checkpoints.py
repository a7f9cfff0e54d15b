"""A training checkpoint's files, and the best checkpoint of a finished run.

The worker loop (:mod:`iic_survey.training.loop`) writes each epoch's checkpoint as
:data:`STATE_FILE` (weights, optimiser and scaler state, epoch, starts; loadable with
``weights_only``) beside :data:`HISTORY_FILE` (one JSON row per epoch so far). Resuming and
finalising both read them back with :func:`load_state`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
"""The training state of a checkpoint (``torch.save`` of plain tensors and numbers)."""
HISTORY_FILE = "history.json"
"""The per-epoch history of a checkpoint, as JSON."""


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
