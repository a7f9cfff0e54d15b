"""The out-of-distribution score on a trained model: stable under tiny changes, 1 % outliers.

A tiny IICnet is trained for a few steps on synthetic blobs (class = width and colour), so its
ReLU units are shaped by training (some collapse) as in a real model; its embeddings of
in-distribution images are split into the set the statistics are fitted on and a held-out set.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from iic_survey.model import ood
from iic_survey.model.config import ModelConfig
from iic_survey.model.network import build_model

TINIER = dict(widths=(4, 8, 8, 16, 16, 32), rfb_inter=2, cbam_reduction=4, head_dim=32, dropout=0.0)
N_FIT, N_HELD = 1000, 1000


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images (n, 3, 80, 80), features (n, F), labels): class = width and colour of a blob."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(80.0), torch.arange(80.0), indexing="ij")
    r2 = (yy - 40) ** 2 + (xx - 40) ** 2
    width = torch.tensor([6.0, 3.0, 2.0])[labels] * (1 + 0.2 * torch.rand(n, generator=g))
    colour = torch.tensor([[1.0, 0.8, 0.6], [0.6, 0.9, 1.0], [1.0, 0.5, 0.2]])[labels]
    blob = torch.exp(-r2[None] / (2 * width[:, None, None] ** 2))  # (n, 80, 80)
    images = colour[:, :, None, None] * blob[:, None] + 0.05 * torch.randn(
        n, 3, 80, 80, generator=g
    )
    features = torch.randn(n, ModelConfig().n_features, generator=g)
    return images, features, labels


@pytest.fixture(scope="module")
def trained() -> dict[str, np.ndarray]:
    return train_and_embed()


def train_and_embed() -> dict[str, np.ndarray]:
    """Embeddings of in-distribution images (and of the held-out ones plus 1e-6 noise)."""
    net = build_model(ModelConfig(**TINIER), seed=0).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    images, features, labels = blobs(64, seed=0)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(net(images, features), labels).backward()
        opt.step()
    with torch.no_grad():  # BN running statistics of the final weights
        for mod in net.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        net(images, features)
    net.eval()
    x, f, _ = blobs(N_FIT + N_HELD, seed=1)
    noisy = x[N_FIT:] + 1e-6 * torch.randn(
        N_HELD, 3, 80, 80, generator=torch.Generator().manual_seed(2)
    )
    cpu = torch.device("cpu")
    logits, emb = ood.predict(net, x.numpy(), f.numpy(), cpu, batch_size=100)
    _, emb_noisy = ood.predict(net, noisy.numpy(), f[N_FIT:].numpy(), cpu, batch_size=100)
    return {"logits": logits, "emb": emb, "emb_noisy": emb_noisy}


def legacy_statistics(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The estimator of older model directories: sample covariance + 1e-3 of its mean diagonal."""
    x = emb.astype(np.float64)
    cov = np.cov(x, rowvar=False)
    cov += np.eye(len(cov)) * 1e-3 * np.trace(cov) / len(cov)
    return x.mean(axis=0), np.linalg.inv(cov)


@pytest.mark.slow  # trains a tiny IICnet and embeds 3,000 images
def test_ood_score_is_stable_under_a_1e6_change_of_the_images(trained) -> None:
    """Measured here (tiny trained IICnet, 32-d embedding, 8 dead units): the embeddings
    themselves move by up to 6.9e-5 (relative) under 1e-6 image noise. Ledoit-Wolf over all 32
    dimensions moved ``ood_score`` by up to 1.18e-4 relative (the legacy estimator 1.21e-4):
    the directions of almost no variance amplify the noise. In the principal components that
    carry 99.9 % of the variance (4 here): 8.0e-5. Over 1 and 2 torch threads and with AVX2 or
    the generic kernels forced (the trained net differs a little each time) the embeddings moved
    6.4e-5 .. 9.0e-5 and the score 6.8e-5 .. 9.2e-5 (Ledoit-Wolf over all dimensions reached
    1.46e-4 in one of them). Held: under 1e-4 relative (issue 24's goal), no more than twice the
    embedding's own move, and under 1e-4 of the outlier threshold."""
    fit, held, noisy = trained["emb"][:N_FIT], trained["emb"][N_FIT:], trained["emb_noisy"]
    stats = ood.OodStats.from_model(ood.ood_statistics(fit, trained["logits"][:N_FIT], 1.0))
    assert stats is not None and stats.estimator == ood.ESTIMATOR == "pca-ledoit-wolf"
    a, b = stats.score(held), stats.score(noisy)
    moved = float(np.max(np.abs(b - a) / a))
    emb_moved = float(np.max(np.linalg.norm(noisy - held, axis=1) / np.linalg.norm(held, axis=1)))
    of_threshold = float(np.max(np.abs(b - a)) / stats.threshold)
    print(f"ood_score change under 1e-6 image noise: {moved:.2e} relative, {of_threshold:.2e} "
          f"of the threshold; embeddings {emb_moved:.2e}")  # fmt: skip
    assert moved < 1e-4, moved
    assert moved <= 2 * emb_moved, (moved, emb_moved)
    assert of_threshold < 1e-4, of_threshold


