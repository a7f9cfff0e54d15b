"""Training speed: images per second through Ray Train with 1 and 2 CPU workers, in one run.

    .venv/bin/python bench/bench_training.py                  # print the table
    .venv/bin/python bench/bench_training.py --write-results  # also update bench/RESULTS.md
    .venv/bin/python bench/bench_training.py --quality --workdir /tmp/iic_quality --write-results

``--quality`` is the (long) quality run instead: a larger synthetic sky, its training set, a
colour-cut baseline, then IICnet, fusion and colour-only trained on the same split, each
calibrated and reported on the same test split; it writes its own sections, "## Quality on the
synthetic sky (bench/bench_training.py --quality)" and "## Training quality on the synthetic
sky". Results are also kept in ``<workdir>/quality.json``.

Starts its own local Ray head (the test fixture's helper: free ports, own temp dir, torn down at
the end), builds a training set from the tiny synthetic sky in a temporary folder (or uses
``--data``), and runs :func:`iic_survey.training.trainer.fit` once per configuration: ``--epochs``
epochs on a fixed subset, the rate taken from the last epoch (the first one pays for worker
start-up and caching). Each configuration trains the same model on the same rows; only the
worker layout differs.

The "## Training (bench/bench_training.py)" section of RESULTS.md is replaced (stamped with its
provenance by ``results_md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import functools
import itertools
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

import selection_quality
from results_md import write_section as replace_section

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Training (bench/bench_training.py)"
QUALITY_MARK = "## Quality on the synthetic sky (bench/bench_training.py --quality)"
LAYOUTS: tuple[tuple[int, float], ...] = ((1, 1.0), (2, 1.0), (1, 2.0))
"""(workers, CPUs per worker) measured."""


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


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
    import ray

    sys.path.insert(0, str(REPO))
    from iic_survey.training import checkpoints, config, trainer
    from tests.fixtures.ray_cluster import start_local_ray, stop_local_ray

    rows: list[dict[str, Any]] = []
    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        data = training_set(args, tmp)
        head = start_local_ray(num_cpus=4)
        try:
            ray.init(address=head.gcs_address, log_to_driver=False)
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
        finally:
            ray.shutdown()
            stop_local_ray(head)
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


# ---------------------------------------------------------------------------------------------
# The quality run


GBT_NAME = "gradient-boosted trees, all catalog features"


@functools.lru_cache(maxsize=2)
def catalog_gbt(data: str) -> Any:
    """Gradient-boosted trees on all catalog features, fitted once on the train split (seeded).

    Both the baselines table (:func:`colour_cuts`) and the depth breakdown
    (:func:`depth_breakdown`) use this one fit, so the report quotes one accuracy for it (an
    earlier version fitted it twice, unseeded and seeded: 78.8 % and 78.4 % for one baseline).
    """
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    from iic_survey.training import trainingset

    train = trainingset.read_split(data, "train", columns=["features", "label"])
    gbt = HistGradientBoostingClassifier(random_state=0)
    return gbt.fit(np.nan_to_num(train["features"]), train["label"])


def colour_cuts(data: str) -> dict[str, Any]:
    """Baselines from the catalog alone, fitted on train and scored on test: a depth-3 decision
    tree on W1-W2 and W2-W3 (the colour-cut family of Stern et al. / Jarrett et al.) and
    gradient-boosted trees on all catalog features (:func:`catalog_gbt`)."""
    import numpy as np
    from sklearn.tree import DecisionTreeClassifier

    from iic_survey.training import trainingset

    cols = ["features", "label", "w1mpro", "w2mpro", "w3mpro"]
    tr, te = (trainingset.read_split(data, s, columns=cols) for s in ("train", "test"))

    def colours(d: dict[str, Any]) -> Any:
        w23 = np.nan_to_num(d["w2mpro"] - d["w3mpro"], nan=0.0)  # W3 upper limits: 0
        return np.stack([d["w1mpro"] - d["w2mpro"], w23], axis=1)

    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(colours(tr), tr["label"])
    out = {}
    for name, pred in (
        ("colour cut (tree, depth 3, W1-W2 & W2-W3)", tree.predict(colours(te))),
        (GBT_NAME, catalog_gbt(data).predict(np.nan_to_num(te["features"]))),
    ):
        y = te["label"]
        out[name] = {
            "accuracy": float(np.mean(pred == y)),
            "recall": [float(np.mean(pred[y == k] == k)) for k in range(3)],
        }
    return out


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Sky -> training set -> baselines -> iicnet / fusion / colour; every step logged."""
    import json

    import ray

    sys.path.insert(0, str(REPO))
    from iic_survey.core.constants import CLASSES
    from iic_survey.synthetic import skyfiles
    from iic_survey.training import config, labels, trainer, trainingset
    from tests.fixtures.ray_cluster import start_local_ray, stop_local_ray

    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    sky_cfg = skyfiles.SkyConfig(
        seed=args.sky_seed, n_sources=args.sky_sources, field_size_deg=args.field_size
    )
    t0 = time.perf_counter()
    if not (work / "sky" / "sky.json").exists():
        skyfiles.write_sky(work / "sky", sky_cfg)
    if not (work / "ts" / trainingset.MANIFEST).exists():
        labels.build_training_set(labels.TrainingSetConfig(sky=str(work / "sky")), str(work / "ts"))
    prep_s = time.perf_counter() - t0
    manifest = trainingset.read_manifest(str(work / "ts"))
    # Only with --reuse does a rerun keep the models an earlier run trained with the same
    # settings; the section then names each with the commit and date it was trained at.
    qfile = work / "quality.json"
    previous = json.loads(qfile.read_text()) if qfile.exists() and args.reuse else {}
    res: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "sky": dataclasses.asdict(sky_cfg),
        "counts": manifest["counts"],
        "prep_seconds": prep_s,
        "load_before": _load(),
        "baselines": colour_cuts(str(work / "ts")),
        "models": {},
    }
    print(json.dumps(res["baselines"], indent=1), flush=True)
    head = start_local_ray(num_cpus=4)
    try:
        ray.init(address=head.gcs_address, log_to_driver=False)
        for arch in args.archs:
            cfg = config.TrainConfig(
                data=str(work / "ts"),
                arch=arch,
                epochs=args.epochs,
                lr=args.lr,
                lr_halve_epoch=args.lr_halve_epoch,
                batch_size=args.batch_size,
                widths=tuple(args.widths) if args.widths else None,
                ood_rows=4000,
            )
            done = previous.get("models", {}).get(arch)
            same = json.loads(json.dumps(dataclasses.asdict(cfg), default=str))
            if done and done.get("config") == same and pathlib.Path(done["model_dir"]).exists():
                print(f"{arch}: kept from the earlier run ({done['model_dir']})", flush=True)
                res["models"][arch] = {**done, "reused_from_earlier_run": True}
                continue
            run_settings = config.RunSettings(
                name=f"quality-{arch}",
                storage_path=str(work / "runs"),
                model_dir=str(work / "models" / arch),
                num_workers=1,
                cpus_per_worker=2,
                max_failures=1,
            )
            t1 = time.perf_counter()
            summary = trainer.train(cfg, run_settings)
            summary["wall_seconds"] = time.perf_counter() - t1
            summary["config"] = dataclasses.asdict(cfg)
            summary["trained_at"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            summary["trained_commit"] = _commit()
            res["models"][arch] = summary
            (work / "quality.json").write_text(json.dumps(res, indent=1, default=str))
            print(
                arch,
                {k: summary[k] for k in ("accuracy", "macro_auc", "ece", "recall")},
                flush=True,
            )
    finally:
        ray.shutdown()
        stop_local_ray(head)
    res["load_after"] = _load()
    res["classes"] = list(CLASSES)
    res["depth"] = depth_breakdown(res, work)
    if "iicnet" in res["models"]:  # calibration per depth and the selection products
        res["calibration_and_selection"] = selection_quality.analyse(
            work, work / "models" / "iicnet"
        )
    (work / "quality.json").write_text(json.dumps(res, indent=1, default=str))
    return res


W1_BINS = (6.0, 14.0, 15.0, 15.5, 16.0, 18.0)
"""Catalog W1 magnitude bins of the depth breakdown."""
BRIGHT_W1 = 15.0
"""The bright sample: W1 < 15, about the depth of SDSS spectroscopic labels (the main galaxy
sample's r < 17.77 is W1 ~ 14-15 for galaxy colours); the paper's numbers are on such a set."""


def _frac(hits: Any) -> float:
    """The fraction of True in ``hits``; NaN when empty."""
    return float(hits.mean()) if hits.size else float("nan")


def depth_breakdown(res: dict[str, Any], work: pathlib.Path) -> dict[str, Any]:
    """Test-split metrics of every model (and the catalog baseline) against catalog W1 depth.

    Returns {model: {"bins": [(lo, hi, n, accuracy, recall per class)], "bright": report}} with
    the bright report a :func:`iic_survey.core.metrics.classification_report` of rows W1 < 15.
    """
    import numpy as np
    import torch

    from iic_survey.core import metrics
    from iic_survey.core.constants import CLASSES
    from iic_survey.model.directory import load_model_dir
    from iic_survey.model.ood import predict
    from iic_survey.training import trainingset

    cols = ["cntr", "image", "features", "label", "w1mpro"]
    test = trainingset.read_split(str(work / "ts"), "test", columns=cols)
    y, w1 = np.asarray(test["label"]), np.asarray(test["w1mpro"], dtype=float)
    probas: dict[str, Any] = {}
    for arch in res["models"]:
        bundle = load_model_dir(str(work / "models" / arch))
        with torch.inference_mode():
            logits, _ = predict(
                bundle.model, test["image"], test["features"], torch.device("cpu"), 64
            )
        # the model's own calibration: T(W1) (a single temperature for an older directory)
        if bundle.calibration is not None:
            probas[arch] = bundle.calibration.probabilities(logits, w1)
        else:
            probas[arch] = metrics.softmax(logits, bundle.temperature or 1.0)
    gbt = catalog_gbt(str(work / "ts"))  # the fit of the baselines table, not a second one
    probas["gradient-boosted trees (catalog)"] = gbt.predict_proba(np.nan_to_num(test["features"]))
    out: dict[str, Any] = {}
    for name, p in probas.items():
        pred = p.argmax(1)
        bins = []
        for lo, hi in itertools.pairwise(W1_BINS):
            sel = (w1 >= lo) & (w1 < hi)
            rec = [_frac(pred[sel & (y == k)] == k) for k in range(len(CLASSES))]
            bins.append((lo, hi, int(sel.sum()), _frac(pred[sel] == y[sel]), rec))
        bright = w1 < BRIGHT_W1
        out[name] = {
            "bins": bins,
            "bright": metrics.classification_report(y[bright], p[bright], CLASSES),
        }
    return out


def depth_lines(depth: dict[str, Any], classes: list[str]) -> list[str]:
    """Markdown tables of :func:`depth_breakdown`."""
    n_bright = next(iter(depth.values()))["bright"]["n"]
    lines = [
        f"**The bright sample (catalog W1 < {BRIGHT_W1:g}, {n_bright} of the test sources)**, "
        "about the depth of SDSS spectroscopic labels, where the paper's numbers were measured:",
        "",
        "| model | accuracy | acc. galaxy / quasar / star (1-vs-rest) | recall galaxy / quasar / "
        "star | macro AUC | ECE |",
        "| --- | ---: | --- | --- | ---: | ---: |",
    ]
    for name, d in depth.items():
        b = d["bright"]
        pc = b["per_class"]
        acc = " / ".join(f"{100 * pc[c]['accuracy']:.1f}" for c in classes)
        rec = " / ".join(f"{100 * pc[c]['recall']:.1f}" for c in classes)
        lines.append(
            f"| {name} | {100 * b['accuracy']:.1f} % | {acc} | {rec} | "
            f"{b['macro']['auc']:.4f} | {b['ece']:.3f} |"
        )
    edges = next(iter(depth.values()))["bins"]
    head = " | ".join(f"{lo:g}-{hi:g} (n={n})" for lo, hi, n, _, _ in edges)
    lines += [
        "",
        "**Accuracy against catalog W1** (all test sources; recall galaxy / quasar / star in "
        "brackets):",
        "",
        f"| model | {head} |",
        "| --- |" + " ---: |" * len(edges),
    ]
    for name, d in depth.items():
        cells = []
        for _, _, _, acc, rec in d["bins"]:
            r = "/".join("-" if r != r else f"{100 * r:.0f}" for r in rec)
            cells.append(f"{100 * acc:.1f} % ({r})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _commit() -> str:
    """The git commit the models are trained at (``+dirty`` when the tree has changes)."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout  # fmt: skip
    return head.strip()[:10] + ("+dirty" if dirty.strip() else "")


def _reused_lines(res: dict[str, Any]) -> list[str]:
    """A line per model kept from an earlier run (``--reuse``), with when and where trained."""
    out = []
    for arch, m in res["models"].items():
        if m.get("reused_from_earlier_run"):
            when = m.get("trained_at", "at an unrecorded date")
            commit = m.get("trained_commit", "unrecorded")
            out.append(f"**Model `{arch}` reused from an earlier run** (trained {when}, commit "
                       f"{commit}); its train time is that run's.")  # fmt: skip
    return out


def quality_section(res: dict[str, Any], work: pathlib.Path) -> str:
    """The "### Quality on the synthetic sky" text."""
    import json

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    n = {s: sum(c.values()) for s, c in res["counts"].items()}
    sky = res["sky"]
    lines = [
        QUALITY_MARK,
        "",
        f"Recorded {when} (a run, not a test), on 2 shared cores, load average {res['load_before']}"
        f" before and {res.get('load_after', '?')} after. Command: `{res['command']}`.",
        "",
        f"Sky: `SkyConfig(seed={sky['seed']}, n_sources={sky['n_sources']:,}, "
        f"field_size_deg={sky['field_size_deg']})` (default fields); training set balanced to the "
        f"rarest class: {n['train']:,} train / {n['val']:,} val / {n['test']:,} test "
        f"(8:1:1 by hash of cntr); sky + cutouts "
        + (f"{res['prep_seconds']:.0f} s." if res["prep_seconds"] >= 1 else "from an earlier run."),
        "",
        *_reused_lines(res),
        "Test split, after calibration fitted on the validation split (a temperature that is a "
        "smooth function of W1; T is its all-depth single temperature). Per-class accuracy is the "
        "paper's one-vs-rest accuracy; recall is the fraction of the class found.",
        "",
        "| model | epochs | accuracy | acc. galaxy / quasar / star (1-vs-rest) | recall "
        "galaxy / quasar / star | macro AUC | ECE before -> after | T | train time |",
        "| --- | ---: | ---: | --- | --- | ---: | --- | ---: | ---: |",
    ]
    for arch, m in res["models"].items():
        doc = json.loads((work / "models" / arch / "report" / "report.json").read_text())
        pc = doc["test"]["per_class"]
        cfg = m["config"]
        name = arch + ("" if cfg["widths"] is None else f" (widths {tuple(cfg['widths'])})")
        acc = " / ".join(f"{100 * pc[c]['accuracy']:.1f}" for c in res["classes"])
        rec = " / ".join(f"{100 * pc[c]['recall']:.1f}" for c in res["classes"])
        lines.append(
            f"| {name} | {m['epochs']} | {100 * m['accuracy']:.1f} % | {acc} | {rec} | "
            f"{m['macro_auc']:.4f} | {m['ece_uncalibrated']:.3f} -> {m['ece']:.3f} | "
            f"{m['temperature']:.2f} | {m['wall_seconds'] / 60:.0f} min |"
        )
    for name, b in res["baselines"].items():
        rec = " / ".join(f"{100 * r:.1f}" for r in b["recall"])
        lines.append(f"| {name} | - | {100 * b['accuracy']:.1f} % | - | {rec} | - | - | - | - |")
    lines += [
        "",
        "Schedule: Adam, lr {lr}, halved from epoch {h}, batch {b}, flips and 90-degree "
        "rotations; one Ray Train worker with 2 CPUs.".format(
            lr=next(iter(res["models"].values()))["config"]["lr"],
            h=next(iter(res["models"].values()))["config"]["lr_halve_epoch"],
            b=next(iter(res["models"].values()))["config"]["batch_size"],
        ),
        "",
    ]
    if "depth" in res:
        lines += depth_lines(res["depth"], res["classes"])
    if "calibration_and_selection" in res:
        lines += ["", *selection_quality.lines(res["calibration_and_selection"])]
    return "\n".join(lines)


GOALS_SECTION = "## Training quality on the synthetic sky"


def goals_section(res: dict[str, Any], work: pathlib.Path) -> str:
    """The "## Training quality on the synthetic sky" section: the quality run against the
    goals of issue #5, every figure from ``res`` (the run that wrote "### Quality ...")."""
    import json

    models, classes = res["models"], res["classes"]
    if "iicnet" not in models or "depth" not in res:
        return ""
    doc = json.loads((work / "models" / "iicnet" / "report" / "report.json").read_text())
    full, bright = doc["test"], res["depth"]["iicnet"]["bright"]

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    def per_class(rep: dict[str, Any]) -> str:
        accs = [rep["per_class"][c]["accuracy"] for c in classes]
        return f"{met(min(accs) >= 0.95)}: " + " / ".join(f"{100 * a:.1f}" for a in accs)

    def auc(value: float) -> str:
        return f"{met(value >= 0.99)}: {value:.4f}"

    def ece(value: float) -> str:
        return f"{met(value <= 0.03)}: {value:.3f}"

    archs = [a for a in ("fusion", "iicnet", "colour") if a in models]
    full_acc = " / ".join(f"{100 * models[a]['accuracy']:.1f} %" for a in archs)
    bright_acc = " / ".join(f"{100 * res['depth'][a]['bright']['accuracy']:.1f} %" for a in archs)
    base = "; ".join(f"{name} {100 * b['accuracy']:.1f} %" for name, b in res["baselines"].items())
    lines = [
        GOALS_SECTION,
        "",
        f'Written by `bench/bench_training.py --quality` with the run of "{QUALITY_MARK[3:]}" '
        "above (same test split; calibration, T(W1), fitted on the validation split).",
        "",
        f"| goal | full depth ({full['n']:,} sources) | bright sample (W1 < {BRIGHT_W1:g}, "
        f"{bright['n']:,} sources) |",
        "| --- | --- | --- |",
        f"| IICnet per-class accuracy (1-vs-rest) >= 95 % | {per_class(full)} | "
        f"{per_class(bright)} |",
        f"| IICnet macro AUC >= 0.99 | {auc(full['macro']['auc'])} | "
        f"{auc(bright['macro']['auc'])} |",
        f"| ECE <= 0.03 after calibration | {ece(models['iicnet']['ece'])} | "
        f"{ece(bright['ece'])} |",
        f"| {' vs '.join(archs)} | {full_acc} | {bright_acc} |",
        "",
        f"Catalog-only baselines on the same test split (one fit each): {base}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print, optionally write RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="a training set (default: build a tiny one)")
    parser.add_argument("--rows", type=int, default=384, help="training rows per epoch (about)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per fit (the first untimed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repeats of all layouts")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--widths", type=int, nargs=6, default=None, help="IICnet widths (default: paper-sized)"
    )
    parser.add_argument("--write-results", action="store_true", help="update bench/RESULTS.md")
    q = parser.add_argument_group("quality run (--quality)")
    q.add_argument("--quality", action="store_true", help="the quality run instead of speed")
    q.add_argument("--workdir", default="/tmp/iic_quality", help="sky, training set, models")
    q.add_argument("--sky-sources", type=int, default=27_000)
    q.add_argument("--sky-seed", type=int, default=1)
    q.add_argument("--field-size", type=float, default=0.7)
    q.add_argument("--archs", nargs="+", default=["iicnet", "fusion", "colour"])
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--lr-halve-epoch", type=int, default=8)
    q.add_argument(
        "--reuse",
        action="store_true",
        help="keep models an earlier run trained with the same settings (named in the section)",
    )
    args = parser.parse_args(argv)
    if args.quality:
        res = quality(args)
        text = quality_section(res, pathlib.Path(args.workdir))
        print(text)
        goals = goals_section(res, pathlib.Path(args.workdir))
        print(goals)
        if args.write_results:
            replace_section(QUALITY_MARK, text)
            if goals:
                replace_section(GOALS_SECTION, goals)
        return 0
    res = run(args)
    text = section(res)
    print(text)
    if args.write_results:
        replace_section(SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
