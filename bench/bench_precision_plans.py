"""Benchmark of the precision plans a run may use: fp32, full bf16 and the mixed plan bf16-late.

The mixed plan (:data:`iic_survey.model.precision.MIXED`) keeps the stem, RFB, conv2 and conv3
in fp32 and runs conv4, conv5 and the last CBAM under bf16 autocast; the gate tries it when full
bf16 fails. Measured in one run, on this machine's CPU:

1. **Speed**: images/s of the paper-sized IICnet (untrained weights: the speed is the same) in
   each plan, through :class:`iic_survey.model.inference.Predictor` as the inference actor runs
   it (BN folded, channels-last), one thread, batch 16, on real images of the demo sky; the
   plans alternate round by round and each keeps its best round (CPU time).
2. **Agreement** of each reduced plan with fp32 on a *trained* model (``--model``, default the
   demo model under /tmp/base_demo), over every classifiable source of its sky, through the
   inference actor (:class:`iic_survey.survey.classify.Classify`, cut stamps, RGB in the
   actor), and the gate's verdict on the first 256 rows of the biggest pixel, as a run makes it.

Run from the repository root::

    .venv/bin/python bench/bench_precision_plans.py                 # prints the results
    .venv/bin/python bench/bench_precision_plans.py --write-results # also updates RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time
from typing import Any

import numpy as np
from results_md import write_section

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SECTION = "## Precision plans: fp32, bf16, bf16-late (bench/bench_precision_plans.py)"
PLANS = ("fp32", "bf16", "bf16-late")
logger = logging.getLogger("bench_precision_plans")


def _cpu() -> str:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def _images(sky: Any, n: int) -> dict[str, np.ndarray]:
    """The first ``n`` rows of the sky's biggest pixel, as the CPU stage makes them."""
    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.stamps.maker import StampMaker

    cat = open_catalog(sky.catalog_url)
    pixel = max((int(p) for p in sky.pixels), key=lambda p: cat.count(p, 5))
    rows = cat.read_pixel(pixel, 5, columns=PIPELINE_COLUMNS).head(n)
    rows["_pixel"], rows["_row"], rows["_chunk"] = pixel, range(len(rows)), 0
    return dict(StampMaker.from_spec(sky.images_url)(rows))


def speed(made: dict[str, np.ndarray], rounds: int, batch: int) -> dict[str, float]:
    """Images/s of the paper-sized IICnet in each plan, best of ``rounds`` alternating rounds."""
    import torch

    from iic_survey.model.config import ModelConfig
    from iic_survey.model.inference import Predictor
    from iic_survey.model.network import build_model, optimize_for_inference

    torch.set_num_threads(1)
    net = optimize_for_inference(build_model(ModelConfig(), seed=0).eval())
    fp32 = Predictor(net, torch.device("cpu"), None, batch)
    preds = {p: fp32.with_precision(p) for p in PLANS}
    x, f = made["image"], made["features"]
    for pred in preds.values():  # warm-up: oneDNN picks its kernels on the first call
        pred(x[:batch], f[:batch])
    best = dict.fromkeys(PLANS, float("inf"))
    for r in range(rounds):
        for name, pred in preds.items():
            c0 = time.process_time()
            pred(x, f)
            best[name] = min(best[name], time.process_time() - c0)
        logger.info(
            "speed round %d/%d: %s", r + 1, rounds, {k: len(x) / v for k, v in best.items()}
        )
    return {name: len(x) / s for name, s in best.items()}


def agreement(sky: Any, model_dir: str) -> dict[str, Any]:
    """Each reduced plan vs fp32 over every classifiable source of ``sky``, through the actor."""
    import torch

    from iic_survey.core.flags import UNCLASSIFIABLE
    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.model.precision import compare
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey.classify import Classify
    from iic_survey.survey.config import CPU_MODEL_BATCH

    torch.set_num_threads(1)
    cat = open_catalog(sky.catalog_url)
    cutter = StampCutter.from_spec(sky.images_url)
    actors = {p: Classify(model_dir, "cpu", CPU_MODEL_BATCH, None, 1, p) for p in PLANS}
    logits: dict[str, list[np.ndarray]] = {p: [] for p in PLANS}
    for pixel in sky.pixels:
        cut = cutter(cat.read_pixel(int(pixel), 5, columns=PIPELINE_COLUMNS))
        ok = (np.asarray(cut["quality_flags"]) & int(UNCLASSIFIABLE)) == 0
        for p, actor in actors.items():
            logits[p].append(actor.logits(cut)[0][ok])
    ref = np.concatenate(logits["fp32"])
    temperature = actors["fp32"].scoring.calibration.temperature
    out: dict[str, Any] = {"n": len(ref), "temperature": temperature}
    for p in PLANS[1:]:
        agree, diff = compare(ref, np.concatenate(logits[p]), temperature)
        out[p] = {"agreement": agree, "max_prob_diff": diff}
    return out


