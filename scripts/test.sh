#!/usr/bin/env bash
# Run the configured tools (ruff, ruff format, mypy, import layers), then the whole test suite (the
# README's test command). Every service the tests need (a local Ray head, a moto S3 server, an
# IRSA-like HTTP server) is started by the tests themselves.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MPLBACKEND=Agg
# Every mutation of scripts/mutate.py still applies to the code (patterns only, no tests run):
# a refactor that moves a mutated line fails here, not silently in the next mutation run.
# (Skipped inside a mutant copy, where one mutation is applied on purpose.)
if [ -z "${IIC_MUTANT:-}" ]; then
  echo "[test] mutations apply"
  .venv/bin/python -m scripts.mutate --check
fi
# The configured tools, before any test: lint, format, types (the package), and the import
# layers (pyproject.toml [tool.importlinter]: an upward import or an import circle fails here).
# (Skipped inside a mutant copy: a mutation must be caught by a test, not by a linter.)
if [ -z "${IIC_MUTANT:-}" ]; then
  echo "[test] ruff check, ruff format --check, mypy, lint-imports"
  .venv/bin/ruff check .
  .venv/bin/ruff format --check .
  .venv/bin/mypy
  .venv/bin/lint-imports --no-cache
fi
# A forced capability the CPU lacks (ATEN_CPU_CAPABILITY=avx512 on an AVX2 CPU) is refused
# here: torch would report it while running other kernels.
.venv/bin/python -c "from iic_survey.model import machine; machine.check_forced()" \
  || { echo "[test] refused: unset ATEN_CPU_CAPABILITY or force a level this CPU has" >&2; exit 2; }
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
if [ "$rc" -ne 0 ] || [ "$#" -ne 0 ] || [ "${IIC_SKIP_FORCED_ISA:-0}" = 1 ]; then
  exit "$rc"  # a chosen subset (arguments given) runs once
fi
# The numerics-sensitive tests again with lower instruction sets forced (AVX2, then torch's
# generic kernels), so this machine also runs what an AVX2-only CPU runs (issue 24).
echo "[test] forced-ISA pass"
.venv/bin/python scripts/forced_isa.py
