"""``python -m benchmarks.precision plans|split [options]``: one of the precision benchmarks."""

from __future__ import annotations

import sys

from benchmarks.precision import plans, split

BENCHMARKS = {"plans": plans.main, "split": split.main}


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark the first argument names with the rest of the arguments."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: python -m benchmarks.precision {{{','.join(BENCHMARKS)}}} [options]")
        return 2
    return BENCHMARKS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
