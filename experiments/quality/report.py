"""The quality study's RESULTS sections: the models against the catalog baselines, by depth, and
the goals (accuracy, AUC, calibration) as met or not."""

from __future__ import annotations

import datetime as dt
import pathlib
from typing import Any

from experiments.quality import selection
from experiments.quality.study import BRIGHT_W1

QUALITY_MARK = "## Quality on the synthetic sky (experiments/quality)"
"""The heading of the study's main section."""


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
        lines += ["", *selection.lines(res["calibration_and_selection"])]
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
        f'Written by `python -m experiments.quality` with the run of "{QUALITY_MARK[3:]}" '
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
