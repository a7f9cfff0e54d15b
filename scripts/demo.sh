#!/usr/bin/env bash
# One command, the whole flow on the embedded synthetic sky, with no network:
#   environment -> local Ray head -> synthetic WISE sky -> labelled set -> demo IICnet (Ray Train)
#   -> classify the sky (Ray Data, `ray job submit ... classify_sky.py --healpix-order 5`)
#   -> summary -> stop the Ray head this script started.
# Outputs go under $IIC_SURVEY_HOME (default: ./runs/demo).
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
bash scripts/setup_env.sh

export IIC_SURVEY_HOME=${IIC_SURVEY_HOME:-$PWD/runs/demo}
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 RAY_DATA_DISABLE_PROGRESS_BARS=1
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# The head and its jobs run `python` from the project's environment.
export PATH="$PWD/.venv/bin:$PATH"
mkdir -p "$IIC_SURVEY_HOME"
PY=.venv/bin/python
RAY=.venv/bin/ray

read -r GCS_PORT DASH_PORT <<<"$($PY - <<'PYEOF'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PYEOF
)"
RAY_TMP=$(mktemp -d /tmp/ray_demo_XXXX)
echo "[demo] starting a local Ray head (dashboard http://127.0.0.1:$DASH_PORT)"
setsid "$RAY" start --head --block --disable-usage-stats --node-ip-address=127.0.0.1 \
  --port="$GCS_PORT" --dashboard-port="$DASH_PORT" --dashboard-host=127.0.0.1 \
  --temp-dir="$RAY_TMP" >"$IIC_SURVEY_HOME/ray-head.log" 2>&1 &
HEAD_PID=$!
stop_head() {
  echo "[demo] stopping the Ray head"
  kill -TERM -- "-$HEAD_PID" 2>/dev/null || true
  sleep 3
  kill -KILL -- "-$HEAD_PID" 2>/dev/null || true
  pkill -9 -f "$RAY_TMP" 2>/dev/null || true
  rm -rf "$RAY_TMP"
}
trap stop_head EXIT
for _ in $(seq 120); do
  curl -sf "http://127.0.0.1:$DASH_PORT/api/version" >/dev/null 2>&1 && break
  sleep 1
done

submit() {
  "$RAY" job submit --address "http://127.0.0.1:$DASH_PORT" --working-dir . \
    --runtime-env-json "{\"env_vars\": {\"IIC_SURVEY_HOME\": \"$IIC_SURVEY_HOME\", \"RAY_ADDRESS\": \"127.0.0.1:$GCS_PORT\"}}" \
    -- python "$@"
}

echo "[demo] 1/4 writing the synthetic WISE sky"
submit jobs/make_sky.py "$IIC_SURVEY_HOME/sky" --overwrite
echo "[demo] 2/4 building the labelled training set from the sky's truth table"
submit jobs/build_training_set.py --source synthetic --sky "$IIC_SURVEY_HOME/sky" \
  --out "$IIC_SURVEY_HOME/training_set" --overwrite
echo "[demo] 3/4 training a demo-sized IICnet with Ray Train"
submit jobs/train.py --preset demo --name "demo-$(date +%Y%m%d-%H%M%S)" --data "$IIC_SURVEY_HOME/training_set" \
  --model-dir "$IIC_SURVEY_HOME/model" --storage-path "$IIC_SURVEY_HOME/runs"
echo "[demo] 4/4 classifying the sky with Ray Data"
submit jobs/classify_sky.py --healpix-order 5 --catalog "$IIC_SURVEY_HOME/sky" \
  --model "$IIC_SURVEY_HOME/model" --output "$IIC_SURVEY_HOME/catalog" --overwrite

$PY -m iic_survey summary "$IIC_SURVEY_HOME/catalog"
echo "[demo] writing the visual report (sky maps, confidences, cutout grids, truth metrics)"
$PY -m iic_survey report "$IIC_SURVEY_HOME/catalog" --truth "$IIC_SURVEY_HOME/sky/truth.parquet" \
  --model-dir "$IIC_SURVEY_HOME/model" --out-dir "$IIC_SURVEY_HOME/report"
echo "[demo] report: $IIC_SURVEY_HOME/report/report.md"
echo "[demo] catalog: $IIC_SURVEY_HOME/catalog   (took $(( $(date +%s) - START )) s)"
