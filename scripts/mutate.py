"""Mutations the test suite must catch: apply each to a scratch copy of the repo, run its tests.

    .venv/bin/python -m scripts.mutate            # all of them, against the committed HEAD
    .venv/bin/python -m scripts.mutate --only optimizer-never-steps --keep
    .venv/bin/python -m scripts.mutate --check    # seconds: does every mutation still apply?
    .venv/bin/python -m scripts.mutate --baseline-after --write-results   # the RESULTS table

Each mutation is a small, exact edit of the package. Before any test runs, the script checks
that every chosen mutation's text is in its file exactly once, and stops at once naming each
that is not (exit 3), so a refactor cannot turn a mutation into a silent no-op or leave the run
to die after its baseline; ``--check`` does only that (CI runs it in scripts/test.sh). For each,
the committed tree (``git archive <rev>``, never the working tree, which other writers may be
editing) is unpacked under ``--scratch``, the edit applied, and the tests that guard the
behaviour are run the way the README runs the suite (``bash scripts/test.sh <tests> -x -q``),
with ``PYTHONPATH`` set so that the scratch copy's package is the one imported (checked) and
``../shared`` linked beside it. A mutation is *caught* when that command fails; the unmutated
copy must pass the same tests first (``--no-baseline`` skips that; ``--baseline-after`` runs,
after the mutants, only the tests that caught one, a much shorter run), else the verdict means
nothing. The mutations themselves are listed in scripts/mutations.py. Prints one line per
mutation and a JSON summary. Exit status: 0 every mutation caught, 1 one survived (or its run
broke without a failing test), 2 the unmutated run broke, 3 a mutation cannot apply.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks.results import write_section  # at the start: the stamp's "load before"
from scripts.mutations import (  # the list of mutations
    EXIT_BASELINE,
    EXIT_CANNOT_APPLY,
    EXIT_SURVIVED,
    MUTATIONS,
    Mutation,
)

REPO = pathlib.Path(__file__).resolve().parents[1]

SECTION = "## Mutations (scripts/mutate.py)"


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


def unapplicable(
    mutations: list[Mutation], read: Callable[[str], str]
) -> tuple[list[str], list[Mutation]]:
    """(why each edit that cannot apply does not, the pending mutations whose code has not
    landed yet); an edit applies when its text is in its file exactly once."""
    why, pending = [], []
    for m in mutations:
        try:
            text = read(m.path)
        except (OSError, subprocess.CalledProcessError):
            why.append(f"{m.name}: {m.path} is not there")
            continue
        counts = [text.count(old) for old, _ in m.edits]
        if m.pending and not any(counts):
            pending.append(m)
            continue
        for (old, _), n in zip(m.edits, counts, strict=True):
            if n != 1:
                why.append(
                    f"{m.name}: {old.strip()!r} occurs {n} times in {m.path}, "
                    "not once: update the mutation to the code"
                )
    return why, pending


def reader(rev: str | None) -> Callable[[str], str]:
    """A file's text at ``rev`` (``git show``), or in the working tree when ``rev`` is None."""
    if rev is None:
        return lambda path: (REPO / path).read_text()
    return lambda path: (
        subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )


def apply(mutation: Mutation, root: pathlib.Path) -> None:
    """Apply the edits (:func:`unapplicable` has checked each is in the file once)."""
    path = root / mutation.path
    text = path.read_text()
    for old, new in mutation.edits:
        text = text.replace(old, new, 1)
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
        "IIC_MUTANT": "1",  # scripts/test.sh skips its `--check`: this copy is mutated on purpose
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


def baseline(
    chosen: list[Mutation], commit: str, scratch: pathlib.Path, keep: bool
) -> list[str] | None:
    """Run the unmutated tests of every chosen mutation; the failing ones (to deselect), or
    None when the run broke (no verdict possible)."""
    # A test failing here cannot tell a mutation apart, so it is deselected from the mutant
    # runs (and named in the summary).
    tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
    unpack(commit, scratch / "baseline")
    rc, secs = run_tests(scratch / "baseline" / "main", tests, scratch / "baseline.log")
    broken = failures(scratch / "baseline.log")
    print(f"[mutate] baseline (unmutated): rc={rc} in {secs:.0f} s", flush=True)
    for line in broken:
        print(f"[mutate]   fails unmutated, deselected below: {line}", flush=True)
    if rc not in (0, 1):
        print(f"[mutate] the unmutated run broke, see {scratch}/baseline.log", file=sys.stderr)
        return None
    if not keep:
        shutil.rmtree(scratch / "baseline")
    return [line.split()[1] for line in broken]


def confirm(
    results: list[dict[str, Any]], commit: str, scratch: pathlib.Path, keep: bool
) -> list[str] | None:
    """``--baseline-after``: run, unmutated, only the tests that caught a mutation; a mutation
    whose catching test fails unmutated too is not counted as caught. The tests that failed
    unmutated (None when the run broke)."""
    tests = tuple(dict.fromkeys(r["caught_by"].split()[1] for r in results if r["caught"]))
    if not tests:
        return []
    unpack(commit, scratch / "baseline")
    rc, secs = run_tests(scratch / "baseline" / "main", tests, scratch / "baseline.log")
    broken = [line.split()[1] for line in failures(scratch / "baseline.log")]
    print(f"[mutate] the catching tests, unmutated: rc={rc} in {secs:.0f} s", flush=True)
    if rc not in (0, 1):
        print(f"[mutate] the unmutated run broke, see {scratch}/baseline.log", file=sys.stderr)
        return None
    for r in results:
        if r["caught"] and r["caught_by"].split()[1] in broken:
            r["caught"] = False
            print(f"[mutate] {r['mutation']}: no verdict, its catching test fails unmutated")
    if not keep:
        shutil.rmtree(scratch / "baseline")
    return broken


