"""Training IICnet (and its fusion / colour-only variants) with Ray Train V2.

One :class:`TrainConfig` describes a run; :func:`train` runs it: a ``TorchTrainer`` whose
workers stream their shard of the training set (``ray.train.get_dataset_shard`` +
``iter_torch_batches``), train with the paper's schedule (Adam, lr 1e-4 halved after epoch 50,
200 epochs) and report a checkpoint every epoch. Checkpoints go to ``RunConfig(name,
storage_path)``; the best by validation loss are kept. Rerunning with the same name resumes:
Ray Train restores its checkpoint list and the loop continues after the last finished epoch, and
``FailureConfig(max_failures)`` restarts a dead worker group from the last checkpoint the same
way. At the end :func:`iic_survey.training.finalize.finalize` calibrates the best checkpoint on the
validation split, reports on the test split and writes the model directory.

The worker loop itself is :mod:`iic_survey.training.loop`; this module is the driver's side: the
datasets, the trainer, and finalising.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from iic_survey.core import paths
from iic_survey.core.hashing import hash_unit
from iic_survey.core.paths import PathLike, as_path
from iic_survey.core.progress import Bar
from iic_survey.training import trainingset
from iic_survey.training.checkpoints import best_checkpoint, epochs_committed
from iic_survey.training.config import RunSettings, TrainConfig, model_config_for
from iic_survey.training.finalize import FinishedRun, finalize
from iic_survey.training.loop import StepHook, train_loop_per_worker
from iic_survey.training.trainingset import Manifest

if TYPE_CHECKING:
    import ray.data
    import ray.train

logger = logging.getLogger(__name__)

BAR_POLL_S = 2.0
"""How often the epoch bar reads the run's checkpoint record (one small file)."""


def detect_gpu(mode: str) -> bool:
    """``--use-gpu auto|yes|no``: auto asks the connected Ray cluster whether it has GPUs."""
    if mode not in ("auto", "yes", "no"):
        raise ValueError(f"use-gpu must be auto, yes or no, got {mode!r}")
    if mode != "auto":
        return mode == "yes"
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) > 0


def split_datasets(config: TrainConfig, manifest: Manifest) -> dict[str, ray.data.Dataset]:
    """Ray Data datasets of the train and val splits (the columns the loop needs only).

    Small splits are materialised once in the object store (see ``TrainConfig.cache``), which
    saves re-reading and re-decoding the Parquet every epoch.
    """
    import ray

    cols = ["image", "features", "label", "cntr"]
    train_ds = trainingset.read_split_ray(config.data, "train", columns=cols)
    if config.max_train_rows is not None:
        total = train_ds.count()  # from the Parquet footers: no data is read
        if total > config.max_train_rows:
            key = f"iic-subset-{config.seed}"
            train_ds = train_ds.map_batches(
                _SubsetFilter(key, config.max_train_rows / total), batch_format="numpy"
            )
    val_ds = trainingset.read_split_ray(config.data, "val", columns=cols)
    out = {"train": train_ds.drop_columns(["cntr"]), "val": val_ds.drop_columns(["cntr"])}
    rows = sum(manifest["counts"][s][c] for s in ("train", "val") for c in manifest["counts"][s])
    if config.max_train_rows is not None:
        rows = min(rows, config.max_train_rows + sum(manifest["counts"]["val"].values()))
    nbytes = (
        rows
        * 4
        * (
            int(np.prod(manifest.get("image_shape", (3, 80, 80))))
            + len(manifest["feature_names"])
            + 2
        )
    )
    store = float(ray.cluster_resources().get("object_store_memory", 0))
    if config.cache == "yes" or (config.cache == "auto" and nbytes < store / 4):
        logger.info(
            "caching %d rows (~%.0f MB) of train + val in the object store", rows, nbytes / 1e6
        )
        out = {k: v.materialize() for k, v in out.items()}
    return out


class _SubsetFilter:
    """Keep rows whose keyed hash of cntr is below ``frac``: a stable subset."""

    def __init__(self, key: str, frac: float) -> None:
        self.key, self.frac = key, frac

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:

        keep = hash_unit(batch["cntr"], self.key) < self.frac
        return {k: v[keep] for k, v in batch.items()}


def fit(
    config: TrainConfig, run: RunSettings, step_hook: StepHook | None = None
) -> ray.train.Result:
    """Run (or resume) the Ray Train part only; returns the ``ray.train.Result``.

    ``step_hook`` (picklable) is called by every worker before each training step
    (:data:`~iic_survey.training.loop.StepHook`); the tests kill a worker with one.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    info = trainingset.read_manifest(config.data)
    model_cfg = model_config_for(config, list(info["feature_names"]))
    resources = {"CPU": run.cpus_per_worker, **({"GPU": 1} if run.use_gpu else {})}
    datasets: dict[str, ray.data.Dataset | Callable[[], ray.data.Dataset]] = {
        **split_datasets(config, info)
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "train": dataclasses.asdict(config),
            "model": model_cfg.to_dict(),
            **({"step_hook": step_hook} if step_hook is not None else {}),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=run.num_workers,
            use_gpu=run.use_gpu,
            resources_per_worker=resources,
            placement_strategy=run.placement_strategy,
        ),
        run_config=ray.train.RunConfig(
            name=run.name,
            storage_path=run.storage_path or paths.default_runs(),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=run.num_to_keep,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
        ),
        datasets=datasets,
    )
    with epoch_bar(config.epochs, as_path(run.storage_path or paths.default_runs()) / run.name):
        return trainer.fit()


@contextlib.contextmanager
def epoch_bar(epochs: int, run_dir: PathLike) -> Iterator[Bar]:
    """A bar of the epochs Ray Train has committed, for a person at a terminal, while the block
    runs (a thread reads ``run_dir``'s checkpoint record every :data:`BAR_POLL_S`); nothing
    where output goes to a log, which keeps the workers' epoch lines as before."""
    bar = Bar(epochs, "training", "epochs", min_interval_s=0.0)
    if not bar.enabled:
        yield bar
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(BAR_POLL_S):
            with contextlib.suppress(OSError):  # a storage hiccup: the next poll tries again
                bar.update(to=epochs_committed(run_dir))

    thread = threading.Thread(target=poll, name="epoch-bar", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            bar.update(to=epochs_committed(run_dir))
        bar.close()


def train(
    config: TrainConfig, run: RunSettings, step_hook: StepHook | None = None
) -> dict[str, object]:
    """Run (or resume) training on the connected Ray cluster, then finalise the model directory.

    Returns a summary: run path, best checkpoint, test metrics, model directory. ``step_hook``:
    see :func:`fit`.
    """
    result = fit(config, run, step_hook)
    best = best_checkpoint(result)  # raises if the run has no checkpoint
    latest = result.checkpoint or best
    logger.info("training done: best checkpoint %s, latest %s", best.path, latest.path)
    info = trainingset.read_manifest(config.data)
    finished = FinishedRun(
        best_checkpoint=best,
        latest_checkpoint=latest,
        model_dir=run.model_dir or paths.default_model(),
        manifest=info,
        run_meta={
            "run_name": run.name,
            "run_path": result.path,
            "num_workers": run.num_workers,
            "use_gpu": run.use_gpu,
        },
        use_gpu=run.use_gpu,
    )
    summary = finalize(config, model_config_for(config, list(info["feature_names"])), finished)
    summary.update(run_path=result.path, best_checkpoint=best.path)
    return summary
