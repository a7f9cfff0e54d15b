"""The RESULTS files: each benchmark or study owns one "## " section and replaces only that one.

``benchmarks/RESULTS.md`` holds what ``benchmarks/`` (and ``scripts/mutate.py``) measure,
``experiments/RESULTS.md`` what the studies of ``experiments/`` find.

Every section a script writes is stamped with its provenance (:func:`provenance`): the date,
the git commit measured and whether the tree was dirty, the blob hash of the script that wrote
it (one hash over every ``.py`` file of a study run as ``python -m experiments.x``), the CPU
(model, torch's ``get_cpu_capability()``, native bf16 / AMX / VNNI from ``/proc/cpuinfo``),
the cores, the load before (when this module was imported, i.e. when the
script started) and after, and the exact command. The stamp is one HTML comment (machine
readable, :func:`read_provenance`) and one visible line under the heading.
``tests/test_results.py`` fails when a section lacks it or when its script has changed since.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from typing import Any

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"
"""The speed benchmarks' results (``benchmarks/RESULTS.md``)."""
REPO = RESULTS.parents[1]
EXPERIMENTS = REPO / "experiments" / "RESULTS.md"
"""The studies' results (``experiments/RESULTS.md``)."""
STAMP = "<!-- provenance: "
"""Start of the machine-readable stamp (one line: ``<!-- provenance: {json} -->``)."""
KEYS = ("date", "commit", "dirty", "script", "script_blob", "cpu", "cpu_capability",
        "native_bf16", "amx", "vnni", "cores", "load_before", "load_after", "command")  # fmt: skip
"""What every stamp holds."""
_LOAD_AT_START = os.getloadavg()
_NOT_RESULTS = (":!benchmarks/RESULTS.md", ":!experiments/RESULTS.md")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def cpu_flags() -> dict[str, Any]:
    """CPU model and the features that matter here (``/proc/cpuinfo``; None where unknown)."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or [None, ""])[1].split())
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError):
        capability = None
    return {
        "cpu": model.group(1).strip() if model else None,
        "cpu_capability": capability,
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "amx": bool(flags & {"amx_tile", "amx_bf16", "amx_int8"}),
        "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
        "cores": len(os.sched_getaffinity(0)),
    }


def script_of(argv: list[str]) -> str:
    """The repo-relative path of what ``argv`` ran: the module (``benchmarks/cutouts.py``), or
    the package whose ``__main__.py`` it ran (``experiments/paper``)."""
    path = pathlib.Path(argv[0]).resolve()
    if path.name == "__main__.py" and path.parent != REPO / "benchmarks":
        path = path.parent
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


def command_of(script: str, args: list[str]) -> str:
    """The command line that reruns ``script`` with ``args``: ``python -m`` for a module of
    this repository's benchmarks, experiments or scripts, else the script's path."""
    if script.startswith(("benchmarks/", "experiments/", "scripts/")):
        module = script.removesuffix(".py").replace("/", ".")
        return ".venv/bin/python " + shlex.join(["-m", module, *args])
    return ".venv/bin/python " + shlex.join([script, *args])


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """The stamp of a section written now by the command ``argv`` (default ``sys.argv``)."""
    argv = list(sys.argv if argv is None else argv)
    script = script_of(argv)
    blob = blob_now(script)
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git("rev-parse", "HEAD"),
        # the RESULTS files themselves do not count: `benchmarks all` rewrites them section by
        # section
        "dirty": bool(
            _git("status", "--porcelain", "--untracked-files=no", "--", ".", *_NOT_RESULTS)
        ),
        "script": script,
        "script_blob": blob,
        **cpu_flags(),
        "load_before": [round(x, 2) for x in _LOAD_AT_START],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "command": command_of(script, argv[1:]),
    }


def stamp_lines(p: dict[str, Any]) -> list[str]:
    """The machine-readable comment and the visible line of a stamp."""

    def yn(v: Any) -> str:
        return "yes" if v else "no"

    dirty = "dirty tree" if p["dirty"] else "clean tree"
    return [
        STAMP + json.dumps(p, sort_keys=True) + " -->",
        f"*Measured {p['date']} at commit `{p['commit'][:10]}` ({dirty}) on {p['cpu']} "
        f"(torch CPU capability {p['cpu_capability']}; native bf16 {yn(p['native_bf16'])}, AMX "
        f"{yn(p['amx'])}, VNNI {yn(p['vnni'])}), {p['cores']} cores, load (1/5/15 min) "
        f"{'/'.join(map(str, p['load_before']))} before, "
        f"{'/'.join(map(str, p['load_after']))} after; command: `{p['command']}`*",
    ]


def read_provenance(body: str) -> dict[str, Any] | None:
    """The stamp of a section's text (None without one)."""
    m = re.search(re.escape(STAMP) + r"(\{.*\}) -->", body)
    return json.loads(m.group(1)) if m else None