def run_one(
    m: Mutation, commit: str, scratch: pathlib.Path, deselect: list[str], keep: bool
) -> dict[str, object]:
    """Apply ``m`` to a fresh copy of ``commit``, run its tests; the verdict as a dict."""
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
    if not keep:
        shutil.rmtree(dest)
    return {
        "mutation": m.name,
        "what": m.what,
        "tests": list(m.tests),
        "rc": rc,
        "caught": caught,
        "caught_by": by,
        "seconds": round(secs, 1),
        "log": str(log),
    }


def section(summary: dict[str, Any]) -> str:
    """The RESULTS.md section of a full run (``--write-results``)."""
    results = summary["results"]
    caught = sum(bool(r["caught"]) for r in results)
    lines = [
        SECTION,
        "",
        f"Each mutation applied to a scratch copy of commit `{summary['commit'][:10]}` and the "
        f"tests that guard it run (`bash scripts/test.sh <tests> -x`). **{caught} of "
        f"{len(results)} caught** ({summary['baseline']}). Unmutated tests that failed: "
        f"{', '.join(summary['deselected']) or 'none'}. Pending (their code not yet "
        f"in this commit): {', '.join(summary['pending']) or 'none'}.",
        "",
        "| mutation | what | verdict | caught by | seconds |",
        "| --- | --- | --- | --- | ---: |",
    ]
    for r in results:
        verdict = "caught" if r["caught"] else f"**NOT CAUGHT** (rc {r['rc']})"
        by = r["caught_by"].removeprefix("FAILED ").split(" - ")[0]
        lines.append(
            f"| `{r['mutation']}` | {r['what']} | {verdict} | `{by}` | {r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default=None, help="commit to mutate (default HEAD; --check: the "
                   "working tree)")  # fmt: skip
    p.add_argument(
        "--scratch",
        default=os.path.join(tempfile.gettempdir(), "iic_mutate"),
        help="where the copies go",
    )
    p.add_argument("--only", action="append", help="run only this mutation (repeatable)")
    p.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    p.add_argument(
        "--baseline-after",
        action="store_true",
        help="run the mutants first, then unmutated only the tests that caught them (faster)",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch copies")
    p.add_argument("--check", action="store_true", help="only check that every mutation "
                   "applies (seconds; no tests run): what CI runs")  # fmt: skip
    p.add_argument("--json", default=None, help="also write the summary to this file")
    p.add_argument(
        "--write-results", action="store_true", help="write the table into benchmarks/RESULTS.md"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    unknown = set(a.only or ()) - {m.name for m in MUTATIONS}
    if unknown:
        known = [m.name for m in MUTATIONS]
        print(f"[mutate] no such mutation: {sorted(unknown)}; known: {known}", file=sys.stderr)
        return EXIT_CANNOT_APPLY
    chosen = [m for m in MUTATIONS if not a.only or m.name in a.only]
    rev = a.rev if a.rev or a.check else "HEAD"
    # Every mutation must apply before any test runs: a stale one stops the run at once.
    why, pending = unapplicable(chosen, reader(rev))
    for line in why:
        print(f"[mutate] CANNOT APPLY {line}", file=sys.stderr, flush=True)
    if why:
        return EXIT_CANNOT_APPLY
    for m in pending:
        print(f"[mutate] pending, skipped: {m.name} (its code lands with {m.pending})")
    chosen = [m for m in chosen if m not in pending]
    if a.check:
        print(f"[mutate] all {len(chosen)} other mutations apply to {rev or 'the working tree'}")
        return 0
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", rev], check=True, capture_output=True, text=True
    ).stdout.strip()
    scratch = pathlib.Path(a.scratch)
    print(f"[mutate] commit {commit}, {len(chosen)} mutations, scratch {scratch}", flush=True)
    deselect: list[str] | None = []
    if not (a.no_baseline or a.baseline_after):
        deselect = baseline(chosen, commit, scratch, a.keep)
        if deselect is None:
            return EXIT_BASELINE
    results = [run_one(m, commit, scratch, deselect or [], a.keep) for m in chosen]
    if a.baseline_after and not a.no_baseline:
        deselect = confirm(results, commit, scratch, a.keep)
        if deselect is None:
            return EXIT_BASELINE
    how = ("no unmutated run" if a.no_baseline else "each catching test then passed "
           "unmutated" if a.baseline_after else "every guarding test first run unmutated, the "
           "failing ones deselected")  # fmt: skip
    summary = {"commit": commit, "deselected": deselect, "results": results,
               "pending": [m.name for m in pending], "baseline": how}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(summary, indent=1) + "\n")
    if a.write_results:
        write_section(SECTION, section(summary))
    return 0 if all(r["caught"] for r in results) else EXIT_SURVIVED


if __name__ == "__main__":
    sys.exit(main())
