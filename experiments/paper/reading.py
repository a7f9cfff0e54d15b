"""The reading of the paper study's results: which of the paper's claims hold on the synthetic sky.

Each claim is decided from the measured numbers; a difference smaller than twice the noise
(:func:`report.noise`, or the seeds' spread when larger) is called a tie, not a win.
"""

from __future__ import annotations

from typing import Any

from experiments.paper import report as R


def _verdict(delta: float, tol: float) -> str:
    if abs(delta) < tol:
        return "a tie within the noise"
    return "holds" if delta > 0 else "does not hold"


def _cost(part: dict[str, Any]) -> list[str]:
    rows = part["rows"]
    iic = rows["iicnet"]
    fewer_p = [R.NAMES[k] for k, r in rows.items() if k != "iicnet" and r["params"] < iic["params"]]
    fewer_m = [R.NAMES[k] for k, r in rows.items() if k != "iicnet" and r["macs"] < iic["macs"]]
    faster = [R.NAMES[k] for k, r in rows.items() if k != "iicnet" and r["rate"] > iic["rate"]]
    return [
        "- *Fewer parameters than every comparison network*: "
        + ("holds." if not fewer_p else f"does not hold: {', '.join(fewer_p)} have fewer.")
        + " *Fewer MACs*: "
        + ("holds." if not fewer_m else f"not against {', '.join(fewer_m)}.")
        + " *Faster inference* (CPU, pipeline settings): "
        + ("holds." if not faster else f"not against {', '.join(faster)}.")
    ]


def _compare(part: dict[str, Any]) -> list[str]:
    nets = part["nets"]
    live = {k: v for k, v in nets.items() if not R.stuck_seeds(v)}  # learnt in every seed
    if "iicnet" not in live or len(live) < 2:
        return [
            "- *IICnet is more accurate than the comparison networks* (Table 3): no verdict: "
            f"under this budget only {len(live)} of the {len(nets)} networks learnt in every "
            "seed" + ("" if "iicnet" in live else ", and IICnet was not one of them") + "."
        ]
    mean = {k: sum(r["accuracy"] for r in v) / len(v) for k, v in live.items()}
    spread = max(
        (max(r["accuracy"] for r in v) - min(r["accuracy"] for r in v)) for v in live.values()
    )
    n = nets["iicnet"][0]["n"]
    tol = max(2 * R.noise(mean["iicnet"], n), spread)
    order = sorted(mean, key=mean.get, reverse=True)
    rank = order.index("iicnet") + 1
    dead = [k for k, v in nets.items() if R.stuck(v)]
    part_dead = [k for k, v in nets.items() if R.stuck_seeds(v) and not R.stuck(v)]
    best_other = max((k for k in mean if k != "iicnet"), key=mean.get)
    d = mean["iicnet"] - mean[best_other]
    ties = [R.NAMES[k] for k in mean if k != "iicnet" and abs(mean[k] - mean["iicnet"]) < tol]
    return [
        f"- *IICnet is more accurate than the comparison networks* (Table 3): IICnet ranks "
        f"{rank} of the {len(mean)} networks that learnt in every seed "
        f"({100 * mean['iicnet']:.1f} %); against the best other, "
        f"{R.NAMES[best_other]} ({100 * mean[best_other]:.1f} %): {_verdict(d, tol)} "
        f"({100 * d:+.1f} points; noise threshold {100 * tol:.1f} points, the larger of twice "
        "the binomial error and the widest spread between seeds). "
        + (f"Within the noise of IICnet: {', '.join(ties)}." if ties else "")
        + (
            f" At chance in every seed (no verdict): {', '.join(R.NAMES[k] for k in dead)}."
            if dead
            else ""
        )
        + (
            f" At chance in some seeds (left out of the ranking): "
            f"{', '.join(R.NAMES[k] for k in part_dead)}."
            if part_dead
            else ""
        )
        + "".join(
            _retried(k, tries, mean["iicnet"], tol) for k, tries in part.get("retries", {}).items()
        )
    ]


