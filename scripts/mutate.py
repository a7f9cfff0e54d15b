"""Mutations the test suite must catch: apply each to a scratch copy of the repo, run its tests.

    .venv/bin/python scripts/mutate.py            # all five, against the committed HEAD
    .venv/bin/python scripts/mutate.py --only optimizer-never-steps --keep

Each mutation is a small, exact edit of the package (the script refuses to run one whose text
is no longer in the file, so a refactor cannot turn a mutation into a silent no-op). For each,
the committed tree (``git archive <rev>``, never the working tree, which other writers may be
editing) is unpacked under ``--scratch``, the edit applied, and the tests that guard the
behaviour are run the way the README runs the suite (``bash scripts/test.sh <tests> -x -q``),
with ``PYTHONPATH`` set so that the scratch copy's package is the one imported (checked) and
``../shared`` linked beside it. A mutation is *caught* when that command fails; the unmutated
copy must pass the same tests first (``--no-baseline`` skips that), else the verdict means
nothing. Prints one line per mutation and a JSON summary; exits 1 if any mutation survives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutation:
    """One deliberate bug: exact ``(old, new)`` edits of ``path`` and the tests that must fail."""

    name: str
    what: str
    path: str
    edits: tuple[tuple[str, str], ...]
    tests: tuple[str, ...]


MUTATIONS: tuple[Mutation, ...] = (
    Mutation(
        "optimizer-never-steps",
        "the training loop computes gradients but never steps the optimizer",
        "iic_survey/training/loop.py",
        (("        w.scaler.step(w.opt)\n", "        pass  # mutation: no optimizer step\n"),),
        ("tests/test_training.py::test_ray_train_learns_the_tiny_set",),
    ),
    Mutation(
        "temperature-ignored",
        "probabilities at inference are softmax(logits), the fitted temperature unused",
        "iic_survey/survey/classify.py",
        (
            (
                "probs = np.array(softmax(logits, scoring.temperature), dtype=np.float64)",
                "probs = np.array(softmax(logits, 1.0), dtype=np.float64)",
            ),
        ),
        ("tests/test_pipeline.py",),
    ),
    Mutation(
        "commit-without-row-count",
        "a pixel is committed whatever number of rows was staged",
        "iic_survey/output/commit.py",
        (("    if table.num_rows != int(expected_rows):\n", "    if False:  # mutation\n"),),
        ("tests/test_output.py",),
    ),
    Mutation(
        "marker-before-data",
        "the _done marker is written before the pixel's data files (then rewritten after)",
        "iic_survey/output/commit.py",
        (
            (
                "    inside, strays = _hand_over_strays(fs, root, order, pixel, table)\n",
                "    write_atomic(fs, marker, json.dumps({'rows': table.num_rows}).encode())\n"
                "    inside, strays = _hand_over_strays(fs, root, order, pixel, table)\n",
            ),
        ),
        ("tests/test_commit_order.py", "tests/test_output.py", "tests/test_faults.py"),
    ),
    Mutation(
        "quality-flags-dropped",
        "the output's quality_flags column is written as 0 whatever the input's flags",
        "iic_survey/survey/classify.py",
        (
            (
                '"quality_flags": flags.astype(np.int32),',
                '"quality_flags": np.zeros(n, dtype=np.int32),  # mutation',
            ),
        ),
        ("tests/test_pipeline.py", "tests/test_bad_input.py"),
    ),
)


def unpack(rev: str, dest: pathlib.Path) -> None:
    """The committed tree at ``rev`` in ``dest/main``; ``.venv`` and ``../shared`` linked."""
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "main").mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest / "main")], input=archive, check=True)
    (dest / "main" / ".venv").symlink_to(REPO / ".venv")
    (dest / "shared").symlink_to(REPO.parent / "shared")


def apply(mutation: Mutation, root: pathlib.Path) -> None:
    """Apply the edits; refuse if an edit's text is not in the file exactly once."""
    path = root / mutation.path
    text = path.read_text()
    for old, new in mutation.edits:
        if text.count(old) != 1:
            raise SystemExit(
                f"{mutation.name}: {old.strip()!r} occurs {text.count(old)} times in "
                f"{mutation.path}, not once: update the mutation to the code"
            )
        text = text.replace(old, new)
    path.write_text(text)


