"""Training speed: images per second through Ray Train with 1 and 2 CPU workers, in one run.

    .venv/bin/python -m benchmarks.training                  # print the table
    .venv/bin/python -m benchmarks.training --write-results  # also update benchmarks/RESULTS.md

Starts its own local Ray head (:mod:`iic_survey.testing.ray_head`: free ports, own temp dir,
torn down at the end), builds a training set from the tiny synthetic sky in a temporary folder
(or uses ``--data``), and runs :func:`iic_survey.training.trainer.fit` once per configuration:
``--epochs`` epochs on a fixed subset, the rate taken from the last epoch (the first one pays
for worker start-up and caching). Each configuration trains the same model on the same rows;
only the worker layout differs. (The quality study that used to live here is
``python -m experiments.quality``.)

The "## Training (benchmarks/training.py)" section of benchmarks/RESULTS.md is replaced
(stamped with its provenance by :mod:`benchmarks.results`).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import load as _load
from benchmarks.results import write_section
from iic_survey.testing.ray_head import local_ray

SECTION = "## Training (benchmarks/training.py)"
LAYOUTS: tuple[tuple[int, float], ...] = ((1, 1.0), (2, 1.0), (1, 2.0))
"""(workers, CPUs per worker) measured."""


def training_set(args: argparse.Namespace, tmp: str) -> str:
    """``--data``, or a training set built from the tiny synthetic sky under ``tmp``."""
    from iic_survey.synthetic import skyfiles
    from iic_survey.training import labels

    if args.data:
        return str(args.data)
    skyfiles.write_sky(f"{tmp}/sky", skyfiles.tiny_config())
    labels.build_training_set(labels.TrainingSetConfig(sky=f"{tmp}/sky"), f"{tmp}/ts")
    return f"{tmp}/ts"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure every layout in :data:`LAYOUTS`; returns the numbers and the context."""
    from iic_survey.training import checkpoints, config, trainer

    rows: list[dict[str, Any]] = []
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        data = training_set(args, tmp)
        with local_ray(num_cpus=4):
            cfg = config.TrainConfig(
                data=data,
                epochs=args.epochs,
                batch_size=args.batch_size,
                max_train_rows=args.rows,
                widths=tuple(args.widths) if args.widths else None,
                ood_rows=16,
            )
            for rnd in range(args.rounds):  # layouts interleaved: a load swing hits all
                for workers, cpus in LAYOUTS:
                    run_settings = config.RunSettings(
                        name=f"bench-{workers}x{cpus:g}-{rnd}",
                        storage_path=f"{tmp}/runs",
                        num_workers=workers,
                        cpus_per_worker=cpus,
                        max_failures=0,
                    )
                    t0 = time.perf_counter()
                    result = trainer.fit(cfg, run_settings)
                    wall = time.perf_counter() - t0
                    with result.checkpoint.as_directory() as d:
                        _, history = checkpoints.load_state(d)
                    rates = [h["images_per_s"] for h in history[1:]]  # epoch 0 warms up
                    rows.append(
                        {
                            "workers": workers,
                            "cpus": cpus,
                            "round": rnd,
                            "images": history[-1]["train_images"],
                            "rates": rates,
                            "rate": max(rates),
                            "wall": wall,
                        }
                    )
                    print(
                        f"round {rnd}: {workers} worker(s) x {cpus:g} CPU: epoch rates "
                        f"{', '.join(f'{r:.1f}' for r in rates)} images/s; fit() {wall:.0f} s",
                        flush=True,
                    )
    return {
        "rows": rows,
        "config": dataclasses.asdict(cfg),
        "load_before": load_before,
        "rounds": args.rounds,
        "load_after": _load(),
        "data": "--data " + str(args.data)
        if args.data
        else "a training set built from the tiny synthetic sky (skyfiles.tiny_config())",
    }


def section(res: dict[str, Any]) -> str:
    """The RESULTS.md section for one run."""
    import torch

    cfg = res["config"]
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    model = "paper-sized IICnet" if cfg["widths"] is None else f"IICnet widths {cfg['widths']}"
    best = {
        (r["workers"], r["cpus"]): max(
            x["rate"] for x in res["rows"] if (x["workers"], x["cpus"]) == (r["workers"], r["cpus"])
        )
        for r in res["rows"]
    }
    walls = {k: [x["wall"] for x in res["rows"] if (x["workers"], x["cpus"]) == k] for k in best}
    base = best[LAYOUTS[0]]
    lines = [
        SECTION,
        "",
        f"Measured {when} on {os.cpu_count()} shared cores ({platform.machine()}), load average "
        f"(1/5/15 min) {res['load_before']} before and {res['load_after']} after; Python "
        f"{platform.python_version()}, torch {torch.__version__}; one local Ray head with 4 "
        "logical CPUs. One run: every number below comes from it.",
        "",
        f"Data: {res['data']}; {model}, batch {cfg['batch_size']} per worker, about "
        f"{cfg['max_train_rows']} training rows, {cfg['epochs']} epochs per fit, every "
        f"layout fitted {res['rounds']} times, interleaved. The rate is the best epoch after "
        "the first (training images / mean worker epoch time: data loading, "
        "augmentation, forward, backward and the DDP all-reduce; validation excluded). Ray "
        "Train gives each worker as many torch threads as CPUs it reserves.",
        "",
        "| workers x CPUs each | images/s | vs 1 x 1 | fit() wall time (s) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for (w, c), rate in best.items():
        wall = " / ".join(f"{x:.0f}" for x in walls[(w, c)])
        lines.append(f"| {w} x {c:g} | {rate:.1f} | {rate / base:.2f}x | {wall} |")
    lines += ["", "Every epoch rate (images/s), in the order measured:", ""]
    for r in res["rows"]:
        lines.append(
            f"- round {r['round']}, {r['workers']} x {r['cpus']:g}: "
            + ", ".join(f"{x:.1f}" for x in r["rates"])
        )
    lines += [
        "",
        "fit() wall time includes starting the worker group, reading and caching the "
        "data and every epoch, so it is dominated by fixed costs at this size.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print, optionally write RESULTS.md."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--data", default=None, help="a training set (default: build a tiny one)")
    parser.add_argument("--rows", type=int, default=384, help="training rows per epoch (about)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the first untimed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats of all layouts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--widths", type=int, nargs=6, default=None, help="IICnet widths (default: paper-sized)"
    )
    parser.add_argument("--write-results", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    res = run(args)
    text = section(res)
    print(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
