#!/usr/bin/env bash
# The GPU check of issue 25 (item 6), in one go, within 8 minutes on one lent GPU (the step
# limits add up to 460 s):
#   1. tests/integration/test_gpu.py (the CUDA paths equal the CPU's);
#   2. python -m benchmarks.gpu (model alone, RGB on the GPU, the actor end to end), short windows;
#   3. python -m benchmarks.feeding --gpus 1 (the whole job with GPU actors, null and paper-sized).
# Each step has its own time limit and the script goes on after a failure, so one slow step
# cannot eat the others' time; with --write-results the benchmarks write their RESULTS.md
# sections (benchmarks/results.py). Without a CUDA device it says so and exits 2 after the tests
# (which skip themselves): nothing else to measure.
#
#   benchmarks/gpu_check.sh                  # prints the results
#   benchmarks/gpu_check.sh --write-results  # also updates benchmarks/RESULTS.md
#   OUT=/some/dir benchmarks/gpu_check.sh    # logs there (default: $OUT, else a temp dir)
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
WRITE=${1:-}
LOGS=${OUT:-$(mktemp -d)}
mkdir -p "$LOGS"
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 MPLBACKEND=Agg
status=0

step() {  # step NAME SECONDS COMMAND...: run with a limit, log, remember a failure
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0)) s (log: $LOGS/$name.log)"
    tail -n 40 "$LOGS/$name.log"
    [ "$rc" -eq 0 ] || status=1
    return "$rc"
}

echo "load: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: none"
step tests 90 "$PY" -m pytest tests/integration/test_gpu.py -q -p no:cacheprovider
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: the GPU tests skipped themselves; nothing to benchmark"
    exit 2
fi
# bench_gpu: model alone at 2 batches x 3 precisions (x compile), the GPU RGB, the actor.
step bench_gpu 200 "$PY" -m benchmarks.gpu --window 1.0 --batches 1024 4096 \
    --n-sources 20000 --actor-sources 20000 $WRITE
# The feeding benchmark on GPU actors: a 20,000-source sky (written once, ~20 s), the stages
# alone, then the whole job and a small one for each model. One CPU per GPU actor, the rest cut.
step feeding 170 "$PY" -m benchmarks.feeding --gpus 1 --num-cpus "$(nproc)" \
    --n-sources 20000 --alone-pixels 2 --idle-s 3 $WRITE
exit "$status"