def _retried(net: str, tries: dict[str, Any], iic: float, tol: float) -> str:
    """What the second chance of a stuck network showed, against IICnet's mean accuracy."""
    learnt = {c: r for c, r in tries.items() if "skipped" not in r and not R.stuck([r])}
    if not learnt:
        return f" {R.NAMES[net]} did not learn with either change either."
    change, r = max(learnt.items(), key=lambda kv: kv[1]["accuracy"])
    d = iic - r["accuracy"]
    return (
        f" {R.NAMES[net]} learns with {change} ({100 * r['accuracy']:.1f} %, one seed): "
        f"against it, {_verdict(d, tol)} ({100 * d:+.1f} points), though that run had a "
        "schedule IICnet did not."
    )


def _spread(row: dict[str, Any]) -> float:
    accs = row.get("accs", [row["accuracy"]])
    return max(accs) - min(accs)


def _ablate(part: dict[str, Any]) -> list[str]:
    p = part
    base = p["base"]["accuracy"]
    rows = [p["base"], *R.ablate_rows(p)]
    tol = max(2 * R.noise(base, p["base"]["n"]), *(_spread(r) for r in rows))
    v = p["variants"]
    out = []
    if "stem3x3" in v:
        d = base - v["stem3x3"]["accuracy"]
        out.append(f"- *The 5x5 stem beats a 3x3 one*: {_verdict(d, tol)} ({100 * d:+.1f} points).")
    claims = (
        ("no_rfb", "the RFB"),
        ("no_cbam1", "CBAM 1"),
        ("no_cbam2", "CBAM 2"),
        ("no_cbam", "the CBAMs"),
        ("no_rfb_no_cbam", "RFB and CBAMs together"),
    )
    for key, claim in claims:
        if key not in v:
            continue
        d = base - v[key]["accuracy"]
        out.append(f"- *Keeping {claim} helps*: {_verdict(d, tol)} ({100 * d:+.1f} points).")
    if p.get("bands4"):
        d4 = p["bands4"]["accuracy"] - base
        out.append(
            f"- *A 4th band (W4) helps*: {_verdict(d4, tol)} ({100 * d4:+.1f} points). The "
            "paper kept 3 bands: W4 is shallow, most sources are undetected in it."
        )
    sizes = {int(s): r["accuracy"] for s, r in p["sizes"].items()}
    if len(sizes) > 1:
        best = max(sizes, key=sizes.get)
        d80 = sizes[80] - max(a for s, a in sizes.items() if s != 80)
        out.append(
            f"- *80 px is the best input size* (of {sorted(sizes)}): best measured {best} px "
            f"({100 * sizes[best]:.1f} %, 80 px {100 * sizes[80]:.1f} %): {_verdict(d80, tol)}. "
            + _beyond_noise(sizes, tol)
            + "Resampling adds no information, so on this sky size mostly moves capacity and "
            "cost (MACs grow as size^2)."
        )
    return out


def _beyond_noise(sizes: dict[int, float], tol: float) -> str:
    """The sizes whose accuracy differs from 80 px's by more than the noise, as a sentence."""
    worse = [s for s in sorted(sizes) if sizes[80] - sizes[s] >= tol]
    better = [s for s in sorted(sizes) if sizes[s] - sizes[80] >= tol]
    said = [f"worse than 80 px beyond the noise: {worse} px" if worse else "",
            f"better than 80 px beyond the noise: {better} px" if better else ""]  # fmt: skip
    text = "; ".join(x for x in said if x)
    return f"{text[0].upper()}{text[1:]}. " if text else "No size differs from 80 px beyond it. "


def reading(parts: dict[str, Any]) -> list[str]:
    """The "Reading" sub-section (only for the parts that have run)."""
    lines = ["### Reading", ""]
    for name, fn in (("cost", _cost), ("compare", _compare), ("ablate", _ablate)):
        if name in parts:
            lines += fn(parts[name])
    lines += [
        "",
        "What this does and does not say: the cost side (parameters, MACs, CPU speed) is a "
        "property of the networks and carries over to the real sky as it is. The accuracy "
        "side is measured on a synthetic sky whose classes differ by what its renderer puts "
        "in (profiles, colours, depth), with a reduced budget on 2 shared cores (narrow "
        "networks, few epochs, a few thousand rows): the ranking says which designs learn "
        "this sky's cues fastest at this size, not how they rank on SDSS-labelled AllWISE "
        "stamps, where the paper's differences (about a point) are smaller than this "
        "benchmark's noise. Real-sky claims need the `paper` budget on real labels.",
        "",
    ]
    return lines