@pytest.mark.slow  # trains a tiny IICnet and embeds 3,000 images
def test_held_out_outlier_rate_is_the_nominal_one_percent(trained) -> None:
    fit, held = trained["emb"][:N_FIT], trained["emb"][N_FIT:]
    raw = ood.ood_statistics(fit, trained["logits"][:N_FIT], 1.0)
    stats = ood.OodStats.from_model(raw)
    assert stats is not None
    rate = float(np.mean(stats.score(held) > stats.threshold))
    nominal = 1 - raw["mahalanobis_percentile"] / 100
    sigma = math.sqrt(nominal * (1 - nominal) / N_HELD)  # binomial error of the held-out rate
    print(f"held-out outlier rate {rate:.4f} (nominal {nominal}, binomial sigma {sigma:.4f})")
    assert abs(rate - nominal) <= 3 * sigma, (rate, nominal, sigma)


@pytest.mark.slow  # trains a tiny IICnet and embeds 3,000 images
def test_a_row_scores_the_same_alone_or_among_others(trained) -> None:
    stats = ood.OodStats.from_model(ood.ood_statistics(trained["emb"], trained["logits"], 1.0))
    assert stats is not None
    emb = trained["emb"][:200]
    together = stats.score(emb)
    alone = np.array([stats.score(emb[i : i + 1])[0] for i in range(len(emb))])
    np.testing.assert_array_equal(together, alone)


def test_older_directories_are_scored_as_before() -> None:
    rng = np.random.default_rng(0)
    mean, prec = legacy_statistics(rng.normal(size=(300, 5)))
    old = {"mean": mean.tolist(), "precision": prec.tolist(), "mahalanobis_threshold": 3.0}
    stats = ood.OodStats.from_model(old)
    assert stats is not None and stats.estimator == ood.LEGACY_ESTIMATOR
    assert stats.record() == {"estimator": ood.LEGACY_ESTIMATOR, "legacy": True}
    e = rng.normal(size=(4, 5))
    want = np.sqrt(np.einsum("nd,de,ne->n", e - mean, prec, e - mean))
    np.testing.assert_allclose(stats.score(e), want, rtol=1e-12)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s: s.update(precision=np.zeros((3, 3)).tolist()), "singular"),
        (lambda s: s.update(mean=[0.0, float("nan"), 0.0]), "non-finite"),
        (lambda s: s.update(mahalanobis_threshold=float("inf")), "threshold"),
        (lambda s: s.update(precision=np.eye(4).tolist()), "do not match"),
        (lambda s: s.update(precision=[[1.0, 0.5, 0], [0, 1, 0], [0, 0, 1]]), "not symmetric"),
    ],
)
def test_unusable_statistics_are_refused_naming_the_file(change, match) -> None:
    stats = {"mean": [0.0, 0.0, 0.0], "precision": np.eye(3).tolist(), "mahalanobis_threshold": 3.0}
    change(stats)
    with pytest.raises(ValueError, match=f"/m/model.json.*{match}"):
        ood.OodStats.from_model(stats, source="/m/model.json")


def test_statistics_keep_the_components_that_carry_the_variance() -> None:
    """Three directions vary, three hardly (collapsed units): the distance is measured in the
    three; a source far off along them is an outlier, one off along the dead ones is not."""
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(size=(2000, 3)) * [3.0, 2.0, 1.0],
                          rng.normal(size=(2000, 3)) * 1e-4], axis=1)  # fmt: skip
    raw = ood.ood_statistics(emb, np.zeros((2000, 3)), 1.0)
    assert raw["components"] == 3 and raw["variance_kept"] >= ood.VARIANCE_KEPT
    stats = ood.OodStats.from_model(raw)
    assert stats is not None and stats.components == 3
    assert np.linalg.matrix_rank(stats.precision, tol=1e-6 * np.abs(stats.precision).max()) == 3
    centre = np.zeros((1, 6))
    far = np.array([[20.0, 0, 0, 0, 0, 0]])
    dead = np.array([[0, 0, 0, 1e-2, 0, 0]])  # 100 sigma along a dead unit: not counted
    assert stats.score(far)[0] > stats.threshold > stats.score(centre)[0]
    assert stats.score(dead)[0] == pytest.approx(stats.score(centre)[0], abs=1e-3)
    assert stats.record() == {"estimator": "pca-ledoit-wolf", "legacy": False}


def test_full_rank_ledoit_wolf_directories_still_load() -> None:
    """Directories written before the PCA (estimator ``ledoit-wolf``, full rank) score as then."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4))
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(x)
    block = {"mean": lw.location_.tolist(), "precision": lw.precision_.tolist(),
             "mahalanobis_threshold": 3.0, "estimator": "ledoit-wolf"}  # fmt: skip
    stats = ood.OodStats.from_model(block)
    assert stats is not None and stats.components is None
    e = rng.normal(size=(5, 4))
    d = e - lw.location_
    np.testing.assert_allclose(
        stats.score(e), np.sqrt(np.einsum("nd,de,ne->n", d, lw.precision_, d)), rtol=1e-12
    )


def test_a_rank_k_precision_of_another_rank_is_refused() -> None:
    rng = np.random.default_rng(2)
    raw = ood.ood_statistics(rng.normal(size=(500, 4)) * [5, 3, 1, 1e-4], np.zeros((500, 3)), 1.0)
    assert ood.OodStats.from_model(raw) is not None
    with pytest.raises(ValueError, match=r"model.json.*rank"):
        ood.OodStats.from_model({**raw, "components": raw["components"] + 1}, "/m/model.json")
    with pytest.raises(ValueError, match=r"model.json.*semi-definite"):
        ood.OodStats.from_model({**raw, "precision": (-np.asarray(raw["precision"])).tolist()},
                                "/m/model.json")  # fmt: skip
