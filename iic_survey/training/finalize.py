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

from iic_survey.core import metrics
from iic_survey.core.constants import CLASSES, __version__
from iic_survey.model.directory import save_model_dir
from iic_survey.model.network import build_model
from iic_survey.model.ood import ood_statistics, predict
from iic_survey.training import splits, trainingset
from iic_survey.training.checkpoints import load_state
from iic_survey.training.plots import plot_confusion, plot_history, plot_roc

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
"""Sub-folder of the model directory that holds the report files."""


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

    cols = ["cntr", "image", "features", "label"]
    if limit is None:
        return trainingset.read_split(data, split, columns=cols)
    ids = trainingset.read_split(data, split, columns=["cntr"]).get("cntr", np.zeros(0, np.int64))
    if len(ids) <= limit:
        return trainingset.read_split(data, split, columns=cols)
    chosen = ids[np.argsort(splits.hash_unit(ids, "iic-ood-sample"), kind="stable")[:limit]]
    return trainingset.read_split(data, split, columns=cols, filter=pc.field("cntr").isin(chosen))


def _load(checkpoint: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:

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
