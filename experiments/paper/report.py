"""The RESULTS.md section of the paper study, rendered from the kept results (``paper.json``).

Every figure comes from the run's JSON; the reading at the end is worded from the numbers
(which claim holds is decided by comparing measured values, with the test split's binomial
error and, where there are several seeds, their spread as the noise).
"""

from __future__ import annotations

import math
import os
import platform
from typing import Any

SECTION = "## Paper experiments (experiments/paper)"
CLASSES = ("galaxy", "quasar", "star")
NAMES = {
    "iicnet": "IICnet",
    "vgg16": "VGG16",
    "googlenet": "GoogLeNet",
    "resnet34": "ResNet34",
    "mobilenet_v1": "MobileNet v1",
    "efficientnet_v2_s": "EfficientNetV2-S",
    "repvgg_a0": "RepVGG-A0",
}
VARIANT_NAMES = {
    "stem3x3": "3x3 stem (instead of 5x5)",
    "no_rfb": "no RFB (1x1 conv + BN in its place)",
    "no_cbam1": "no CBAM 1",
    "no_cbam2": "no CBAM 2",
    "no_cbam": "no CBAM (neither)",
    "no_rfb_no_cbam": "no RFB, no CBAM",
}


def _m(x: float | None) -> str:
    return "-" if x is None else f"{x / 1e6:.2f} M"


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def noise(acc: float, n: int) -> float:
    """Standard error of the difference of two accuracies measured on n test rows."""
    return math.sqrt(2 * acc * (1 - acc) / max(n, 1))


def _head(part: dict[str, Any]) -> str:
    return (
        f"Measured {part['when']}, {part['wall_seconds'] / 60:.1f} min, on {os.cpu_count()} "
        f"shared cores ({platform.machine()}, {platform.processor() or 'cpu'}), load average "
        f"(1/5/15 min) {part['load_before']} before and {part['load_after']} after. "
        f"Command: `{part['command']}`; {part.get('threads', '?')} torch thread(s)."
    )


