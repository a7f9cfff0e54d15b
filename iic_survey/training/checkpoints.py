"""TODO docstring for training.checkpoints (from training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
HISTORY_FILE = "history.json"


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
