"""Train IICnet with Ray Train, calibrate it and write the model directory.

    ray job submit --working-dir . -- python jobs/train.py                 # the paper's schedule
    ray job submit --working-dir . -- python jobs/train.py --preset demo   # ~2-3 min on 2 CPUs

Rerunning with the same --name (and --storage-path) resumes after the last finished epoch.
With no training set at --data, one is built from the synthetic sky (--sky) first.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from iic_survey.core import paths
from iic_survey.training import build as labels
from iic_survey.training import config as training_config
from iic_survey.training import fit as training

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "demo": {
        "epochs": 6,
        "lr": 1e-3,
        "lr_halve_epoch": 4,
        "batch_size": 64,
        "widths": [8, 16, 16, 32, 32, 64],
        "head_dim": 64,
        "max_train_rows": 3000,
        "num_workers": 2,
        "name": "demo",
        "ood_rows": 2000,
    },
}
"""Defaults per ``--preset`` (explicit flags win); ``paper`` is TrainConfig's: the paper's."""


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    d = training_config.TrainConfig(data="")
    p = argparse.ArgumentParser(
        prog="train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="paper",
        help="a set of defaults: the paper's schedule, or a demo-sized run",
    )
    p.add_argument(
        "--data",
        default=paths.default_training_set(),
        help="training set root, local or s3:// (default: %(default)s)",
    )
    p.add_argument(
        "--sky",
        default=paths.default_sky(),
        help="synthetic sky to build the training set from when --data has none",
    )
    p.add_argument("--arch", choices=("iicnet", "fusion", "colour"), default=d.arch)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument(
        "--lr-halve-epoch",
        type=int,
        default=d.lr_halve_epoch,
        help="0-based epoch from which the learning rate is halved",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per worker")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument(
        "--no-augment",
        dest="augment",
        action="store_false",
        help="no random flips / 90-degree rotations",
    )
    p.add_argument(
        "--precision",
        choices=training_config.PRECISIONS,
        default=d.precision,
        help="autocast on GPU: auto = bf16 where supported, else fp16",
    )
    p.add_argument(
        "--widths",
        type=int,
        nargs=6,
        default=None,
        help="IICnet channel widths (stem, RFB, conv2..conv5); default: paper-sized",
    )
    p.add_argument("--head-dim", type=int, default=None, help="penultimate (embedding) width")
    p.add_argument(
        "--max-train-rows",
        type=int,
        default=None,
        help="train on a stable subset of about this many rows",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--ood-rows",
        type=int,
        default=d.ood_rows,
        help="training rows whose embeddings give the OOD statistics",
    )
    p.add_argument(
        "--cache",
        choices=("auto", "yes", "no"),
        default=d.cache,
        help="hold train + val in Ray's object store (auto: when small)",
    )
    p.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="Ray Train workers (default: one per GPU, or 2 on CPU)",
    )
    p.add_argument(
        "--use-gpu",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: use GPUs if the Ray cluster has any",
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument("--name", default="iicnet", help="run name: the same name resumes")
    p.add_argument(
        "--storage-path",
        default=paths.default_runs(),
        help="checkpoints, local or s3:// (default: %(default)s)",
    )
    p.add_argument(
        "--model-dir",
        default=paths.default_model(),
        help="where the model directory goes (default: %(default)s)",
    )
    p.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="worker failures survived by restarting from the last checkpoint",
    )
    p.add_argument("--num-to-keep", type=int, default=2, help="best checkpoints kept")
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse, with the chosen preset's values as defaults (explicit flags still win)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    parser.set_defaults(**PRESETS[first.preset])
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, finalise, print a JSON summary. Exit status 0 on success."""
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    config = training_config.TrainConfig(
        data=args.data,
        arch=args.arch,
        epochs=args.epochs,
        lr=args.lr,
        lr_halve_epoch=args.lr_halve_epoch,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        augment=args.augment,
        precision=args.precision,
        widths=tuple(args.widths) if args.widths else None,
        head_dim=args.head_dim,
        max_train_rows=args.max_train_rows,
        seed=args.seed,
    )
    labels.ensure_synthetic_training_set(args.data, args.sky)

    import ray

    if not ray.is_initialized():
        ray.init(address=args.address)
    use_gpu = training.detect_gpu(args.use_gpu)
    workers = args.num_workers
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 2
    run = training_config.RunSettings(
        name=args.name,
        storage_path=args.storage_path,
        model_dir=args.model_dir,
        num_workers=workers,
        use_gpu=use_gpu,
        cpus_per_worker=args.cpus_per_worker,
        max_failures=args.max_failures,
        num_to_keep=args.num_to_keep,
    )
    summary = training.train(config, run)
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
