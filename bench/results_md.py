"""bench/RESULTS.md: each benchmark owns one "## " section and replaces only that one."""

from __future__ import annotations

import pathlib

RESULTS = pathlib.Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, text: str, path: pathlib.Path = RESULTS) -> None:
    """Replace the section whose heading is ``section`` (up to the next "## ") with ``text``,
    or append it; the other sections are left as they are."""
    old = path.read_text() if path.exists() else "# Benchmark results\n\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = old.find("\n## ", start + len(section))
        rest = "\n" + old[end + 1 :] if end >= 0 else ""
        new = old[:start] + text.rstrip("\n") + "\n" + rest
    path.write_text(new.rstrip("\n") + "\n")
