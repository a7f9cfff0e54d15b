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
from iic_survey.training import labels, trainer
from iic_survey.training.config import RunSettings, TrainConfig, add_arguments

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
    """The command line: the job's own options, then the run's (:func:`add_arguments`)."""
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
        "--sky",
        default=paths.default_sky(),
        help="synthetic sky to build the training set from when --data has none",
    )
    p.add_argument("--address", default=None, help="Ray address (default: the job's cluster)")
    add_arguments(p)
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
    config = TrainConfig.from_args(args)
    labels.ensure_synthetic_training_set(args.data, args.sky)

    import ray

    if not ray.is_initialized():
        ray.init(address=args.address)
    use_gpu = trainer.detect_gpu(args.use_gpu)
    workers = args.num_workers
    if workers is None:
        workers = max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 2
    run = RunSettings.from_args(args, num_workers=workers, use_gpu=use_gpu)
    summary = trainer.train(config, run)
    print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
