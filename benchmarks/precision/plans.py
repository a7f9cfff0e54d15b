"""Benchmark of the precision plans on this CPU, its own ISA and forced down to AVX2.

Measured in one run (ratios within one process, plans alternating round by round):

1. **Speed**: images/s of the paper-sized IICnet (untrained weights: the speed is the same) in
   each plan, one thread, at the CPU actor's fixed batch (``CPU_MODEL_BATCH``), on real images
   of the demo sky, each plan keeping its best round (CPU time): eager fp32 as the actor runs it
   (:class:`~iic_survey.model.inference.Predictor`, BN folded, channels-last), bf16, the mixed
   plan bf16-late, int8 (:mod:`iic_survey.model.quantized`), and two that are not plans, for the
   record: ONNX Runtime on the exported fp32 model (when ``onnxruntime`` is installed) and
   ``torch.compile`` (Inductor, freezing, static shape). Twice: in a process on this CPU's own
   ISA, and in one with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
   FBGEMM_ENABLE_INSTRUCTIONS=AVX2`` (an AVX2-only CPU: no AVX-512, no VNNI, no native bf16).
2. **The gate** of the trained demo model (``--model``), ``--precision auto`` and ``int8``,
   through :func:`~iic_survey.survey.classify.gate_precision` as a run calls it (its gate set,
   the run's scoring, each plan timed), in both processes.

Run from the repository root::

    .venv/bin/python -m benchmarks.precision plans                 # prints the results
    .venv/bin/python -m benchmarks.precision plans --write-results # also benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.common import cpu_name, load
from benchmarks.results import write_section

REPO = pathlib.Path(__file__).resolve().parents[2]
DEMO_MODEL = str(REPO / "runs" / "demo" / "model")
"""The model ``scripts/demo.sh`` trains (its default ``$IIC_SURVEY_HOME``)."""
DEMO_SKY = str(REPO / "runs" / "demo" / "sky")
SECTION = "## Precision plans: fp32, bf16, bf16-late, int8 (benchmarks/precision plans)"
PLANS = ("fp32", "bf16", "bf16-late", "int8")
EXTRA = ("onnx-fp32", "compile-fp32")
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip
logger = logging.getLogger(__name__)


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


def _onnx(net: Any, x: Any, f: Any, batch: int) -> Any:
    """fp32 through ONNX Runtime (one thread), as a function of a batch; raises ImportError
    without onnxruntime."""
    import onnxruntime as ort
    import torch

    class Both(torch.nn.Module):
        def __init__(self, m: Any) -> None:
            super().__init__()
            self.m = m

        def forward(self, images: Any, features: Any) -> Any:
            e = self.m.embed(images, features)
            return e, self.m.fc2(e)

    path = pathlib.Path(tempfile.gettempdir()) / f"iic_bench_{os.getpid()}.onnx"
    names = {"input_names": ["images", "features"], "output_names": ["emb", "logits"]}
    torch.onnx.export(Both(net).eval(), (x[:batch], f[:batch]), str(path), dynamo=False, **names)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    path.unlink()
    names = [i.name for i in sess.get_inputs()]  # the image-only model drops "features"

    def run(a: Any, b: Any) -> Any:
        feed = {"images": a.numpy(), "features": b.numpy()}
        return sess.run(None, {k: feed[k] for k in names})

    return run


def _runners(made: dict[str, np.ndarray], batch: int) -> tuple[dict[str, Any], dict[str, str]]:
    """A function per plan that runs one fixed-shape batch; (runners, why each extra is absent)."""
    import torch

    from iic_survey.model.config import ModelConfig
    from iic_survey.model.inference import Predictor
    from iic_survey.model.network import build_model, optimize_for_inference
    from iic_survey.model.precision import plan
    from iic_survey.model.quantized import quantize_int8

    net = optimize_for_inference(build_model(ModelConfig(), seed=0).eval())
    dev = torch.device("cpu")
    runners: dict[str, Any] = {}
    for name in PLANS:
        p = plan(name)
        model = quantize_int8(net, made["image"][:256], 16) if p.int8 else net
        pred = Predictor(model, dev, p.dtype, batch, p.modules)
        runners[name] = lambda a, b, pred=pred: pred.on_device(a, b)
    x, f = torch.from_numpy(made["image"]), torch.from_numpy(made["features"])
    missing: dict[str, str] = {}
    for name, build in (("onnx-fp32", lambda: _onnx(net, x, f, batch)),
                        ("compile-fp32", lambda: _compiled(net, x, f, batch))):  # fmt: skip
        t0 = time.perf_counter()
        try:
            runners[name] = build()
            logger.info("%s built in %.1f s", name, time.perf_counter() - t0)
        except Exception as exc:  # a bench records why, and goes on
            missing[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
    return runners, missing


def _compiled(net: Any, x: Any, f: Any, batch: int) -> Any:
    """fp32 ``torch.compile`` (Inductor, freezing, static shape) of embed + fc2, warmed up."""
    import torch

    def both(a: Any, b: Any) -> Any:
        e = net.embed(a, b)
        return e, net.fc2(e)

    fn = torch.compile(both, dynamic=False, options={"freezing": True})
    with torch.inference_mode():
        fn(x[:batch], f[:batch])
    return lambda a, b: fn(a, b)


def speed(made: dict[str, np.ndarray], rounds: int, batch: int) -> dict[str, Any]:
    """Images/s of each plan, best of ``rounds`` alternating rounds, in this process."""
    import torch

    from iic_survey.core.heap import retain_freed_memory

    torch.set_num_threads(1)
    retain_freed_memory()  # the C heap as an inference actor keeps it (else fp32 at random -20 %)
    runners, missing = _runners(made, batch)
    x, f = torch.from_numpy(made["image"]), torch.from_numpy(made["features"])
    n = len(x) - len(x) % batch
    best = dict.fromkeys(runners, float("inf"))
    with torch.inference_mode():
        for run in runners.values():
            run(x[:batch], f[:batch])
        for _ in range(rounds):
            for name, run in runners.items():
                c0 = time.process_time()
                for i in range(0, n, batch):
                    run(x[i : i + batch], f[i : i + batch])
                best[name] = min(best[name], time.process_time() - c0)
    return {"images_s": {k: n / v for k, v in best.items()}, "missing": missing,
            "capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def gates(model_dir: str) -> dict[str, Any]:
    """The gate's verdicts for ``auto`` and ``int8`` on the model's gate set, in this process."""
    from iic_survey.survey.classify import gate_precision

    return {req: gate_precision(model_dir, "cpu", req, {}, 1) for req in ("auto", "int8")}


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One process's measurements (its ISA is what its environment forces)."""
    from iic_survey.synthetic import skyfiles

    made = _images(skyfiles.SkyManifest.load(args.sky), args.images)
    out: dict[str, Any] = {"load_before": load(), "n_images": len(made["image"])}
    out.update(speed(made, args.rounds, args.batch))
    if (pathlib.Path(args.model) / "model.json").is_file():
        out["gate"] = gates(args.model)
    out["load_after"] = load()
    return out


