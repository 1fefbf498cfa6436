#!/usr/bin/env bash
# The closing device call: the whole GPU test suite, then the engine runs (scripts/device_engine.sh),
# the end-to-end A/B (scripts/device_ab.sh) and the CI sweep (scenarios/sweeps/ci.toml). Everything
# lands in one archive, $OUT/final.tgz (the device tool returns at most 8 files); summaries printed.
# Usage (device machine): bash scripts/device_final.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_final}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -p no:cacheprovider > "$WORK/tests_gpu.log" 2>&1
echo "GPU tests: $(tail -1 "$WORK/tests_gpu.log")"
OUT=$WORK/engine TESTS="" bash scripts/device_engine.sh 512 1024
OUT=$WORK/ab bash scripts/device_ab.sh
timeout 240 python3 -m impbench sweep scenarios/sweeps/ci.toml --out "$WORK/sweep_ci_h100.json" \
  > "$WORK/sweep_ci_h100.md" 2> "$WORK/sweep_ci_h100.err"
echo "== sweep rc=$?"
python3 -m impbench sweep scenarios/sweeps/ci.toml --out "$WORK/sweep_ci_h100.json" --format csv > "$WORK/sweep_ci_h100.csv" 2>/dev/null
tail -n +4 "$WORK/sweep_ci_h100.md"
tar czf "$OUT/final.tgz" -C "$WORK" .