def run_tests(
    root: pathlib.Path, tests: tuple[str, ...], log: pathlib.Path, extra: tuple[str, ...] = ()
) -> tuple[int, float]:
    """``bash scripts/test.sh <tests> -q <extra>`` in ``root``; (exit status, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "MPLBACKEND": "Agg",
    }
    which = subprocess.run(
        [".venv/bin/python", "-c", "import iic_survey; print(iic_survey.__file__)"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not which.startswith(str(root)):
        raise SystemExit(f"the scratch copy imports the package from {which}, not from {root}")
    t0 = time.perf_counter()
    with log.open("w") as f:
        rc = subprocess.run(
            ["bash", "scripts/test.sh", *tests, "-q", "-p", "no:cacheprovider", *extra],
            cwd=root,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            check=False,
        ).returncode
    return rc, time.perf_counter() - t0


def failures(log: pathlib.Path) -> list[str]:
    """The ``FAILED``/``ERROR`` summary lines of a pytest log (``-ra``, in pyproject's addopts)."""
    return [
        line[:300]
        for line in log.read_text().splitlines()
        if line.startswith(("FAILED tests/", "ERROR tests/"))
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default="HEAD", help="commit to mutate (default HEAD)")
    p.add_argument("--scratch", default="/tmp/iic_mutate", help="where the copies go")
    p.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    p.add_argument("--keep", action="store_true", help="keep the scratch copies")
    a = p.parse_args(argv)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", a.rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    scratch = pathlib.Path(a.scratch)
    chosen = [m for m in MUTATIONS if not a.only or m.name in a.only]
    print(f"[mutate] commit {commit}, {len(chosen)} mutations, scratch {scratch}", flush=True)
    results = []
    deselect: list[str] = []
    if not a.no_baseline:
        # The unmutated tests, all of them: a test failing here cannot tell a mutation apart,
        # so it is deselected from the mutant runs (and named in the summary).
        tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
        unpack(commit, scratch / "baseline")
        rc, secs = run_tests(scratch / "baseline" / "main", tests, scratch / "baseline.log")
        broken = failures(scratch / "baseline.log")
        deselect = [line.split()[1] for line in broken]
        print(f"[mutate] baseline (unmutated): rc={rc} in {secs:.0f} s", flush=True)
        for line in broken:
            print(f"[mutate]   fails unmutated, deselected below: {line}", flush=True)
        if rc not in (0, 1):
            print(f"[mutate] the unmutated run broke, see {scratch}/baseline.log", file=sys.stderr)
            return 2
        if not a.keep:
            shutil.rmtree(scratch / "baseline")
    for m in chosen:
        dest = scratch / m.name
        unpack(commit, dest)
        apply(m, dest / "main")
        log = scratch / f"{m.name}.log"
        extra = ("-x", *(f"--deselect={d}" for d in deselect))
        rc, secs = run_tests(dest / "main", m.tests, log, extra)
        by = next(iter(failures(log)), "")
        # Caught: pytest ran and a test failed. Any other non-zero status (a collection or
        # setup error without a failing test) is reported as such, not counted as caught.
        caught = rc == 1 and bool(by)
        verdict = "caught" if caught else ("NOT CAUGHT" if rc == 0 else f"broken run (rc={rc})")
        print(f"[mutate] {m.name}: {verdict} (rc={rc}, {secs:.0f} s) {by}", flush=True)
        results.append(
            {
                "mutation": m.name,
                "what": m.what,
                "tests": list(m.tests),
                "rc": rc,
                "caught": caught,
                "caught_by": by,
                "seconds": round(secs, 1),
                "log": str(log),
            }
        )
        if not a.keep:
            shutil.rmtree(dest)
    print(json.dumps({"commit": commit, "deselected": deselect, "results": results}, indent=1))
    return 0 if all(r["caught"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
