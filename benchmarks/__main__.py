"""One command regenerates the RESULTS files: every benchmark's write-results mode, in sequence.

    .venv/bin/python -m benchmarks all --quick                 # the speed benchmarks, small sizes
    .venv/bin/python -m benchmarks all                         # the same at their full sizes
    .venv/bin/python -m benchmarks all --quick --experiments   # and the studies (quality, paper)
    .venv/bin/python -m benchmarks all --only "## Cutouts (benchmarks/cutouts.py)"
    .venv/bin/python -m benchmarks all --gpu                   # on a GPU machine: its sections too
    .venv/bin/python -m benchmarks status                      # what is missing, stale or outdated

Each entry of :data:`WRITERS` is one section, the RESULTS file it lives in
(``benchmarks/RESULTS.md`` for the speed benchmarks, the reliability figures and the mutations;
``experiments/RESULTS.md`` for the studies of ``experiments/``) and the command that writes it
(``--quick`` adds the entry's smaller sizes: the quick mode of that script). Every section is
stamped with its provenance by :mod:`benchmarks.results`. After the runs (and in ``status``)
the command lists, per file: sections no script writes, sections without a stamp or whose
script changed since (``tests/test_results.py`` fails on those), and sections whose measured
package code (``iic_survey/``) changed since their commit (worth rerunning, not a failure).
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

from benchmarks import results


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
    """A path (from the repository root) that must exist first (else the entry is skipped)."""
    gpu: bool = False
    """Needs a CUDA device: run by ``all --gpu`` (or ``benchmarks/gpu_check.sh``), else skipped."""
    results: pathlib.Path = results.RESULTS
    """The RESULTS file the section lives in."""

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, *self.argv, *(self.quick if quick else ())]


_QUALITY = ("-m", "experiments.quality", "--write-results")
_QUALITY_QUICK = ("--sky-sources", "8000", "--archs", "iicnet")
_X = results.EXPERIMENTS
_ALL_CPUS = str(os.cpu_count() or 1)
WRITERS: tuple[Writer, ...] = (
    Writer(
        "## Cutouts (benchmarks/cutouts.py)",
        ("-m", "benchmarks.cutouts", "--write-results"),
        ("--n-sources", "2000", "--repeats", "1"),
    ),
    Writer(
        "## Pipeline (benchmarks/pipeline.py)",
        ("-m", "benchmarks.pipeline", "--write-results"),
        ("--n-sources", "6000", "--n-infer", "128"),
    ),
    Writer(
        "## Precision and the stamp split (benchmarks/precision split)",
        ("-m", "benchmarks.precision", "split", "--write-results"),
        ("--n-sources", "6000", "--e2e-pixels", "2", "--e2e-repeats", "1", "--rounds", "1"),
    ),
    Writer(
        "## Model speed (benchmarks/model.py)",
        ("-m", "benchmarks.model", "--write"),
        ("--budget", "60", "--min-rounds", "1"),
    ),
    Writer(
        "## Precision plans: fp32, bf16, bf16-late, int8 (benchmarks/precision plans)",
        ("-m", "benchmarks.precision", "plans", "--write-results"),
        ("--rounds", "2", "--images", "64"),
        needs="runs/demo/model",
    ),
    Writer(
        "## Driver memory of _metadata (benchmarks/metadata.py)",
        ("-m", "benchmarks.metadata", "--write-results"),
    ),
    Writer(
        "## Feeding ceiling (benchmarks/feeding.py)",
        ("-m", "benchmarks.feeding", "--write-results"),
        ("--n-sources", "30000"),
    ),
    Writer(
        "## Feeding ceiling, 4 CPU actors (benchmarks/feeding.py --actors 4)",
        ("-m", "benchmarks.feeding", "--actors", "4", "--num-cpus", "6", "--write-results"),
        ("--n-sources", "30000"),
    ),
    Writer(
        "## Feeding ceiling, GPU actors (benchmarks/feeding.py --gpus)",
        # every CPU of the GPU machine cuts, as benchmarks/gpu_check.sh runs it
        ("-m", "benchmarks.feeding", "--gpus", "1", "--num-cpus", _ALL_CPUS, "--write-results"),
        ("--n-sources", "20000", "--alone-pixels", "2", "--idle-s", "3"),
        gpu=True,
    ),
    Writer(
        "## GPU inference (benchmarks/gpu.py)",
        ("-m", "benchmarks.gpu", "--write-results"),
        ("--window", "1.0", "--batches", "1024", "4096", "--n-sources", "20000"),
        gpu=True,
    ),
    Writer(
        "## Training (benchmarks/training.py)",
        ("-m", "benchmarks.training", "--write-results"),
        ("--rounds", "1", "--epochs", "2"),
    ),
    Writer(
        "## Margin and partitions (benchmarks/collection.py)",
        ("-m", "benchmarks.collection", "--write-results"),
        ("--rows", "60000"),
    ),
    Writer(
        "## Sky-scale rehearsal (benchmarks/scale.py)",
        ("-m", "benchmarks.scale", "--write-results"),
        ("--partitions", "4"),
    ),
    Writer(
        "## Memory against size (benchmarks/scale.py --memory)",
        ("-m", "benchmarks.scale", "--memory", "--write-results"),
    ),
    Writer(
        "## Reliability: faults (tests/integration/test_faults.py)",
        ("-m", "benchmarks.reliability", "--only", "faults"),
    ),
    Writer(
        "## Reliability: bad input (tests/integration/test_bad_input.py)",
        ("-m", "benchmarks.reliability", "--only", "bad_input"),
    ),
    Writer(
        "## Mutations (scripts/mutate.py)",
        ("-m", "scripts.mutate", "--write-results"),
        experiment=True,
    ),
    Writer(
        "## Quality on the synthetic sky (experiments/quality)",
        _QUALITY,
        _QUALITY_QUICK,
        experiment=True,
        results=_X,
    ),
    Writer(
        "## Training quality on the synthetic sky",
        _QUALITY,
        _QUALITY_QUICK,
        experiment=True,
        results=_X,
    ),
    Writer(
        "## Paper experiments (experiments/paper)",
        ("-m", "experiments.paper", "--write-results"),
        ("--budget", "smoke"),
        experiment=True,
        results=_X,
    ),
)
"""Every section of the RESULTS files and what writes it (the ``gpu`` ones only on a machine with
a CUDA device: ``all --gpu`` there, or ``benchmarks/gpu_check.sh``)."""


def rerun_commands() -> dict[str, str]:
    """Heading -> the command line that writes it (for messages)."""
    return {w.heading: ".venv/bin/python " + " ".join(w.argv) for w in WRITERS}


def rerun_commands_of(path: pathlib.Path) -> dict[str, str]:
    """Heading -> the command line that writes it, for the sections of one RESULTS file."""
    return {w.heading: ".venv/bin/python " + " ".join(w.argv) for w in WRITERS if w.results == path}


def report(text: str, path: pathlib.Path = results.RESULTS) -> list[str]:
    """Lines: the problems of the sections of ``text`` (the RESULTS file ``path``:
    :func:`benchmarks.results.problems`) and those whose measured package code changed since
    they were written."""
    lines = [f"  PROBLEM {p}" for p in results.problems(text, rerun_commands_of(path))]
    for heading, body in results.sections(text).items():
        p = results.read_provenance(body)
        changed = results.package_changed(p) if p else []
        if changed:
            more = f", +{len(changed) - 3} more" if len(changed) > 3 else ""
            lines.append(
                f"  package code changed since {heading!r} was measured: "
                f"{', '.join(changed[:3])}{more}"
            )
    if not results.sections(text):
        return ["  no sections yet"]
    return lines or ["  every section is stamped, current and measured on today's package"]


def run_all(chosen: list[Writer], quick: bool, gpu: bool = False) -> list[tuple[str, int, float]]:
    """Run each chosen writer once (a command shared by two sections runs once; a ``gpu`` one
    only when ``gpu``)."""
    done: dict[tuple[str, ...], tuple[int, float]] = {}
    out = []
    for w in chosen:
        cmd = w.command(quick)
        if w.gpu and not gpu:
            print(f"[benchmarks all] SKIPPED {w.heading}: needs a GPU (--gpu)", flush=True)
            out.append((w.heading, -1, 0.0))
            continue
        if w.needs and not (results.REPO / w.needs).exists():
            print(f"[benchmarks all] SKIPPED {w.heading}: needs {w.needs}", flush=True)
            out.append((w.heading, -1, 0.0))
            continue
        if tuple(cmd) not in done:
            print(f"[benchmarks all] {w.heading}: {' '.join(cmd[1:])}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd, cwd=results.REPO, check=False).returncode
            done[tuple(cmd)] = (rc, time.perf_counter() - t0)
        rc, secs = done[tuple(cmd)]
        print(f"[benchmarks all] {w.heading}: rc={rc} in {secs:.0f} s", flush=True)
        out.append((w.heading, rc, secs))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("all", "status"))
    p.add_argument("--quick", action="store_true", help="each script's quick mode")
    p.add_argument("--experiments", action="store_true", help="also the long studies")
    p.add_argument("--only", action="append", help="only this section's heading (repeatable)")
    p.add_argument("--gpu", action="store_true", help="also the GPU sections (needs CUDA)")
    a = p.parse_args(argv)
    if a.what == "all":
        chosen = [
            w
            for w in WRITERS
            if (a.experiments or not w.experiment) and (not a.only or w.heading in a.only)
        ]
        t0 = time.perf_counter()
        runs = run_all(chosen, a.quick, a.gpu)
        print(f"[benchmarks all] {len(runs)} sections in {(time.perf_counter() - t0) / 60:.1f} min")
        failed = [h for h, rc, _ in runs if rc > 0]
        for h in failed:
            print(f"[benchmarks all] FAILED {h}", file=sys.stderr)
    for path in (results.RESULTS, results.EXPERIMENTS):
        print(f"[benchmarks] {path.relative_to(results.REPO)}:")
        text = path.read_text() if path.exists() else ""
        print("\n".join(report(text, path)))
    return 1 if a.what == "all" and failed else 0


if __name__ == "__main__":
    sys.exit(main())
