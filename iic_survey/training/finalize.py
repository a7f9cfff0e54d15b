"""After training: calibrate, score, describe the training distribution, write the model directory.

:func:`finalize` takes the best checkpoint of a run and

1. runs the network over the validation and test splits (and a sample of the training split);
2. fits the calibration, a temperature that is a smooth function of W1, on the validation
   logits (:mod:`iic_survey.training.evaluate`, :mod:`iic_survey.core.calibration`);
3. reports on the test split in the paper's format (per-class precision, recall, specificity,
   F1, accuracy; AUC; the confusion matrix; ECE before and after calibration) as JSON, Markdown
   and PNG plots (loss and accuracy per epoch, ROC per class, the confusion matrix);
4. records the training domain (the W1 and colour ranges behind the ``safe`` subset,
   :mod:`iic_survey.model.domain`) and computes the out-of-distribution statistics of the
   training embeddings (mean and inverse covariance of ``embed()``, and a high percentile of
   the training Mahalanobis distance) that the classify job compares new sources against;
5. writes the model directory with :func:`iic_survey.model.directory.save_model_dir`, and its
   model card ``README.md`` (:mod:`iic_survey.training.card`).

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
from iic_survey.model import quantized
from iic_survey.model.config import ModelConfig
from iic_survey.model.directory import save_model_dir
from iic_survey.model.network import build_model
from iic_survey.model.ood import ood_statistics, predict
from iic_survey.training import card, selection_tables
from iic_survey.training.checkpoints import load_state
from iic_survey.training.config import TrainConfig
from iic_survey.training.evaluate import Evaluation, evaluate, read_rows, training_domain
from iic_survey.training.plots import plot_confusion, plot_history, plot_roc
from iic_survey.training.trainingset import Manifest

logger = logging.getLogger(__name__)

REPORT_DIR = "report"
"""Sub-folder of the model directory that holds the report files."""
SELECTION_DIR = "selection"
"""Sub-folder of the model directory that holds the selection tables (the classify job copies
them into the catalog, :mod:`iic_survey.output.selection_folder`)."""


def markdown(report: dict[str, Any], meta: dict[str, Any]) -> str:
    """The test report as Markdown: the paper's Table 2 layout, calibration, the plots."""
    lines = [
        f"# {meta['arch']} on the test split",
        "",
        f"Trained on {meta['n_train']} sources for {meta['epochs']} epochs; best epoch "
        f"{meta['best_epoch'] + 1} (validation loss {meta['best_val_loss']:.4f}).",
        "",
        metrics.report_markdown(report),
        f"Calibration: a temperature that is a smooth function of W1, fitted on {meta['n_val']} "
        f"validation sources (single temperature T = {meta['temperature']:.4f}). ECE "
        f"{report['ece_uncalibrated']:.4f} before, {report['ece_single_temperature']:.4f} with "
        f"the single temperature, {report['ece']:.4f} with T(W1).",
        "",
        *_ece_table(report),
        "![loss and accuracy per epoch](history.png)",
        "",
        "![ROC per class](roc.png) ![confusion matrix](confusion.png)",
        "",
    ]
    return "\n".join(lines)


