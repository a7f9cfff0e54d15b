"""After training: calibrate, score, describe the training distribution, write the model directory.

:func:`finalize` takes the best checkpoint of a run and

1. runs the network over the validation and test splits (and a sample of the training split);
2. fits a temperature on the validation logits (:func:`iic_survey.metrics.fit_temperature`);
3. reports on the test split in the paper's format (per-class precision, recall, specificity,
   F1, accuracy; AUC; the confusion matrix; ECE before and after calibration) as JSON, Markdown
   and PNG plots (loss and accuracy per epoch, ROC per class, the confusion matrix);
4. computes the out-of-distribution statistics of the training embeddings (mean and inverse
   covariance of ``embed()``, and high percentiles of the training Mahalanobis distance and
   energy score) that the classify job compares new sources against;
5. writes the model directory with :func:`iic_survey.model.save_model_dir`.

It runs as one Ray task holding a GPU when training used GPUs, so the driver stays light.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from iic_survey import CLASSES, __version__, metrics

logger = logging.getLogger(__name__)

OOD_PERCENTILE = 99.0
"""Percentile of the training Mahalanobis distance / energy beyond which a source is unusual."""

REPORT_DIR = "report"
"""Sub-folder of the model directory that holds the report files."""


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
        logits.append(model.fc2(e).float().cpu().numpy())  # the head after embed (model.py)
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
    """What a new source's embedding and logits are compared against.

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
    e = metrics.energy_score(logits, temperature)
    return {
        "embedding_dim": int(dim),
        "n_samples": len(x),
        "mean": mean.astype(np.float32).tolist(),
        "precision": precision.astype(np.float32).tolist(),
        "mahalanobis_percentile": float(percentile),
        "mahalanobis_threshold": float(np.percentile(dist, percentile)),
        "energy_percentile": float(percentile),
        "energy_threshold": float(np.percentile(e, percentile)),
        "temperature": float(temperature),
    }


