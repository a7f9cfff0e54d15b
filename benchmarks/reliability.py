"""Reliability: run the fault and bad-input tests (tests/integration/), write their figures.

The fault tests inject each fault for real (SIGKILL of Ray workers and of the driver, an IBE
stand-in over HTTP answering 503s, truncated FITS and answers held past the client's read
time-out, S3 writes refused by a layer in front of a moto server) and measure, per fault, the
faults injected, the faults survived (all of a run's faults count as survived only if its
catalog equals a clean run's, row for row) and the rows lost and duplicated against the input.
Each test writes those figures to ``$IIC_RELIABILITY_DIR/reliability_faults.json``; this script
runs the tests with that folder set and turns the file into the section, so no figure is copied
by hand. The same for bad input: tests/integration/test_bad_input.py feeds
``jobs/classify_sky.py`` each kind of bad input and records, per kind, the behaviour and what
it measured (rows flagged, rows lost against the input, what was written) in
``reliability_bad_input.json``, which becomes the section "Reliability: bad input".

Run from the repository root (the tests start their own local Ray head, moto and IBE servers)::

    .venv/bin/python -m benchmarks.reliability                  # both sections
    .venv/bin/python -m benchmarks.reliability --only bad_input # one of them
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from benchmarks.results import write_section

SECTION = "## Reliability: faults (tests/integration/test_faults.py)"
BAD_INPUT_SECTION = "## Reliability: bad input (tests/integration/test_bad_input.py)"
REPO = pathlib.Path(__file__).resolve().parents[1]


def run_tests(
    folder: pathlib.Path, test_file: str = "tests/integration/test_faults.py"
) -> tuple[int, float]:
    """(pytest's exit status, wall seconds) of one test file, its figures into ``folder``."""
    env = {
        **os.environ,
        "IIC_RELIABILITY_DIR": str(folder),
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    t0 = time.monotonic()
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file]
    code = subprocess.run(cmd, cwd=REPO, env=env, check=False).returncode
    return code, time.monotonic() - t0


def row(entry: dict) -> str:
    """One table row of a fault's figures ('-' where the test does not measure one)."""
    kinds = entry.get("faults_by_kind")
    by_kind = ", ".join(f"{k} {v}" for k, v in (kinds or {}).items())
    what = entry["fault"] + (f" ({by_kind})" if by_kind else "")
    extra = [
        f"{k.replace('_', ' ')} {entry[k]}"
        for k in (
            "requests",
            "rows_fetch_failed_after_retries",
            "actor_restarts",
            "pixels_redone_by_rerun",
            "pixels_committed_before_stop",
            "reader_looks",
            "partial_pixels_seen_by_reader",
            "run_outcome",
        )
        if k in entry
    ]
    rows = f"{entry['rows_in']:,} / {entry['rows_out']:,}" if "rows_in" in entry else "-"
    cells = [
        what + (f"; {'; '.join(extra)}" if extra else ""),
        str(entry.get("faults_injected", "-")),
        str(entry.get("faults_survived", "-")),
        rows,
        str(entry.get("rows_lost", "-")),
        str(entry.get("rows_duplicated", "-")),
    ]
    return "| " + " | ".join(cells) + " |"


def section(entries: list[dict], code: int, wall_s: float, load: tuple[float, ...]) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        SECTION,
        "",
        f"Written by `benchmarks/reliability.py` on {when}: tests/integration/test_faults.py "
        f"{'passed' if code == 0 else f'FAILED (exit {code})'} in {wall_s:.0f} s, on "
        f"{os.cpu_count()} cores ({platform.machine()}), load average before "
        f"{' / '.join(f'{x:.2f}' for x in load)}; one local Ray head, the tiny sky (2,000 "
        "sources, 6 order-5 pixels), an untrained tiny IICnet. A fault counts as survived only "
        "when the run's catalog equals the clean run's row for row; rows lost and duplicated are "
        "counted against the input's cntr.",
        "",
        "| fault | injected | survived | rows in / out | lost | duplicated |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    return "\n".join(head + [row(e) for e in entries]) + "\n"


_MEASURED_SKIP = ("kind", "behaviour", "rows_lost", "written")


def bad_input_row(entry: dict) -> str:
    """One table row of a bad-input kind: what the test recorded, '-' where it measured none."""
    measured = [
        f"{k.replace('_', ' ')} {v:,}"
        if isinstance(v, int) and not isinstance(v, bool)
        else f"{k.replace('_', ' ')} {v}"
        for k, v in entry.items()
        if k not in _MEASURED_SKIP
    ]
    cells = [
        entry["kind"],
        entry.get("behaviour", "-"),
        "; ".join(measured) or "-",
        str(entry.get("written", "-")),
        str(entry.get("rows_lost", "-")),
    ]
    return "| " + " | ".join(cells) + " |"


def bad_input_section(entries: list[dict], code: int, wall_s: float, load: tuple) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        BAD_INPUT_SECTION,
        "",
        f"Written by `benchmarks/reliability.py` on {when}: tests/integration/test_bad_input.py "
        f"{'passed' if code == 0 else f'FAILED (exit {code})'} in {wall_s:.0f} s, on "
        f"{os.cpu_count()} cores ({platform.machine()}), load average before "
        f"{' / '.join(f'{x:.2f}' for x in load)}; one local Ray head, each bad input fed to "
        "`jobs/classify_sky.py`'s `main`. Every cell comes from the test's "
        "`reliability_bad_input.json`: rows lost are counted against the input's cntr; "
        "'written' is what the test found in the output folder after an error.",
        "",
        "| bad input | behaviour | measured | written | rows lost |",
        "| --- | --- | --- | --- | ---: |",
    ]
    tail = [
        "",
        "Training that loses a worker mid-epoch and resumes from its checkpoint (FailureConfig) "
        "is tested by tests/integration/test_train_job.py "
        "(`test_a_worker_killed_mid_epoch_recovers_and_the_job_writes_a_model_dir`).",
    ]
    return "\n".join(head + [bad_input_row(e) for e in entries] + tail) + "\n"


def run_one(what: str) -> int:
    """Run one test file, write its section; pytest's exit status."""
    test_file, name = {
        "faults": ("tests/integration/test_faults.py", "reliability_faults.json"),
        "bad_input": ("tests/integration/test_bad_input.py", "reliability_bad_input.json"),
    }[what]
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        code, wall_s = run_tests(folder, test_file)
        path = folder / name
        entries = json.loads(path.read_text()) if path.exists() else []
    if what == "faults":
        heading, text = SECTION, section(entries, code, wall_s, load)
    else:
        heading, text = BAD_INPUT_SECTION, bad_input_section(entries, code, wall_s, load)
    write_section(heading, text)
    print(text)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["faults", "bad_input"], help="one section only")
    args = parser.parse_args(argv)
    codes = [run_one(w) for w in ([args.only] if args.only else ["faults", "bad_input"])]
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
