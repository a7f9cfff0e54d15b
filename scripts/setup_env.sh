#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment in .venv and install the package with
# its test extra. Idempotent: a second run only checks that everything is importable.
#
# torch: `pip install torch==2.13.0` takes the CPU wheel on the project's build machines, where
# pip is configured with a local wheel directory. On an ordinary Linux machine the same line
# fetches PyPI's CUDA build, which is what a GPU user wants. For a CPU-only machine elsewhere set
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# to avoid the multi-GB CUDA download.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# Ready means: the imports work AND the environment was installed from this pyproject.toml (a
# dependency added since the last install would otherwise be missing from an existing .venv).
STAMP=.venv/.iic_survey_pyproject.sha256
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" = "$WANT" ] &&
  .venv/bin/python -c "import iic_survey, torch, ray, hats, lsdb, moto, importlinter, nbclient, ipykernel, mocpy" >/dev/null 2>&1; then
  echo "[setup] .venv is ready"
  exit 0
fi
echo "[setup] installing torch==$TORCH_VERSION"
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/pip install -q "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL"
else
  .venv/bin/pip install -q "torch==$TORCH_VERSION"
fi
echo "[setup] installing iic_survey[test]"
.venv/bin/pip install -q -e ".[test]"
.venv/bin/python -c "import iic_survey, torch, ray; print('[setup] torch', torch.__version__, '| ray', ray.__version__, '| cuda', torch.cuda.is_available())"
echo "$WANT" > "$STAMP"