def sections(text: str) -> dict[str, str]:
    """Heading line -> body (up to the next "## ") of every "## " section."""
    parts = re.split(r"(?m)^(?=## )", text)
    return {p.splitlines()[0]: p for p in parts if p.startswith("## ")}


def stamped(text: str, argv: list[str] | None = None) -> str:
    """``text`` (a section: its heading first) with a fresh stamp under the heading, any old
    stamp dropped."""
    lines = [line for line in text.rstrip("\n").splitlines() if not _is_stamp(line)]
    return "\n".join([lines[0], *stamp_lines(provenance(argv)), *lines[1:]]) + "\n"


def _is_stamp(line: str) -> bool:
    return line.startswith(STAMP) or line.startswith("*Measured ")


def write_section(
    section: str, text: str, path: pathlib.Path = RESULTS, argv: list[str] | None = None
) -> None:
    """Replace the section whose heading is ``section`` (up to the next "## ") with ``text``,
    stamped (:func:`stamped`), or append it; the other sections are left as they are."""
    text = stamped(text, argv)
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        rest = "\n" + old[end + 1 :] if end >= 0 else ""
        new = old[:start] + text.rstrip("\n") + "\n" + rest
    path.write_text(new.rstrip("\n") + "\n")


def blob_now(script: str) -> str | None:
    """The git blob hash of ``script`` as it is in the working tree (None if absent); for a
    package folder, one hash over its ``.py`` files' names and blobs."""
    path = REPO / script
    if path.is_file():
        return _git("hash-object", script)
    files = sorted(str(p.relative_to(REPO)) for p in path.rglob("*.py")) if path.is_dir() else []
    if not files:
        return None
    blobs = _git("hash-object", *files).split()
    listing = "".join(f"{f} {b}\n" for f, b in zip(files, blobs, strict=True))
    return hashlib.sha1(listing.encode()).hexdigest()


def problems(
    text: str, writers: dict[str, str], blob_of: Callable[[str], str | None] = blob_now
) -> list[str]:
    """What makes RESULTS.md's sections untrustworthy, one line each: a section no script
    writes (``writers``: heading -> the command that writes it), a section without a complete
    stamp, or one whose script has changed since it was written (``blob_of``: its hash now)."""
    out = []
    for heading, body in sections(text).items():
        rerun = writers.get(heading)
        if rerun is None:
            out.append(f"section {heading!r} is written by no script: remove it or make it written")
            continue
        p = read_provenance(body)
        missing = "no stamp" if p is None else ", ".join(k for k in KEYS if k not in p)
        if missing:
            out.append(f"section {heading!r} lacks provenance ({missing}): rerun `{rerun}`")
        elif (blob := blob_of(p["script"])) != p["script_blob"]:
            how = "changed" if blob else "moved or removed"
            again = p["command"] if blob else rerun  # a moved script: today's command
            out.append(f"section {heading!r} is stale ({p['script']} {how} since it was "
                       f"written at {p['commit'][:10]}): rerun `{again}`")  # fmt: skip
    return out


def package_changed(p: dict[str, Any], package: str = "iic_survey") -> list[str]:
    """Files of ``package`` that differ now from the stamp's commit (``["?"]`` when that
    commit is not in this repository)."""
    try:
        changed = _git("diff", "--name-only", p["commit"], "--", package)
    except subprocess.CalledProcessError:
        return ["?"]
    return changed.splitlines()