def _ece_table(report: dict[str, Any]) -> list[str]:
    """ECE per W1 bin of the test split: uncalibrated, single temperature, T(W1)."""
    rows = report.get("ece_w1") or []
    if not rows:
        return []
    lines = [
        "| W1 | test sources | ECE uncalibrated | single T | T(W1) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lo, hi = r["w1_lo"], r["w1_hi"]
        name = (
            f"< {hi:g}"
            if lo == float("-inf")
            else f">= {lo:g}"
            if hi == float("inf")
            else f"{lo:g}-{hi:g}"
        )
        eces = " | ".join(f"{r[k]:.4f}" for k in ("ece_uncalibrated", "ece_single", "ece"))
        lines.append(f"| {name} | {r['n']} | {eces} |")
    return [*lines, ""]


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


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """What :func:`finalize` needs of a finished Ray Train run, besides its two configs."""

    best_checkpoint: Any
    """The ``ray.train.Checkpoint`` to calibrate and report on (the lowest validation loss)."""
    latest_checkpoint: Any
    """The last checkpoint: its history holds every epoch, its state every start of the run."""
    model_dir: str
    """Where the model directory goes."""
    manifest: Manifest
    """The training set's manifest (feature names, RGB parameters, counts)."""
    run_meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Run details (name, path, workers ...) copied into the model's ``meta``."""
    use_gpu: bool = False
    """Run the network on a GPU (when there is one)."""


@dataclasses.dataclass(frozen=True)
class _Trained:
    """A finished run's checkpoints, loaded."""

    state: dict[str, Any]
    """The best checkpoint's training state (weights, epoch ...)."""
    history: list[dict[str, Any]]
    """One row per finished epoch (the latest checkpoint's history)."""
    starts: list[int]
    """The first epoch of every start of the run."""

    @property
    def best_epoch(self) -> int:
        """The (0-based) epoch of the best checkpoint."""
        return int(self.state["epoch"])


def _load(checkpoint: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    with checkpoint.as_directory() as d:
        return load_state(d)


def _load_run(run: FinishedRun) -> _Trained:
    """The best checkpoint's state with the latest checkpoint's history and starts."""
    state, _ = _load(run.best_checkpoint)
    latest, history = _load(run.latest_checkpoint)
    return _Trained(state=state, history=history, starts=list(latest.get("starts", [])))


def _feature_stats(
    model: torch.nn.Module,
    config: TrainConfig,
    manifest: Manifest,
    temperature: float,
    device: torch.device,
) -> dict[str, Any]:
    """The training distribution the classify job compares new sources against: OOD statistics
    of the embeddings of up to ``config.ood_rows`` training rows, and the catalog features'
    mean and spread."""
    train = read_rows(config.data, "train", config.ood_rows, ("cntr", "image", "features"))
    train_logits, train_emb = predict(model, train["image"], train["features"], device)
    feats = np.asarray(train["features"], dtype=np.float64)
    return {
        **ood_statistics(train_emb, train_logits, temperature),
        "catalog_features": {
            "names": list(manifest["feature_names"]),
            "mean": np.nanmean(feats, axis=0).tolist(),
            "std": np.nanstd(feats, axis=0).tolist(),
        },
    }


def _meta(
    config: TrainConfig,
    model_cfg: ModelConfig,
    run: FinishedRun,
    trained: _Trained,
    ev: Evaluation,
) -> dict[str, Any]:
    """The model's ``meta``: how it was trained, on what, and its best epoch."""
    history, best_epoch = trained.history, trained.best_epoch
    return {
        **run.run_meta,
        "arch": model_cfg.arch,
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": float(history[best_epoch]["val_loss"])
        if best_epoch < len(history)
        else float("nan"),
        "temperature": ev.temperature,
        "n_train": int(sum(run.manifest["counts"]["train"].values())),
        "n_val": ev.n_val,
        "n_test": ev.report["n"],
        "training_set": config.data,
        "training_set_source": run.manifest.get("source"),
        "train_config": dataclasses.asdict(config),
        "code_version": __version__,
        "starts": trained.starts,
    }


_SUMMARY_KEYS = (
    "n",
    "accuracy",
    "per_class",
    "macro",
    "confusion",
    "log_loss",
    "ece",
    "ece_uncalibrated",
    "ece_single_temperature",
    "ece_w1",
    "temperature",
    "calibration",
)
"""The keys of the test report kept in the model's ``metrics``."""


def _scores(ev: Evaluation, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The model's ``metrics``: the test summary, validation NLL, the training history."""
    return {
        "test": {k: ev.report[k] for k in _SUMMARY_KEYS},
        "val": {
            "n": ev.n_val,
            "nll_uncalibrated": _nll(ev.val_logits, ev.val, 1.0),
            "nll_single_temperature": _nll(ev.val_logits, ev.val, ev.temperature),
            "nll": _nll_depth(ev),
        },
        "history": history,
    }


def finalize(config: TrainConfig, model_cfg: ModelConfig, run: FinishedRun) -> dict[str, Any]:
    """Run :func:`finalize_local` as a Ray task (with a GPU if ``run.use_gpu``), or here without
    Ray."""
    import ray

    run = dataclasses.replace(run, model_dir=str(Path(run.model_dir).expanduser().resolve()))
    if not ray.is_initialized():
        return finalize_local(config, model_cfg, run)
    fn: Any = finalize_local
    task: Any = ray.remote(num_cpus=1, num_gpus=1 if run.use_gpu else 0)(fn)
    return dict(ray.get(task.remote(config, model_cfg, run)))


def finalize_local(config: TrainConfig, model_cfg: ModelConfig, run: FinishedRun) -> dict[str, Any]:
    """Calibrate the best checkpoint, report on the test split, write the model directory.

    Returns a short summary (accuracy, macro AUC, ECE, temperature, paths).
    """
    device = torch.device("cuda" if run.use_gpu and torch.cuda.is_available() else "cpu")
    trained = _load_run(run)
    model = build_model(model_cfg)
    model.load_state_dict(trained.state["model"])
    model.to(device).eval()
    ev = evaluate(model, config.data, device)
    feature_stats = _feature_stats(model, config, run.manifest, ev.temperature, device)
    meta = _meta(config, model_cfg, run, trained, ev)
    _write_selection(ev, Path(run.model_dir) / SELECTION_DIR, meta)  # before model.json
    out = save_model_dir(
        run.model_dir,
        model,
        model_cfg,
        extra={
            "rgb": run.manifest["rgb"],
            "temperature": ev.temperature,
            "calibration": ev.calibration,
            "training_domain": training_domain(config.data).to_dict(),
            "feature_stats": feature_stats,
            "metrics": _scores(ev, trained.history),
            "meta": meta,
        },
    )
    write_gate_set_of(config, out)
    files = write_report(ev.report, trained.history, meta, Path(out) / REPORT_DIR)
    _write_card(Path(out), ev, run.manifest)
    report = ev.report
    logger.info(
        "model directory %s: test accuracy %.4f, macro AUC %.4f, ECE %.4f (T = %.3f)",
        out,
        report["accuracy"],
        report["macro"]["auc"],
        report["ece"],
        ev.temperature,
    )
    return {
        "model_dir": str(out),
        "accuracy": report["accuracy"],
        "macro_auc": report["macro"]["auc"],
        "ece": report["ece"],
        "ece_uncalibrated": report["ece_uncalibrated"],
        "temperature": ev.temperature,
        "recall": {c: report["per_class"][c]["recall"] for c in CLASSES},
        "epochs": len(trained.history),
        "best_epoch": trained.best_epoch,
        "report_files": files,
    }


def _write_card(out: Path, ev: Evaluation, manifest: Manifest) -> None:
    """The model card ``README.md`` (:mod:`iic_survey.training.card`) from ``model.json``'s
    numbers and the test split's calibrated probabilities."""
    doc = json.loads((out / "model.json").read_text())
    test = {"label": ev.test["label"], "proba": ev.test_proba, "w1": ev.test["w1mpro"]}
    domain = doc.get("training_domain") or {}
    card.write_model_card(out, card.model_card(ev.report, doc["meta"], manifest, domain, test))


def write_gate_set_of(config: TrainConfig, model_dir: str | Path) -> None:
    """The precision gate's rows (up to 2,048 validation rows, topped up from the test split)
    and the int8 calibration images (training rows) into the model directory."""
    cols = ("image", *quantized.GATE_COLUMNS)
    rows = read_rows(config.data, "val", quantized.GATE_SET_ROWS, cols)
    short = quantized.GATE_SET_ROWS - len(rows.get("image", ()))
    if short > 0:
        more = read_rows(config.data, "test", short, cols)
        rows = {k: np.concatenate([rows[k], more[k]]) for k in rows if k in more}
    calibration = read_rows(config.data, "train", quantized.CALIBRATION_IMAGES, ("cntr", "image"))
    quantized.write_gate_set(model_dir, rows, calibration["image"])


def _write_selection(ev: Evaluation, out: Path, meta: dict[str, Any]) -> None:
    """Completeness, purity, thresholds and reliability of the test split
    (:mod:`iic_survey.training.selection_tables`), with the calibrated probabilities."""
    t = ev.test
    tables = selection_tables.selection_tables(
        t, ev.test_proba
    )  # thresholds: choose / verify parts
    info = {"split": "test", "n_rows": len(t["label"]), "arch": meta["arch"],
            "calibration": ev.calibration.to_dict()}  # fmt: skip
    selection_tables.write_tables(out, tables, info)


def _nll_depth(ev: Evaluation) -> float | None:
    """Validation NLL under the depth calibration."""
    if not ev.n_val:
        return None
    p = ev.calibration.probabilities(ev.val_logits, ev.val["w1mpro"])
    return float(-np.mean(np.log(np.clip(p[np.arange(ev.n_val), ev.val["label"]], 1e-300, 1))))


def _nll(logits: np.ndarray, rows: dict[str, np.ndarray], temperature: float) -> float | None:
    if not len(logits):
        return None
    return metrics.nll(logits, rows["label"], temperature)