# ---------------------------------------------------------------------------------------------
# Report files: JSON + Markdown + PNG


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and accuracy per epoch, train and validation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ep = [h["epoch"] + 1 for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(ep, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(ep, [h["val_loss"] for h in history], "s-", label="validation")
    a.set(xlabel="epoch", ylabel="cross-entropy loss")
    b.plot(ep, [h["train_acc"] for h in history], "o-", label="train")
    b.plot(ep, [h["val_acc"] for h in history], "s-", label="validation")
    b.set(xlabel="epoch", ylabel="accuracy")
    for ax in (a, b):
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_roc(report: dict[str, Any], path: Path) -> None:
    """One-vs-rest ROC curve per class (from a :func:`metrics.classification_report`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name in report["classes"]:
        roc, auc = report["roc"][name], report["per_class"][name]["auc"]
        ax.plot(roc["fpr"], roc["tpr"], label=f"{name} (AUC {auc:.4f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (test split)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, path: Path) -> None:
    """The confusion matrix (rows: true class, columns: predicted), counts and row fractions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.int64)
    frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{frac[i, j]:.1%}",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
            )
    ax.set(
        xticks=range(len(CLASSES)),
        yticks=range(len(CLASSES)),
        xticklabels=CLASSES,
        yticklabels=CLASSES,
        xlabel="predicted",
        ylabel="true",
        title="confusion (test)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    """The test report as Markdown: the paper's Table 2 layout, calibration, the plots."""
    lines = [
        f"# {meta['arch']} on the test split",
        "",
        f"Trained on {meta['n_train']} sources for {meta['epochs']} epochs; best epoch "
        f"{meta['best_epoch'] + 1} (validation loss {meta['best_val_loss']:.4f}).",
        "",
        metrics.report_markdown(report),
        f"Temperature T = {meta['temperature']:.4f} (fitted on {meta['n_val']} validation "
        f"sources): ECE {report['ece_uncalibrated']:.4f} before, {report['ece']:.4f} after.",
        "",
        "![loss and accuracy per epoch](history.png)",
        "",
        "![ROC per class](roc.png) ![confusion matrix](confusion.png)",
        "",
    ]
    return "\n".join(lines)


def write_report(
    report: dict[str, Any], history: list[dict[str, Any]], meta: dict[str, Any], out: Path
) -> list[str]:
    """Write report.json, report.md, history.png, roc.png, confusion.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "test": report, "history": history}
    (out / "report.json").write_text(json.dumps(doc, indent=1, default=_json_default))
    (out / "report.md").write_text(markdown(report, meta))
    if history:
        plot_history(history, out / "history.png")
    plot_roc(report, out / "roc.png")
    plot_confusion(np.asarray(report["confusion"]), out / "confusion.png")
    return sorted(p.name for p in out.iterdir())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------------------------------------
# Finalising a run


def read_rows(data: str, split: str, limit: int | None = None) -> dict[str, np.ndarray]:
    """``image``, ``features``, ``label`` of one split; with ``limit``, a stable hash-chosen subset
    (only the chosen rows' images are read)."""
    import pyarrow.compute as pc

    from iic_survey import labels

    cols = ["cntr", "image", "features", "label"]
    if limit is None:
        return labels.read_split(data, split, columns=cols)
    ids = labels.read_split(data, split, columns=["cntr"]).get("cntr", np.zeros(0, np.int64))
    if len(ids) <= limit:
        return labels.read_split(data, split, columns=cols)
    chosen = ids[np.argsort(labels.hash_unit(ids, "iic-ood-sample"), kind="stable")[:limit]]
    return labels.read_split(data, split, columns=cols, filter=pc.field("cntr").isin(chosen))


def _load(checkpoint: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from iic_survey.training import load_state

    with checkpoint.as_directory() as d:
        return load_state(d)


def finalize(config: Any, model_cfg: Any, **kw: Any) -> dict[str, Any]:
    """Run :func:`finalize_local` as a Ray task (with a GPU if ``use_gpu``), or here without Ray."""
    import ray

    kw["model_dir"] = str(Path(kw["model_dir"]).expanduser().resolve())
    if not ray.is_initialized():
        return finalize_local(config, model_cfg, **kw)
    fn: Any = finalize_local
    task: Any = ray.remote(num_cpus=1, num_gpus=1 if kw.get("use_gpu") else 0)(fn)
    return dict(ray.get(task.remote(config, model_cfg, **kw)))


def finalize_local(
    config: Any,
    model_cfg: Any,
    *,
    best_checkpoint: Any,
    latest_checkpoint: Any,
    model_dir: str,
    use_gpu: bool,
    manifest: dict[str, Any],
    run_meta: dict[str, Any],
) -> dict[str, Any]:
    """Calibrate the best checkpoint, report on the test split, write the model directory.

    Returns a short summary (accuracy, macro AUC, ECE, temperature, paths).
    """
    from iic_survey.model import build_model, save_model_dir

    device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
    state, _ = _load(best_checkpoint)
    latest, history = _load(latest_checkpoint)
    model = build_model(model_cfg)
    model.load_state_dict(state["model"])
    model.to(device).eval()

    val = read_rows(config.data, "val")
    test = read_rows(config.data, "test")
    if not len(test.get("label", ())):
        logger.warning("the test split is empty: reporting on the validation split instead")
        test = val
    if len(val.get("label", ())):
        val_logits, _ = predict(model, val["image"], val["features"], device)
        temperature = metrics.fit_temperature(val_logits, val["label"])
    else:
        logger.warning("the validation split is empty: temperature left at 1")
        val_logits, temperature = np.zeros((0, len(CLASSES))), 1.0
    logits, _ = predict(model, test["image"], test["features"], device)
    y = test["label"]
    report = metrics.classification_report(y, metrics.softmax(logits, temperature), CLASSES)
    report["ece_uncalibrated"] = metrics.expected_calibration_error(y, metrics.softmax(logits))
    report["temperature"] = temperature

    train = read_rows(config.data, "train", limit=config.ood_rows)
    train_logits, train_emb = predict(model, train["image"], train["features"], device)
    feats = np.asarray(train["features"], dtype=np.float64)
    feature_stats = {
        **ood_statistics(train_emb, train_logits, temperature),
        "catalog_features": {
            "names": list(manifest["feature_names"]),
            "mean": np.nanmean(feats, axis=0).tolist(),
            "std": np.nanstd(feats, axis=0).tolist(),
        },
    }
    best_epoch = int(state["epoch"])
    meta = {
        **run_meta,
        "arch": model_cfg.arch,
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": float(history[best_epoch]["val_loss"])
        if best_epoch < len(history)
        else float("nan"),
        "temperature": temperature,
        "n_train": int(sum(manifest["counts"]["train"].values())),
        "n_val": len(val.get("label", ())),
        "n_test": len(y),
        "training_set": config.data,
        "training_set_source": manifest.get("source"),
        "train_config": dataclasses.asdict(config),
        "code_version": __version__,
        "starts": list(latest.get("starts", [])),
    }
    summary_keys = (
        "n",
        "accuracy",
        "per_class",
        "macro",
        "confusion",
        "log_loss",
        "ece",
        "ece_uncalibrated",
        "temperature",
    )
    scores = {
        "test": {k: report[k] for k in summary_keys},
        "val": {
            "n": meta["n_val"],
            "nll_uncalibrated": _nll(val_logits, val, 1.0),
            "nll": _nll(val_logits, val, temperature),
        },
        "history": history,
    }
    out = save_model_dir(
        model_dir,
        model,
        model_cfg,
        extra={
            "rgb": manifest["rgb"],
            "temperature": temperature,
            "feature_stats": feature_stats,
            "metrics": scores,
            "meta": meta,
        },
    )
    files = write_report(report, history, meta, Path(out) / REPORT_DIR)
    logger.info(
        "model directory %s: test accuracy %.4f, macro AUC %.4f, ECE %.4f (T = %.3f)",
        out,
        report["accuracy"],
        report["macro"]["auc"],
        report["ece"],
        temperature,
    )
    return {
        "model_dir": str(out),
        "accuracy": report["accuracy"],
        "macro_auc": report["macro"]["auc"],
        "ece": report["ece"],
        "ece_uncalibrated": report["ece_uncalibrated"],
        "temperature": temperature,
        "recall": {c: report["per_class"][c]["recall"] for c in CLASSES},
        "epochs": len(history),
        "best_epoch": best_epoch,
        "report_files": files,
    }


def _nll(logits: np.ndarray, rows: dict[str, np.ndarray], temperature: float) -> float | None:
    if not len(logits):
        return None
    return metrics.nll(logits, rows["label"], temperature)
