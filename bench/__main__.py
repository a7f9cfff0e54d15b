"""One command regenerates bench/RESULTS.md: every benchmark's write-results mode, in sequence.

    .venv/bin/python -m bench all --quick                 # the speed benchmarks, small sizes
    .venv/bin/python -m bench all                         # the same at their full sizes
    .venv/bin/python -m bench all --quick --experiments   # and the long studies (quality, paper)
    .venv/bin/python -m bench all --only "## Cutouts (bench/bench_cutouts.py)"
    .venv/bin/python -m bench status                      # what is missing, stale or outdated

Each entry of :data:`WRITERS` is one section and the command that writes it (``--quick`` adds
the entry's smaller sizes: the quick mode of that script). Every section is stamped with its
provenance by ``bench/results_md.py``. After the runs (and in ``status``) the command lists:
sections no script writes, sections without a stamp or whose script changed since
(``tests/test_results.py`` fails on those), and sections whose measured package code
(``iic_survey/``) changed since their commit (worth rerunning, not a failure).
Exit status: 0 every run succeeded, 1 one failed (the rest still run).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import subprocess
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import results_md  # bench/ is not a package: the scripts import it this way too


@dataclasses.dataclass(frozen=True)
class Writer:
    """A RESULTS.md section and the command that writes it."""

    heading: str
    argv: tuple[str, ...]
    quick: tuple[str, ...] = ()
    """Extra arguments of the quick mode (smaller sizes, fewer rounds)."""
    experiment: bool = False
    """A long study (``--experiments``), not a speed benchmark."""
    needs: str = ""
    """A path that must exist first (else the entry is skipped, saying so)."""

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, *self.argv, *(self.quick if quick else ())]


_QUALITY = (
    "bench/bench_training.py",
    "--quality",
    "--write-results",
    "--workdir",
    "/tmp/iic_quality_all",
)
_QUALITY_QUICK = ("--sky-sources", "8000", "--archs", "iicnet")
WRITERS: tuple[Writer, ...] = (
    Writer(
        "## Cutouts (bench/bench_cutouts.py)",
        ("bench/bench_cutouts.py", "--write-results"),
        ("--n-sources", "2000", "--repeats", "1"),
    ),
    Writer(
        "## Pipeline (bench/bench_pipeline.py)",
        ("bench/bench_pipeline.py", "--write-results"),
        ("--n-sources", "6000", "--n-infer", "128"),
    ),
    Writer(
        "## Precision and the stamp split (bench/bench_pipeline.py --compare-precision)",
        ("bench/bench_pipeline.py", "--compare-precision", "--write-results"),
        ("--n-sources", "6000", "--e2e-pixels", "2", "--e2e-repeats", "1", "--rounds", "1"),
    ),
    Writer(
        "## Model speed (bench/bench_model.py)",
        ("bench/bench_model.py", "--write"),
        ("--budget", "60", "--min-rounds", "1"),
    ),
    Writer(
        "## Precision plans: fp32, bf16, bf16-late, int8 (bench/bench_precision_plans.py)",
        ("bench/bench_precision_plans.py", "--write-results"),
        ("--rounds", "2", "--images", "64"),
        needs="/tmp/base_demo/model",
    ),
    Writer(
        "## Driver memory of _metadata (bench/bench_metadata.py)",
        ("bench/bench_metadata.py", "--write-results"),
    ),
    Writer(
        "## Feeding ceiling (bench/bench_feeding.py)",
        ("bench/bench_feeding.py", "--write-results"),
        ("--n-sources", "30000"),
    ),
    Writer(
        "## Training (bench/bench_training.py)",
        ("bench/bench_training.py", "--write-results"),
        ("--rounds", "1", "--epochs", "2"),
    ),
    Writer(
        "## Margin and partitions (bench/bench_collection.py)",
        ("bench/bench_collection.py", "--write-results"),
        ("--rows", "60000"),
    ),
    Writer(
        "## Sky-scale rehearsal (bench/bench_scale.py)",
        ("bench/bench_scale.py", "--write-results"),
        ("--partitions", "4"),
    ),
    Writer(
        "## Memory against size (bench/bench_scale.py --memory)",
        ("bench/bench_scale.py", "--memory", "--write-results"),
    ),
    Writer(
        "## Reliability: faults (tests/integration/test_faults.py)",
        ("bench/bench_reliability.py", "--only", "faults"),
    ),
    Writer(
        "## Reliability: bad input (tests/integration/test_bad_input.py)",
        ("bench/bench_reliability.py", "--only", "bad_input"),
    ),
    Writer(
        "## Mutations (scripts/mutate.py)",
        ("scripts/mutate.py", "--write-results"),
        experiment=True,
    ),
    Writer(
        "## Quality on the synthetic sky (bench/bench_training.py --quality)",
        _QUALITY,
        _QUALITY_QUICK,
        experiment=True,
    ),
    Writer("## Training quality on the synthetic sky", _QUALITY, _QUALITY_QUICK, experiment=True),
    Writer(
        "## Paper experiments (bench/bench_paper.py)",
        ("bench/bench_paper.py", "--write-results"),
        ("--budget", "smoke"),
        experiment=True,
    ),
)
"""Every section of RESULTS.md and what writes it (the GPU section, bench/bench_gpu.py, is
written only on a machine with a GPU: run it there by hand)."""


def rerun_commands() -> dict[str, str]:
    """Heading -> the command line that writes it (for messages)."""
    return {w.heading: ".venv/bin/python " + " ".join(w.argv) for w in WRITERS}


def report(text: str) -> list[str]:
    """Lines: the sections' problems (:func:`results_md.problems`) and those whose measured
    package code changed since they were written."""
    lines = [f"  PROBLEM {p}" for p in results_md.problems(text, rerun_commands())]
    for heading, body in results_md.sections(text).items():
        p = results_md.read_provenance(body)
        changed = results_md.package_changed(p) if p else []
        if changed:
            more = f", +{len(changed) - 3} more" if len(changed) > 3 else ""
            lines.append(
                f"  package code changed since {heading!r} was measured: "
                f"{', '.join(changed[:3])}{more}"
            )
    return lines or ["  every section is stamped, current and measured on today's package"]


def run_all(chosen: list[Writer], quick: bool) -> list[tuple[str, int, float]]:
    """Run each chosen writer once (a command shared by two sections runs once)."""
    done: dict[tuple[str, ...], tuple[int, float]] = {}
    out = []
    for w in chosen:
        cmd = w.command(quick)
        if w.needs and not os.path.exists(w.needs):
            print(f"[bench all] SKIPPED {w.heading}: needs {w.needs}", flush=True)
            out.append((w.heading, -1, 0.0))
            continue
        if tuple(cmd) not in done:
            print(f"[bench all] {w.heading}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=results_md.REPO, check=False).returncode
            done[tuple(cmd)] = (rc, time.perf_counter() - t0)
        rc, secs = done[tuple(cmd)]
        print(f"[bench all] {w.heading}: rc={rc} in {secs:.0f} s", flush=True)
        out.append((w.heading, rc, secs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("all", "status"))
    p.add_argument("--quick", action="store_true", help="each script's quick mode")
    p.add_argument("--experiments", action="store_true", help="also the long studies")
    p.add_argument("--only", action="append", help="only this section's heading (repeatable)")
    a = p.parse_args(argv)
    if a.what == "all":
        chosen = [
            w
            for w in WRITERS
            if (a.experiments or not w.experiment) and (not a.only or w.heading in a.only)
        ]
        t0 = time.perf_counter()
        runs = run_all(chosen, a.quick)
        print(f"[bench all] {len(runs)} sections in {(time.perf_counter() - t0) / 60:.1f} min")
        failed = [h for h, rc, _ in runs if rc > 0]
        for h in failed:
            print(f"[bench all] FAILED {h}", file=sys.stderr)
    print("[bench] RESULTS.md:")
    print("\n".join(report(results_md.RESULTS.read_text())))
    return 1 if a.what == "all" and failed else 0


if __name__ == "__main__":
    sys.exit(main())