def _gate_line(isa: str, req: str, g: dict[str, Any]) -> str:
    tried = "; ".join(
        f"{t['precision']}: {t['speed']:.2f}x" if t.get("speed") is not None else t["precision"]
        for t in g["tried"]
    )
    bound = f"{g['lower_bound']:.2%}" if g.get("lower_bound") is not None else "-"
    agree = f"{g['agreement']:.2%}" if g.get("agreement") is not None else "-"
    diff = f"{g['max_prob_diff']:.3g}" if g.get("max_prob_diff") is not None else "-"
    return (f"| {isa} | {req} | **{g['used']}** | {g['n_stamps']:,} | {agree} | {bound} | "
            f"{diff} | {tried} |")  # fmt: skip


def report(res: dict[str, Any]) -> str:
    """The RESULTS.md section."""
    runs = res["runs"]
    lines = [
        SECTION,
        "",
        f"Run {res['date']} at commit {res['commit']} on {res['cpu']} ({res['nproc']} logical "
        f"CPUs shared with other work; ISA {runs['native']['capability']} natively, flags "
        f"{res['flags']}). Load average (1/5/15 min) of each process: "
        + "; ".join(
            f"{k}: {v['load_before']} before, {v['load_after']} after" for k, v in runs.items()
        )
        + ".",
        "",
        f"**Speed**, paper-sized IICnet (untrained), one thread, batch {res['batch']} (the CPU "
        f"actor's fixed shape), {runs['native']['n_images']} real images of the demo sky, plans "
        f"alternating, best of {res['rounds']} rounds (CPU time); `avx2` is a second process with "
        "`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2`:",
        "",
        "| plan | " + " | ".join(f"{k}: images/s | {k}: vs fp32" for k in runs) + " |",
        "|---|" + "---:|---:|" * len(runs),
    ]
    for name in (*PLANS, *EXTRA):
        cells = []
        for r in runs.values():
            v, base = r["images_s"].get(name), r["images_s"]["fp32"]
            cells += [f"{v:,.0f}", f"{v / base:.2f}x"] if v else ["-", "-"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for k, r in runs.items():
        for name, why in r["missing"].items():
            lines.append(f"\n{name} not measured ({k}): {why}")
    if "gate" not in runs["native"]:
        return "\n".join([*lines, "", f"**The gate**: not measured ({res['no_model']})."]) + "\n"
    lines += [
        "",
        f"**The gate** on the trained demo model `{res['model']}` (its gate set: held-out "
        "stamps; rows scored as the run scores them, T(W1), outlier and subset rules; agreement: "
        "rows whose class, outlier flag and subset are unchanged; each candidate timed here "
        "against fp32; pass: 95 % lower bound of the agreement >= 99.5 % and probabilities "
        "within 0.01):",
        "",
        "| ISA | --precision | uses | rows | agreement | 95 % bound | largest p diff | "
        "speed vs fp32 measured by the gate |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    lines += [_gate_line(k, q, g) for k, r in runs.items() for q, g in r["gate"].items()]
    return "\n".join(lines) + "\n"


def _flags() -> str:
    text = pathlib.Path("/proc/cpuinfo").read_text()
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    keep = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni")
    return ", ".join(f for f in keep if f in flags)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEMO_MODEL, help="a trained model directory (the demo's)")
    ap.add_argument("--sky", default=DEMO_SKY, help="its sky (sky.json; the demo's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--from-json", help="render the section from a run's printed JSON")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.child:
        print(json.dumps(child(args), default=str))
        return 0
    if args.from_json:  # the JSON a run printed (its first top-level object)
        res, _ = json.JSONDecoder().raw_decode(pathlib.Path(args.from_json).read_text())
        return _emit(res, args.write_results)
    args_now = argv if argv is not None else sys.argv[1:]
    cmd = [sys.executable, "-m", "benchmarks.precision", "plans", "--child", *args_now]
    cmd = [c for c in cmd if c != "--write-results"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    runs = {}  # the commit is read first: the code the processes run
    for isa, env in (("native", {}), ("avx2", AVX2)):
        out = subprocess.run(
            cmd, env={**os.environ, **env}, cwd=REPO, capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(f"{isa} process failed:\n{out.stderr[-3000:]}")
        runs[isa] = json.loads(out.stdout.strip().splitlines()[-1])
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": cpu_name(),
           "nproc": os.cpu_count(), "flags": _flags(), "commit": commit, "runs": runs,
           "rounds": args.rounds, "batch": args.batch, "model": args.model,
           "no_model": f"no trained model at {args.model}"}  # fmt: skip
    print(json.dumps(res, indent=1, default=str))
    return _emit(res, args.write_results)


def _emit(res: dict[str, Any], write: bool) -> int:
    text = report(res)
    print(text)
    if write:
        write_section(SECTION, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
