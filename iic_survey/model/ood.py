"""Running a classifier over arrays, and how far a source lies from its training set.

:func:`predict` gives the logits and the penultimate embeddings of a batch of stamps (training's
finalisation and the classify stage both call it). :func:`ood_statistics` describes the training
embeddings (mean, shrunk inverse covariance, a high percentile of their Mahalanobis distance);
the model directory stores that, and :class:`OodStats` reads it back to score new sources, whose
``ood_score`` above the threshold marks them as outliers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from iic_survey.core.constants import CLASSES

OOD_PERCENTILE = 99.0
"""Percentile of the training Mahalanobis distance beyond which a source is unusual."""


# ---------------------------------------------------------------------------------------------
# Inference over arrays


@torch.no_grad()
def predict(
    model: Any,
    images: np.ndarray,
    features: np.ndarray,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(logits (N, 3), embeddings (N, D)) of a model in eval mode, in fp32."""
    model.eval()
    logits, embeds = [], []
    for i in range(0, len(images), batch_size):
        # np.require copies only read-only (e.g. Arrow-backed) or non-contiguous batches.
        x = torch.from_numpy(np.require(images[i : i + batch_size], np.float32, ["C", "W"]))
        f = torch.from_numpy(np.require(features[i : i + batch_size], np.float32, ["C", "W"]))
        x, f = x.to(device), f.to(device)
        e = model.embed(x, f)  # (B, D)
        embeds.append(e.float().cpu().numpy())
        logits.append(model.fc2(e).float().cpu().numpy())  # Classifier's head after embed
    d = getattr(getattr(model, "fc1", None), "out_features", 0)
    if not logits:
        return np.zeros((0, len(CLASSES)), np.float32), np.zeros((0, d), np.float32)
    return np.concatenate(logits), np.concatenate(embeds)


# ---------------------------------------------------------------------------------------------
# Out-of-distribution statistics


def mahalanobis(embeddings: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row to the training mean."""
    d = np.asarray(embeddings, dtype=np.float64) - mean
    return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, precision, d), 0.0))


def ood_statistics(
    embeddings: np.ndarray,
    logits: np.ndarray,
    temperature: float,
    percentile: float = OOD_PERCENTILE,
    shrinkage: float = 1e-3,
) -> dict[str, Any]:
    """What a new source's embedding is compared against; ``temperature`` is stored with it.

    The covariance is shrunk towards its mean diagonal (``shrinkage`` x trace / D) so that its
    inverse exists even with collapsed ReLU dimensions or few samples.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("OOD statistics need at least 2 training embeddings")
    mean = x.mean(axis=0)
    cov = np.cov(x, rowvar=False)
    dim = cov.shape[0]
    cov = cov + np.eye(dim) * shrinkage * max(np.trace(cov) / dim, 1e-12)
    precision = np.linalg.inv(cov)
    dist = mahalanobis(x, mean, precision)
    return {
        "embedding_dim": int(dim),
        "n_samples": len(x),
        "mean": mean.astype(np.float32).tolist(),
        "precision": precision.astype(np.float32).tolist(),
        "mahalanobis_percentile": float(percentile),
        "mahalanobis_threshold": float(np.percentile(dist, percentile)),
        "temperature": float(temperature),
    }


@dataclasses.dataclass(frozen=True)
class OodStats:
    """Training statistics of ``embed()`` features (:func:`ood_statistics`).

    The score is the Mahalanobis distance from the training mean; the threshold is a high
    percentile (99 by default) of the training distances, stored in the model directory.
    """

    mean: np.ndarray
    precision: np.ndarray
    threshold: float

    @classmethod
    def from_model(cls, stats: Mapping[str, Any] | None) -> OodStats | None:
        """Parse a model directory's statistics (top level or under ``"ood"``); None if absent."""
        block = dict(stats or {})
        block = dict(block.get("ood", block))
        if not {"mean", "precision", "mahalanobis_threshold"} <= set(block):
            return None
        return cls(
            np.asarray(block["mean"], dtype=np.float64),
            np.asarray(block["precision"], dtype=np.float64),
            float(block["mahalanobis_threshold"]),
        )

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``emb`` (N, D)."""
        return mahalanobis(emb, self.mean, self.precision)
