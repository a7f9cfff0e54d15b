"""Running a classifier over arrays, and how far a source lies from its training set.

:func:`predict` gives the logits and the penultimate embeddings of a batch of stamps (training's
finalisation and the classify stage both call it). :func:`ood_statistics` describes the training
embeddings (mean, the principal components that carry their variance, a Ledoit-Wolf inverse
covariance within them, a high percentile of their Mahalanobis distance); the model directory
stores that, and :class:`OodStats` reads it back to score new sources, whose ``ood_score`` above
the threshold marks them as outliers.
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


ESTIMATOR = "pca-ledoit-wolf"
"""The covariance estimator of new model directories: Ledoit-Wolf within the principal components
that carry :data:`VARIANCE_KEPT` of the variance."""
ESTIMATORS_OF_RANK_K = frozenset({ESTIMATOR})
"""Estimators whose precision matrix is deliberately of rank ``components`` < D."""
VARIANCE_KEPT = 0.999
"""Share of the training embeddings' variance the OOD distance is measured in.

The remaining directions hold collapsed units and noise: their variance is so small that a 1e-6
change of an image moves a source along them by as much as the training set spreads, so they
made ``ood_score`` more sensitive than the embedding itself (a tiny trained IICnet: max relative
change 1.18e-4 with Ledoit-Wolf over all 32 dimensions, 8.0e-5 in the 4 components that carry
99.9 %; the embeddings move by 6.9e-5; tests/model/test_ood.py)."""
LEGACY_ESTIMATOR = "sample-shrunk-1e-3"
"""The estimator of model directories written before ``estimator`` was recorded: the sample
covariance plus 1e-3 of its mean diagonal. They are scored with it as before."""

_ROWS = 64  # rows per block of :func:`mahalanobis` (a (64, D, D) float64 temporary)


def mahalanobis(embeddings: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row to the training mean.

    Each row's quadratic form is two sums over that row's own contiguous products (no matrix
    product, whose blocking would follow how many rows share the call), so a source's score
    does not depend on the other sources scored with it.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    p = np.ascontiguousarray(precision, dtype=np.float64)  # symmetric: row i is column i
    out = np.empty(len(x))
    for lo in range(0, len(x), _ROWS):
        d = x[lo : lo + _ROWS] - mean  # (n, D)
        pd_ = (p[None, :, :] * d[:, None, :]).sum(axis=-1)  # (n, D): P d, row by row
        out[lo : lo + _ROWS] = (pd_ * d).sum(axis=-1)
    return np.sqrt(np.maximum(out, 0.0))


def ood_statistics(
    embeddings: np.ndarray,
    logits: np.ndarray,
    temperature: float,
    percentile: float = OOD_PERCENTILE,
) -> dict[str, Any]:
    """What a new source's embedding is compared against; ``temperature`` is stored with it.

    The distance is measured in the principal components of the training embeddings that carry
    :data:`VARIANCE_KEPT` of their variance, with scikit-learn's Ledoit-Wolf covariance there
    (the sample covariance shrunk towards a scaled identity by the amount that minimises its
    expected error). The stored precision is the D x D matrix ``V.T @ P @ V`` of rank
    ``components``, so scoring is unchanged: directions with almost no variance (collapsed ReLU
    units) add nothing, and a 1e-6 change of an image moves ``ood_score`` by less than 1e-4
    (README, Reproducibility).
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(embeddings, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("OOD statistics need at least 2 training embeddings")
    mean = x.mean(axis=0)
    _, sv, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = sv**2
    if not var.sum() > 0:
        raise ValueError("OOD statistics need training embeddings that vary")
    k = int(np.searchsorted(np.cumsum(var) / var.sum(), VARIANCE_KEPT) + 1)
    basis = vt[: min(k, len(var))]  # (k, D), orthonormal rows
    lw = LedoitWolf(store_precision=True, assume_centered=True).fit((x - mean) @ basis.T)
    precision = basis.T @ lw.precision_ @ basis
    precision = (precision + precision.T) / 2  # exactly symmetric (mahalanobis relies on it)
    dist = mahalanobis(x, mean, precision.astype(np.float32))
    return {
        "embedding_dim": int(x.shape[1]),
        "n_samples": len(x),
        "estimator": ESTIMATOR,
        "components": len(basis),
        "variance_kept": float(var[: len(basis)].sum() / var.sum()),
        "shrinkage": float(lw.shrinkage_),
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
    estimator: str = ESTIMATOR
    """How the covariance was estimated (:data:`LEGACY_ESTIMATOR` for older directories)."""
    components: int | None = None
    """The rank of ``precision`` for an estimator of :data:`ESTIMATORS_OF_RANK_K` (else None:
    full rank)."""

    @classmethod
    def from_model(
        cls, stats: Mapping[str, Any] | None, source: str = "model.json (feature_stats)"
    ) -> OodStats | None:
        """Parse a model directory's statistics (top level or under ``"ood"``); None if absent.

        Raises
        ------
        ValueError
            Naming ``source``, if the statistics are malformed, non-finite or singular (the
            precision must be symmetric positive definite): they would score every row wrongly.
        """
        block = dict(stats or {})
        block = dict(block.get("ood", block))
        if not {"mean", "precision", "mahalanobis_threshold"} <= set(block):
            return None
        out = cls(
            np.asarray(block["mean"], dtype=np.float64),
            np.asarray(block["precision"], dtype=np.float64),
            float(block["mahalanobis_threshold"]),
            str(block.get("estimator", LEGACY_ESTIMATOR)),
            int(block["components"]) if "components" in block else None,
        )
        problem = out._problem()
        if problem:
            raise ValueError(f"OOD statistics in {source} are unusable: {problem}; refit them")
        return out

    def _problem(self) -> str | None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if d < 1 or self.precision.shape != (d, d):
            return f"mean {self.mean.shape} and precision {self.precision.shape} do not match"
        if not (np.isfinite(self.mean).all() and np.isfinite(self.precision).all()):
            return "non-finite mean or precision"
        if not (np.isfinite(self.threshold) and self.threshold > 0):
            return f"threshold {self.threshold} is not a positive number"
        if not np.allclose(self.precision, self.precision.T, rtol=1e-5, atol=0):
            return "the precision matrix is not symmetric"
        eig = np.linalg.eigvalsh(self.precision)
        if self.estimator not in ESTIMATORS_OF_RANK_K:
            if eig[0] <= eig[-1] * 1e-12:
                return (
                    f"the precision matrix is singular (eigenvalues {eig[0]:.3g} .. {eig[-1]:.3g})"
                )
            return None
        rank = int((eig > eig[-1] * 1e-6).sum())
        if eig[-1] <= 0 or eig[0] < -eig[-1] * 1e-6 or rank != self.components:
            return (
                f"the precision matrix is not positive semi-definite of rank {self.components} "
                f"(eigenvalues {eig[0]:.3g} .. {eig[-1]:.3g}, rank {rank})"
            )
        return None

    def record(self) -> dict[str, Any]:
        """For ``_run.json``: the estimator and whether it is the older one."""
        return {"estimator": self.estimator, "legacy": self.estimator == LEGACY_ESTIMATOR}

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``emb`` (N, D)."""
        return mahalanobis(emb, self.mean, self.precision)
