"""Error analysis for the paper study (the paper's Figs. 11, 19-21 and Table 4), as PNGs.

* The misclassified test stamps are clustered with K-means (:func:`kmeans`, a small seeded
  numpy implementation, k-means++ start) on the trained IICnet's penultimate features
  (``embed``, standardised); each group is drawn as a cutout grid and described by its true /
  predicted classes, its catalog W1 and how many carry the NO_CENTRAL_SOURCE flag (the paper's
  fourth group is sources with an empty centre).
* The correctly classified low-confidence stamps (top probability below a threshold) are drawn
  and described the same way, against the whole test split.
* Feature maps after the stem, the RFB and each CBAM for one test stamp per class (forward
  hooks; mean over channels and the most active channel), the paper's Fig. 11.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import torch

from iic_survey.core import metrics
from iic_survey.core.constants import CLASSES
from iic_survey.core.flags import QualityFlag

NO_CENTRE = int(QualityFlag.NO_CENTRAL_SOURCE)


def kmeans(x: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> tuple[np.ndarray, float]:
    """Labels (N,) and inertia of K-means on rows of ``x`` (N, D): k-means++ start, Lloyd steps."""
    rng = np.random.default_rng(seed)
    n = len(x)
    k = max(1, min(k, n))
    centres = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(n, 1.0 / n)
        centres.append(x[rng.choice(n, p=p)])
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        d = ((x[:, None, :] - c[None]) ** 2).sum(-1)  # (N, k)
        new = d.argmin(1)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                c[j] = x[labels == j].mean(0)
    inertia = float(((x - c[labels]) ** 2).sum())
    return labels, inertia


def display(image: np.ndarray) -> np.ndarray:
    """(C, H, W) model image -> (H, W, 3) in [0, 1] for display (W1, W2, W3 as R, G, B)."""
    rgb = np.transpose(image[:3], (1, 2, 0))
    hi = np.percentile(rgb, 99.5)
    return np.clip(rgb / (hi if hi > 0 else 1.0), 0.0, 1.0)


def grid_png(path: pathlib.Path, images: np.ndarray, titles: list[str], head: str) -> None:
    """Up to 24 stamps in a 6-wide grid, each titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(len(images), 24)
    cols = 6
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.75 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(display(images[i]), origin="lower")
            ax.set_title(titles[i], fontsize=6)
    fig.suptitle(head, fontsize=8)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def describe(sel: np.ndarray, test: dict[str, np.ndarray], pred: np.ndarray) -> dict[str, Any]:
    """Counts of a selection of test rows: true / predicted class, W1, NO_CENTRAL_SOURCE."""
    y = np.asarray(test["label"])
    w1 = np.asarray(test["w1mpro"], dtype=float)
    flags = np.asarray(test["quality_flags"], dtype=np.int64)
    return {
        "n": int(sel.sum()),
        "true": {c: int((y[sel] == k).sum()) for k, c in enumerate(CLASSES)},
        "pred": {c: int((pred[sel] == k).sum()) for k, c in enumerate(CLASSES)},
        "w1_median": float(np.nanmedian(w1[sel])) if sel.any() else float("nan"),
        "w1_faint_frac": float(np.mean(w1[sel] >= 16.0)) if sel.any() else float("nan"),
        "no_centre": int(((flags[sel] & NO_CENTRE) != 0).sum()),
    }


def _titles(idx: np.ndarray, y: np.ndarray, pred: np.ndarray, conf: np.ndarray) -> list[str]:
    short = [c[0].upper() for c in CLASSES]
    return [f"{short[y[i]]}->{short[pred[i]]} {conf[i]:.2f}" for i in idx]


