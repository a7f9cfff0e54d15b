"""Sky-scale rehearsal: all 12,288 AllWISE partitions through the real pipeline on this machine.

Measured in one run:

1. **Writing** the sky-scale sky (:mod:`iic_survey.synthetic.skyscale`): all 12,288 partitions
   at ``--scale`` of AllWISE's density, 300 columns, a ``_metadata`` of the real width; wall
   time and peak RSS. Two partial skies (the first 100 and 1,000 partitions, the same density)
   are written for item 2.
2. **Planning** (:func:`iic_survey.survey.plan.plan_run`, in a fresh process each) from 100,
   1,000 and 12,288 partitions: wall time and peak RSS. Goal: 12,288 in < 60 s, RSS < 2 GB and
   < 2x that at 100.
3. **The rehearsal**: ``jobs/classify_sky.py --healpix-order 5 --all`` as its own driver process
   on a fresh local Ray head, killed after half the pixels are committed
   (its driver raises then: ``_CRASHING_JOB``), then rerun to the end; then rerun once more with
   nothing left to do (its wall time is the fixed cost of planning + finalize + margin).
   Recorded: wall time of each, the driver's peak RSS (sampled), progress lines, per-pixel
   overhead, every input row exactly once, strict HATS validation.
4. **Cross-pixel check** (:func:`iic_survey.output.duplicates.check_unique_cntr`) timed alone
   on the rehearsal's output, as a fraction of the rehearsal's wall time.

Run from the repository root::

    .venv/bin/python -m benchmarks.scale --workdir DIR --scale 1e-4 --write-results
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
from typing import Any

from benchmarks import common
from benchmarks.common import MemorySampler, cpu_name, load
from benchmarks.results import write_section
from iic_survey.testing.ray_head import start_local_ray, stop_local_ray

REPO = pathlib.Path(__file__).resolve().parents[1]
SECTION = "## Sky-scale rehearsal (benchmarks/scale.py)"
MEMORY_SECTION = "## Memory against size (benchmarks/scale.py --memory)"
PY = sys.executable


def _timed_python(code: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; its wall time, peak RSS (MB) and last stdout line."""
    wrapper = (
        "import resource, time, json\nt0 = time.perf_counter()\n" + code + "\n"
        "print(json.dumps({'wall_s': time.perf_counter() - t0, 'rss_mb': "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 'out': OUT}))"
    )
    done = subprocess.run(
        [PY, "-c", wrapper], capture_output=True, text=True, env=env, cwd=REPO, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_skies(work: pathlib.Path, scale: float, partitions: int | None) -> dict[str, Any]:
    """The sky-scale sky (``partitions`` of it: all by default) and the two partial ones."""
    out = {}
    for name, parts in (("sky", partitions), ("sky_1000", 1000), ("sky_100", 100)):
        root = work / name
        if (root / "sky.json").is_file():
            doc = json.loads((root / "sky.json").read_text())
            if doc.get("scale") == scale and doc.get("partitions") == parts:
                out[name] = {"reused": True, "rows": doc["n_sources"], "pixels": len(doc["pixels"])}
                continue
        code = (
            "from iic_survey.synthetic.skyscale import SkyScaleConfig, write_sky_scale\n"
            f"m = write_sky_scale({str(root)!r}, SkyScaleConfig(scale={scale!r}, "
            f"partitions={parts!r}), overwrite=True)\nOUT = [m.n_sources, len(m.pixels)]"
        )
        r = _timed_python(code)
        out[name] = {"wall_s": r["wall_s"], "rss_mb": r["rss_mb"], "rows": r["out"][0],
                     "pixels": r["out"][1]}  # fmt: skip
    md = work / "sky/catalogs/p3as_psd/healpix_k5/wise-allwise.parquet/_metadata"
    out["metadata_bytes"] = md.stat().st_size
    return out


def plan_costs(work: pathlib.Path) -> dict[str, Any]:
    """Plan each sky in a fresh process: wall time and peak RSS."""
    out = {}
    for name in ("sky_100", "sky_1000", "sky"):
        root = work / name
        code = (
            "from iic_survey.inputs.catalog import open_catalog\n"
            "from iic_survey.survey.config import PipelineConfig\n"
            "from iic_survey.survey.plan import plan_run\n"
            f"cfg = PipelineConfig.create({str(root)!r} + '/catalogs/p3as_psd/healpix_k5/"
            f"wise-allwise.parquet', 'i', 'm', 'o')\n"
            "plan = plan_run(cfg, open_catalog(cfg.inputs.catalog))\n"
            "OUT = [len(plan.counts), plan.todo_rows]"
        )
        r = _timed_python(code)
        out[name] = {"wall_s": r["wall_s"], "rss_mb": r["rss_mb"], "pixels": r["out"][0],
                     "rows": r["out"][1]}  # fmt: skip
    return out


_CRASHING_JOB = """
import functools, runpy, sys
from iic_survey.survey import run
n = int(sys.argv.pop(1))
def crash(committed):
    if committed >= n:
        raise RuntimeError(f"crash after {n} commits: simulated crash")
run.run_pipeline = functools.partial(run.run_pipeline, after_commit=crash)
sys.argv[0] = "jobs/classify_sky.py"
runpy.run_path("jobs/classify_sky.py", run_name="__main__")
"""
"""``jobs/classify_sky.py`` whose driver raises after argv[1] pixel commits (a crashed run)."""


def _job(head: Any, args: list[str], crash_after: str | None = None) -> dict[str, Any]:
    """``python jobs/classify_sky.py ARGS`` as a driver of ``head``: wall, driver RSS, the
    summed RSS and PSS of the driver and every process of the head, and the log. With
    ``crash_after``, the driver raises after that many pixel commits (:data:`_CRASHING_JOB`)."""
    env = dict(head.env, RAY_ADDRESS=head.gcs_address)
    t0 = time.perf_counter()
    job = ["jobs/classify_sky.py"] if crash_after is None else ["-c", _CRASHING_JOB, crash_after]
    proc = subprocess.Popen(
        [PY, *job, *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with (
        MemorySampler(proc.pid, 0.5, include_self=False) as driver,
        MemorySampler(head.process.pid, 0.5, also=(proc.pid,), include_self=False) as every,
    ):
        log, _ = proc.communicate()
    mb = 2**20
    kinds = {k: [n, b / mb] for k, (n, b) in every.peak_by_kind.items()}
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0,
            "driver_rss_mb": driver.peak_rss / mb, "all_rss_mb": every.peak_rss / mb,
            "all_pss_mb": every.peak_pss / mb, "log": log,
            "pss_by_kind": kinds}  # fmt: skip


def rehearsal(work: pathlib.Path, model: str, num_cpus: int) -> dict[str, Any]:
    """Kill half-way, resume, rerun with nothing to do; check rows and the HATS catalog."""
    from hats.io.validation import is_valid_catalog

    from iic_survey.core.paths import as_path
    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.output import duplicates, reader
    from iic_survey.output.schema import catalog_dir, pixel_file
    from iic_survey.output.staging import commit_markers
    from iic_survey.synthetic.skyfiles import SkyManifest

    sky = SkyManifest.load(work / "sky")
    out = work / "catalog"
    base = ["--healpix-order", "5", "--all", "--catalog", sky.catalog_url, "--images",
            sky.images_url, "--model", model, "--output", str(out), "--overwrite"]  # fmt: skip
    res: dict[str, Any] = {"rows": sky.n_sources, "pixels": len(sky.pixels)}
    head = start_local_ray(num_cpus=num_cpus)
    try:
        half = str(len(sky.pixels) // 2)
        res["killed"] = _job(head, base, crash_after=half)
        resume = [a for a in base if a != "--overwrite"]
        res["resumed"] = _job(head, resume)
        res["nothing_left"] = _job(head, resume)
    finally:
        stop_local_ray(head)
    for k in ("killed", "resumed", "nothing_left"):
        log = res[k].pop("log")
        res[k]["progress_lines"] = [ln for ln in log.splitlines() if "progress:" in ln][-3:]
        res[k]["tail"] = log.splitlines()[-3:]
    got = reader.read(str(out), columns=["cntr"])["cntr"]
    want = open_catalog(sky.catalog_url).read_pixels(sky.pixels, 5, columns=["cntr"])["cntr"]
    res["rows_out"], res["unique"] = len(got), bool(got.is_unique)
    res["same_cntr"] = bool(set(got) == set(want))
    res["hats_valid"] = bool(is_valid_catalog(catalog_dir(as_path(out)), strict=True))
    root = as_path(out)
    entries = [e for m in commit_markers(root).get(5, {}).values() for e in m["partitions"]]
    t0 = time.perf_counter()
    duplicates.check_unique_cntr(
        [pixel_file(root, e["order"], e["pixel"]) for e in entries], len(got)
    )
    res["dup_check_s"] = time.perf_counter() - t0
    return res


MEMORY_FIELDS = tuple((15.0 + 22.0 * i, 25.0 if i % 2 else -25.0) for i in range(16))
"""Field centres at |dec| 25 deg, 22 deg apart in ra (no shared tile)."""


def memory_growth(work: pathlib.Path, model: str, num_cpus: int) -> list[dict[str, Any]]:
    """One run each over 1, 4 and 16 demo-density fields (2,500 sources each), each on a fresh
    Ray head: peak summed RSS and PSS of the driver and all Ray processes."""
    from iic_survey.synthetic.skyfiles import SkyConfig, SkyManifest, write_sky

    out = []
    for k in (1, 4, 16):
        root = work / f"memory_sky_{k}"
        if not (root / "sky.json").is_file():
            write_sky(root, SkyConfig(n_sources=2500 * k, fields=MEMORY_FIELDS[:k]))
        sky = SkyManifest.load(root)
        args = ["--healpix-order", "5", "--all", "--catalog", sky.catalog_url, "--images",
                sky.images_url, "--model", model, "--output", str(work / f"memory_out_{k}"),
                "--overwrite"]  # fmt: skip
        head = start_local_ray(num_cpus=num_cpus)
        try:
            r = _job(head, args)
        finally:
            stop_local_ray(head)
        r.pop("log")
        out.append({"fields": k, "sources": sky.n_sources, "pixels": len(sky.pixels), **r})
        print(json.dumps(out[-1]), flush=True)
    return out


def memory_report(rows: list[dict[str, Any]], res: dict[str, Any]) -> str:
    first, last = rows[0], rows[-1]
    return "\n".join([
        MEMORY_SECTION, "",
        f"Measured {res['date']} on {res['nproc']} shared cores, load average {res['load_before']} "
        f"before and {res['load_after']} after; one job (`jobs/classify_sky.py --all`) per size, "
        f"each on a fresh local Ray head ({res['num_cpus']} logical CPUs), the paper-sized IICnet; "
        "peaks of the summed RSS and PSS of the driver and every process of the head, sampled "
        f"every 0.5 s. Command: `{res['command']}`.", "",
        "| fields | sources | pixels | exit | wall (s) | driver RSS (MB) | all RSS (MB) "
        "| all PSS (MB) |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {r['fields']} | {r['sources']:,} | {r['pixels']} | {r['rc']} | "
          f"{r['wall_s']:.0f} | {r['driver_rss_mb']:.0f} | {r['all_rss_mb']:.0f} | "
          f"{r['all_pss_mb']:.0f} |" for r in rows),
        "",
        f"From {first['sources']:,} to {last['sources']:,} sources "
        f"({last['sources'] / first['sources']:.0f}x): all-process PSS "
        f"{100 * (last['all_pss_mb'] / first['all_pss_mb'] - 1):+.1f} %, RSS "
        f"{100 * (last['all_rss_mb'] / first['all_rss_mb'] - 1):+.1f} % (goal < 20 %).",
        "", *_by_kind(rows),
    ]) + "\n"  # fmt: skip


def _by_kind(rows: list[dict[str, Any]]) -> list[str]:
    """Where the PSS is at each size's peak: processes and MB by process kind."""
    kinds = sorted({k for r in rows for k in r.get("pss_by_kind", {})},
                   key=lambda k: -rows[-1].get("pss_by_kind", {}).get(k, [0, 0.0])[1])  # fmt: skip
    if not kinds:
        return []
    out = ["At each size's peak, PSS by process kind (processes x, MB):", "",
           "| process kind | " + " | ".join(f"{r['fields']} field(s)" for r in rows) + " |",
           "|---|" + "---:|" * len(rows)]  # fmt: skip
    for k in kinds:
        cells = [r.get("pss_by_kind", {}).get(k) for r in rows]
        out.append(f"| {k} | " + " | ".join(
            f"{c[0]} x, {c[1]:,.0f}" if c else "" for c in cells) + " |")  # fmt: skip
    return out


def _model(work: pathlib.Path) -> str:
    """The paper-sized IICnet, untrained (the speed is a trained one's), as benchmarks/pipeline."""
    import dataclasses

    from iic_survey.inputs.catalog import open_catalog
    from iic_survey.synthetic.skyfiles import SkyManifest

    sky = SkyManifest.load(work / "sky")
    # The OOD statistics come from the first pixel's rows: take the pixel with the most rows
    # (most of this sky's pixels hold a handful; 5 rows gave a zero threshold, refused at load).
    cat = open_catalog(sky.catalog_url)
    rows = {p: len(cat.read_pixel(int(p), 5, columns=["cntr"])) for p in sky.pixels}
    best = max(rows, key=rows.__getitem__)
    first = dataclasses.replace(sky, pixels=[best, *[p for p in sky.pixels if p != best]])
    return common.model_dir(work / "model", first)


def report(res: dict[str, Any]) -> str:
    s, p, r = res["skies"], res["plan"], res["rehearsal"]
    k, rs, z = r["killed"], r["resumed"], r["nothing_left"]
    run_s = k["wall_s"] + rs["wall_s"]
    lines = [
        SECTION,
        "",
        f"Measured {res['date']} on {res['nproc']} shared cores ({res['cpu']}), load average "
        f"(1/5/15 min) {res['load_before']} before and {res['load_after']} after; Python "
        f"{platform.python_version()}; a fresh local Ray head with {res['num_cpus']} logical "
        f"CPUs; the paper-sized IICnet (untrained weights), fp32/auto as the job chooses. One "
        f"run: every number below comes from it. Command: `{res['command']}`.",
        "",
        f"**The sky** (`jobs/make_sky.py DIR --preset sky-scale --scale {res['scale']}`): "
        f"{s['sky']['rows']:,} rows in {s['sky']['pixels']:,} partitions, 300 columns, "
        f"`_metadata` {s['metadata_bytes'] / 1e6:,.0f} MB"
        + (
            f"; written in {s['sky']['wall_s']:.0f} s at {s['sky']['rss_mb']:.0f} MB peak RSS."
            if "wall_s" in s["sky"]
            else " (reused from an earlier run of this script)."
        ),
        "Rows with images: the tiny sky's two fields (2,000 rows in 6 partitions), cut and "
        "classified from real pixels; every other row's Atlas tile is absent, so it is "
        "flagged BAND_MISSING after the tile lookup, as a tile missing from the archive is.",
        "",
        "| planning (`plan_run`, fresh process) | partitions | rows | wall (s) | peak RSS (MB) |",
        "|---|---|---|---|---|",
        *(
            f"| {n} | {p[n]['pixels']:,} | {p[n]['rows']:,} | {p[n]['wall_s']:.1f} | "
            f"{p[n]['rss_mb']:.0f} |"
            for n in ("sky_100", "sky_1000", "sky")
        ),
        "",
        f"Planning 12,288 partitions: {p['sky']['wall_s']:.1f} s (goal < 60 s); peak RSS "
        f"{p['sky']['rss_mb']:.0f} MB, {p['sky']['rss_mb'] / p['sky_100']['rss_mb']:.2f}x the "
        "100-partition plan's (goal < 2 GB and < 2x).",
        "",
        "| rehearsal run | exit | wall (s) | driver peak RSS (MB) |",
        "|---|---|---|---|",
        f"| killed after {r['pixels'] // 2:,} commits | {k['rc']} | {k['wall_s']:.0f} | "
        f"{k['driver_rss_mb']:.0f} |",
        f"| rerun: resumes the rest | {rs['rc']} | {rs['wall_s']:.0f} | "
        f"{rs['driver_rss_mb']:.0f} |",
        f"| rerun: nothing left (plan + finalize + margin) | {z['rc']} | {z['wall_s']:.0f} | "
        f"{z['driver_rss_mb']:.0f} |",
        "",
        f"End to end (killed + resumed): {run_s:.0f} s = {run_s / 60:.1f} min for "
        f"{r['rows']:,} rows in {r['pixels']:,} pixels: {run_s / r['pixels'] * 1e3:.0f} ms a "
        f"pixel in all; the fixed part (a run with nothing to do) {z['wall_s']:.0f} s = "
        f"{z['wall_s'] / r['pixels'] * 1e3:.1f} ms a pixel. Output: {r['rows_out']:,} rows, "
        f"cntr unique: {r['unique']}, the input's cntr exactly: {r['same_cntr']}; "
        f"`is_valid_catalog(strict=True)`: {r['hats_valid']}.",
        f"Cross-pixel cntr check alone: {r['dup_check_s']:.2f} s = "
        f"{100 * r['dup_check_s'] / run_s:.2f} % of the rehearsal's wall time (goal < 5 %). "
        "It is linear in rows (one column read, 16 bytes a row bucketed): at AllWISE's "
        f"747,634,026 rows, {747_634_026 / max(r['rows'], 1):,.0f}x these rows.",
        "",
        "Last progress lines of the resumed run:",
        "",
        *(f"    {ln.strip()}" for ln in rs["progress_lines"]),
        "",
        "Not covered: real pixels for the rows outside the two imaged fields (their tiles are "
        "absent), S3 and IBE at scale, GPUs, several nodes.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default=str(common.workdir("scale")))
    ap.add_argument("--scale", type=float, default=1e-4)
    ap.add_argument("--num-cpus", type=int, default=4)
    ap.add_argument("--partitions", type=int, help="rehearse only this many (a quick check)")
    ap.add_argument("--memory", action="store_true", help="only the memory-against-size runs")
    ap.add_argument("--write-results", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    work = pathlib.Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python -m benchmarks.scale", *sys.argv[1:]])
    res: dict[str, Any] = {"load_before": load(), "nproc": os.cpu_count(), "cpu": cpu_name(),
                           "scale": args.scale, "num_cpus": args.num_cpus,
                           "command": command}  # fmt: skip
    if args.memory:
        rows = memory_growth(work, _model(work), args.num_cpus)
        res["load_after"] = load()
        res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        text = memory_report(rows, res)
        print(text)
        if args.write_results:
            write_section(MEMORY_SECTION, text)
        return 0 if all(r["rc"] == 0 for r in rows) else 1
    res["skies"] = write_skies(work, args.scale, args.partitions)
    print(json.dumps(res["skies"]), flush=True)
    res["plan"] = plan_costs(work)
    print(json.dumps(res["plan"]), flush=True)
    res["rehearsal"] = rehearsal(work, _model(work), args.num_cpus)
    res["load_after"] = load()
    res["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    (work / "results.json").write_text(json.dumps(res, indent=1, default=str))
    text = report(res)
    print(text)
    if args.write_results:
        write_section(SECTION, text)
    return 0 if re.search(r"exactly: True", text) else 1


if __name__ == "__main__":
    sys.exit(main())