def gate(sky: Any, model_dir: str) -> dict[str, Any]:
    """The gate's verdict for ``auto`` on the first 256 rows of the biggest pixel (cut stamps)."""
    from iic_survey.inputs.allwise_schema import PIPELINE_COLUMNS
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.model.precision import GATE_STAMPS
    from iic_survey.stamps.split import StampCutter
    from iic_survey.survey.classify import gate_precision

    cat = open_catalog(sky.catalog_url)
    pixel = max((int(p) for p in sky.pixels), key=lambda p: cat.count(p, 5))
    rows = cat.read_pixel(pixel, 5, columns=PIPELINE_COLUMNS).head(GATE_STAMPS)
    rows["_pixel"], rows["_row"], rows["_chunk"] = pixel, range(len(rows)), 0
    cut = dict(StampCutter.from_spec(sky.images_url)(rows))
    return gate_precision(model_dir, "cpu", "auto", cut, 1)


def report(res: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    s = res["speed"]
    lines = [
        SECTION,
        "",
        f"Run {res['date']} on {res['cpu']} ({res['nproc']} logical CPUs, shared with other "
        f"work; load average before {res['load_before']}, after {res['load_after']}).",
        "",
        f"**Speed**, paper-sized IICnet (untrained), `Predictor` as the actor runs it, one "
        f"thread, batch {res['batch']}, {res['n_images']} real images of the demo sky, plans "
        f"alternating, best of {res['rounds']} rounds (CPU time):",
        "",
        "| plan | images/s | vs fp32 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p} | {s[p]:,.0f} | {s[p] / s['fp32']:.2f}x |" for p in PLANS]
    if "agreement" not in res:
        lines += ["", f"**Agreement**: not measured ({res['no_model']})."]
        return "\n".join(lines) + "\n"
    a, g = res["agreement"], res["gate"]
    lines += [
        "",
        f"**Agreement with fp32** of the trained model `{res['model']}` over the "
        f"{a['n']:,} classifiable sources of its sky (`Classify` on cut stamps, T = "
        f"{a['temperature']:.3g}); the gate needs >= 99.5 % and <= 0.01:",
        "",
        "| plan | class agreement | largest probability difference |",
        "|---|---:|---:|",
    ]
    lines += [f"| {p} | {a[p]['agreement']:.2%} | {a[p]['max_prob_diff']:.3g} |" for p in PLANS[1:]]
    tried = ", ".join(
        f"{t['precision']} {'passed' if t['passed'] else 'failed'} "
        f"({t['agreement']:.2%}, {t['max_prob_diff']:.2g})"
        for t in g.get("tried", ())
        if t.get("agreement") is not None
    )
    lines += [
        "",
        f"**The gate** (`--precision auto`, first {g['n_stamps']} rows of the biggest pixel): "
        f"uses **{g['used']}**; tried {tried or 'nothing'}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from iic_survey.synthetic import sky as synthetic

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="/tmp/base_demo/model", help="a trained model directory")
    ap.add_argument("--sky", default="/tmp/base_demo/sky", help="its sky (sky.json)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sky = synthetic.SkyManifest.load(args.sky)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": _cpu(),
        "nproc": os.cpu_count(),
        "load_before": _load(),
        "rounds": args.rounds,
        "batch": args.batch,
    }
    made = _images(sky, args.images)
    res["n_images"] = len(made["image"])
    res["speed"] = speed(made, args.rounds, args.batch)
    if (pathlib.Path(args.model) / "model.json").is_file():
        res["model"] = args.model
        res["agreement"] = agreement(sky, args.model)
        res["gate"] = gate(sky, args.model)
    else:
        res["no_model"] = f"no trained model at {args.model}; none was trained for this"
    res["load_after"] = _load()
    print(json.dumps(res, indent=1, default=str))
    text = report(res)
    print(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