def embed(model: Any, images: np.ndarray) -> np.ndarray:
    """Penultimate features (N, D) of a package Classifier (wrapped in ImageOnly)."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), 256):
            out.append(model.model.embed(torch.from_numpy(images[i : i + 256]), None).numpy())
    return np.concatenate(out)


def analyse(model: Any, logits: np.ndarray, test: dict[str, np.ndarray], args: Any) -> dict:
    """Clusters of the errors, low-confidence correct rows, PNGs under ``<workdir>/errors``."""
    out_dir = pathlib.Path(args.workdir) / "errors"
    out_dir.mkdir(parents=True, exist_ok=True)
    p = metrics.softmax(logits)
    y, pred, conf = np.asarray(test["label"]), p.argmax(1), p.max(1)
    wrong = np.flatnonzero(pred != y)
    res: dict[str, Any] = {"n_test": len(y), "n_wrong": len(wrong), "clusters": []}
    res["all"] = describe(np.ones(len(y), bool), test, pred)
    if len(wrong):
        feats = embed(model, test["image"][wrong])
        feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
        labels, inertia = kmeans(feats, args.clusters, seed=args.seed)
        res["inertia"] = inertia
        for j in range(labels.max() + 1):
            idx = wrong[labels == j]
            sel = np.zeros(len(y), bool)
            sel[idx] = True
            png = out_dir / f"misclassified_cluster{j}.png"
            head = f"misclassified, K-means group {j} ({len(idx)} stamps; true->pred, p_max)"
            grid_png(png, test["image"][idx], _titles(idx, y, pred, conf), head)
            res["clusters"].append({**describe(sel, test, pred), "png": str(png)})
    low = np.flatnonzero((pred == y) & (conf < args.low_conf))
    sel = np.zeros(len(y), bool)
    sel[low] = True
    png = out_dir / "low_confidence_correct.png"
    head = f"correct, p_max < {args.low_conf:g} ({len(low)} stamps)"
    grid_png(png, test["image"][low[np.argsort(conf[low])]], _titles(low, y, pred, conf), head)
    res["low_conf"] = {**describe(sel, test, pred), "png": str(png), "threshold": args.low_conf}
    res["feature_maps"] = str(feature_maps(model, test, out_dir))
    return res


def feature_maps(model: Any, test: dict[str, np.ndarray], out_dir: pathlib.Path) -> pathlib.Path:
    """Fig. 11: per class, one correctly classified stamp and its maps after stem, RFB, CBAMs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    enc = model.model.image
    layers = {"stem": enc.stem, "RFB": enc.rfb, "CBAM 1": enc.cbam1, "CBAM 2": enc.cbam2}
    y = np.asarray(test["label"])
    picks = [int(np.flatnonzero(y == k)[0]) for k in range(len(CLASSES)) if (y == k).any()]
    maps: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, name=name: maps.__setitem__(name, o.detach()))
        for name, m in layers.items()
    ]
    model.eval()
    with torch.inference_mode():
        model(torch.from_numpy(test["image"][picks]))
    for h in hooks:
        h.remove()
    cols = 1 + 2 * len(layers)
    fig, axes = plt.subplots(len(picks), cols, figsize=(cols * 1.4, len(picks) * 1.5 + 0.4))
    axes = np.atleast_2d(axes)
    for r, i in enumerate(picks):
        axes[r, 0].imshow(display(test["image"][i]), origin="lower")
        axes[r, 0].set_title(CLASSES[y[i]], fontsize=7)
        for c, (name, fmap) in enumerate(maps.items()):
            f = fmap[r].numpy()
            top = int(f.reshape(len(f), -1).mean(1).argmax())
            axes[r, 1 + 2 * c].imshow(f.mean(0), origin="lower", cmap="magma")
            axes[r, 1 + 2 * c].set_title(f"{name} mean", fontsize=6)
            axes[r, 2 + 2 * c].imshow(f[top], origin="lower", cmap="magma")
            axes[r, 2 + 2 * c].set_title(f"{name} ch {top}", fontsize=6)
    for ax in axes.flat:
        ax.axis("off")
    png = out_dir / "feature_maps.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png