def cost_lines(part: dict[str, Any]) -> list[str]:
    rows = part["rows"]
    base = rows["iicnet"]["rate"]
    lines = [
        "### Table 3, cost side: size and CPU speed (full width, 3x80x80 in, 3 classes)",
        "",
        _head(part),
        "",
        f"MACs: `torch.utils.flop_counter` FLOPs / 2 for one 1x3x80x80 image, as "
        f"`iic_survey.model.size.count_macs` (which gives IICnet "
        f"{rows['iicnet']['count_macs'] / 1e6:.2f} M; this script's counter "
        f"{rows['iicnet']['macs'] / 1e6:.2f} M). Speed: {part['threads']} torch thread, batch "
        f"{part['batch']}, fp32, BN folded, channels-last, inference mode (the pipeline's CPU "
        f"actor settings), all networks interleaved in {part['rounds']} rounds, best round. "
        "Paper columns: the paper's Table 3 where this repository records it (IICnet only; the "
        "comparison networks' entries are not recorded here and are not typed from memory).",
        "",
        "| network | params (as trained) | params (inference form) | MACs | paper params | "
        "paper MACs | CPU images/s | vs IICnet |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in rows.items():
        pp, pm = r["paper"]
        lines.append(
            f"| {NAMES[name]} | {_m(r['params'])} | {_m(r['params_inference'])} | "
            f"{_m(r['macs'])} | {_m(pp)} | {_m(pm)} | {r['rate']:.1f} | {r['rate'] / base:.2f}x |"
        )
    return [*lines, ""]


def _acc_row(name: str, runs: list[dict[str, Any]]) -> str:
    accs = [r["accuracy"] for r in runs]
    mean = sum(accs) / len(accs)
    pc = " / ".join(
        _pct(sum(r["per_class"][c]["accuracy"] for r in runs) / len(runs)) for c in CLASSES
    )
    rec = " / ".join(
        _pct(sum(r["per_class"][c]["recall"] for r in runs) / len(runs)) for c in CLASSES
    )
    auc = sum(r["macro_auc"] for r in runs) / len(runs)
    secs = sum(r["train_seconds"] for r in runs) / len(runs)
    each = ", ".join(_pct(a) for a in accs)
    loss = " / ".join(f"{r['losses'][-1]:.3f}" for r in runs)
    return f"| {name} | {_pct(mean)} ({each}) | {pc} | {rec} | {auc:.4f} | {loss} | {secs:.0f} s |"


CHANCE_LOSS = math.log(3)
"""Cross-entropy of a constant 1/3 guess: a final training loss near it means nothing learnt."""


def stuck_seeds(runs: list[dict[str, Any]]) -> list[int]:
    """The seeds whose last training loss is within 5 % of chance (the network did not learn)."""
    return [r["seed"] for r in runs if r["losses"][-1] > 0.95 * CHANCE_LOSS]


def stuck(runs: list[dict[str, Any]]) -> bool:
    """Every seed of ``runs`` stayed at chance."""
    return len(stuck_seeds(runs)) == len(runs)


def _train_total(rows: list[dict[str, Any]]) -> str:
    """The training time of a part's rows (a row: one run, or the mean of ``seeds`` runs), kept
    runs included: the head's wall time counts only the last invocation."""
    n = sum(len(r.get("seeds", [r["seed"]])) for r in rows)
    secs = sum(r["train_seconds"] * len(r.get("seeds", [r["seed"]])) for r in rows)
    return f"{n} training runs, {secs / 60:.1f} min of training in all"


def ablate_rows(part: dict[str, Any]) -> list[dict[str, Any]]:
    """The ablate part's changed configurations (variants, 4 bands, sizes other than 80 px),
    each a row of :func:`experiments.paper.__main__._mean_run`; the baseline is ``part["base"]``."""
    rows = [*part["variants"].values(), *([part["bands4"]] if part.get("bands4") else [])]
    return rows + [r for s, r in part["sizes"].items() if int(s) != 80]


def compare_lines(part: dict[str, Any]) -> list[str]:
    nets = part["nets"]
    n = next(iter(nets.values()))[0]["n"]
    lines = [
        "### Table 3, accuracy side / Fig. 15a: the networks on the same split and budget",
        "",
        _head(part),
        "",
        f"Budget: {part['budget']}. Test split: {n} stamps. Accuracy is the mean over seeds "
        "(each seed in brackets); per-class accuracy is the paper's one-vs-rest accuracy, recall "
        "the fraction of the class found, macro AUC one-vs-rest; means over seeds. Train time "
        "is per seed on the shared cores; the last epoch's training loss is given per seed "
        f"(chance: ln 3 = {CHANCE_LOSS:.3f}). "
        + _train_total([r for v in nets.values() for r in v] + _retry_runs(part))
        + ".",
        "",
        "| network | accuracy (per seed) | acc. galaxy / quasar / star | recall galaxy / quasar "
        "/ star | macro AUC | last train loss | train time |",
        "| --- | --- | --- | --- | ---: | --- | ---: |",
    ]
    lines += [_acc_row(NAMES[k], v) for k, v in nets.items()]
    dead = [f"{NAMES[k]} (seeds {stuck_seeds(v)})" for k, v in nets.items() if stuck_seeds(v)]
    if dead:
        lines += [
            "",
            f"**Did not learn under this budget** (last training loss within 5 % of chance): "
            f"{', '.join(dead)}: same schedule as every other network, so such a seed says that "
            "this shared schedule does not suit the network, not what its design could reach.",
        ]
    lines += retry_lines(part.get("retries", {}))
    return [*lines, ""]


def _retry_runs(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for t in part.get("retries", {}).values() for r in t.values() if "skipped" not in r]


def retry_lines(retries: dict[str, dict[str, Any]]) -> list[str]:
    """The second-chance table: each stuck network with one change to the shared schedule."""
    if not retries:
        return []
    lines = [
        "",
        "Second chance, the first seed that stayed at chance, the shared schedule changed one "
        "way at a time (the learning rate divided by 10; every channel at full width where that "
        "fits the CPU budget). These rows are not in the ranking, which stays on the shared "
        "budget.",
        "",
        "| network | seed | change | accuracy | macro AUC | last train loss | train time |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for net, tries in retries.items():
        for change, r in tries.items():
            if "skipped" in r:
                lines.append(f"| {NAMES[net]} | | {change} | not run: {r['skipped']} | | | |")
                continue
            lines.append(
                f"| {NAMES[net]} | {r['seed']} | {change} | {_pct(r['accuracy'])} | "
                f"{r['macro_auc']:.4f} | {r['losses'][-1]:.3f} | {r['train_seconds']:.0f} s |"
            )
    return lines


def ablate_lines(part: dict[str, Any]) -> list[str]:
    base = part["base"]
    n = base["n"]
    se = noise(base["accuracy"], n)
    lines = [
        "### Ablations (Figs. 8, 12, 15b): IICnet, one change at a time",
        "",
        _head(part),
        "",
        f"Budget: {part['budget']}; every row is the mean over seeds "
        f"{base.get('seeds', [base['seed']])} (each seed's accuracy in brackets). The standard "
        f"error of a difference of two accuracies on {n} test stamps is about "
        f"{100 * se:.1f} points (binomial, one seed); the reading calls a difference noise "
        f"under ~{200 * se:.1f} points or under the largest spread between the seeds of one "
        "row, whichever is larger. "
        "Input size: the 80x80 stamps resampled bilinearly to the size (same 50 arcsec field, "
        "other pixel counts). 4 bands: W4 stamps cut from the synthetic sky's W4 Atlas tiles at "
        "the same positions and stretched by the pipeline's transform (softening fitted on the "
        "training stamps), added as a fourth input channel. "
        + _train_total(ablate_rows(part))
        + " (the baseline's are the compare part's).",
        "",
        "| change | accuracy (per seed) | vs baseline (points) | macro AUC | train time |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]

    def row(label: str, r: dict[str, Any]) -> str:
        d = 100 * (r["accuracy"] - base["accuracy"])
        each = ", ".join(_pct(a) for a in r.get("accs", [r["accuracy"]]))
        delta = "-" if r is base else f"{d:+.1f}"
        return (
            f"| {label} | {_pct(r['accuracy'])} ({each}) | {delta} | {r['macro_auc']:.4f} | "
            f"{r['train_seconds']:.0f} s |"
        )

    lines.append(row("baseline (5x5 stem, RFB, 2 CBAMs, 80 px, 3 bands)", base))

    lines += [row(VARIANT_NAMES[k], r) for k, r in part["variants"].items()]
    if part.get("bands4"):
        lines.append(row("4 bands (W1-W4)", part["bands4"]))
    sizes = sorted((int(s), r) for s, r in part["sizes"].items())
    lines += [row(f"input {s} px", r) for s, r in sizes if s != 80]
    if not part.get("complete", True):
        lines += ["", "**This part was interrupted: the rows above are the runs it finished.**"]
    return [*lines, ""]


def _desc(d: dict[str, Any]) -> str:
    true = "/".join(str(d["true"][c]) for c in CLASSES)
    pred = "/".join(str(d["pred"][c]) for c in CLASSES)
    return (
        f"| {d['n']} | {true} | {pred} | {d['w1_median']:.2f} | {_pct(d['w1_faint_frac'])} | "
        f"{d['no_centre']} |"
    )


def errors_lines(part: dict[str, Any]) -> list[str]:
    lines = [
        "### Error analysis (Figs. 11, 19-21, Table 4)",
        "",
        _head(part),
        "",
        f"IICnet of the compare table (seed 0, {part['budget']}): {part['n_wrong']} of "
        f"{part['n_test']} test stamps misclassified, clustered with K-means (k = "
        f"{len(part['clusters'])}, k-means++ start, seeded, on the standardised penultimate "
        "features). Counts are galaxy/quasar/star; W1 is the catalog magnitude; 'no centre' "
        "counts the NO_CENTRAL_SOURCE flag (the paper's fourth class, empty centres).",
        "",
        "| group | stamps | true | predicted | median W1 | W1 >= 16 | no centre | PNG |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | --- |",
    ]
    for j, c in enumerate(part["clusters"]):
        lines.append(f"| K-means {j} " + _desc(c) + f" `{c['png']}` |")
    lc = part["low_conf"]
    lines.append(f"| correct, p_max < {lc['threshold']:g} " + _desc(lc) + f" `{lc['png']}` |")
    lines.append("| all test stamps " + _desc(part["all"]) + " - |")
    lines += [
        "",
        f"Feature maps after the stem, the RFB and each CBAM for one stamp per class (mean over "
        f"channels and the most active channel): `{part['feature_maps']}`. The PNGs are "
        "generated data under the work directory, not committed; rerun `--part errors` to "
        "draw them.",
        "",
    ]
    return lines


def section(state: dict[str, Any]) -> str:
    """The whole section from the kept results; parts not run yet are said to be missing."""
    parts = state.get("parts", {})
    data = state.get("data", {})
    lines = [SECTION, ""]
    if data:
        sky = data["sky"]
        n = {s: sum(c.values()) for s, c in data["counts"].items()}
        lines += [
            f"Data: `SkyConfig(seed={sky['seed']}, n_sources={sky['n_sources']:,}, "
            f"field_size_deg={sky['field_size_deg']}, bands={tuple(sky['bands'])})` (default "
            f"fields), its training set balanced to the rarest class: {n['train']:,} train / "
            f"{n['val']:,} val / {n['test']:,} test (8:1:1 by hash of cntr), built once into "
            "the work directory and reused.",
            "",
        ]
    render = {
        "cost": cost_lines,
        "compare": compare_lines,
        "ablate": ablate_lines,
        "errors": errors_lines,
    }
    for name, fn in render.items():
        if name in parts:
            lines += fn(parts[name])
        else:
            lines += [f"Part `{name}` has not been run yet.", ""]
    from experiments.paper import reading

    lines += reading.reading(parts)
    return "\n".join(lines)
