#!/usr/bin/env bash
# One device call for the engine (issue 5) and the A/B driver (issue 6): their GPU tests, then
# `impbench run` on $MODEL (default qwen3-coder, all layers) for each arm in $ARMS at each prompt
# length given, the graph arms with a per-op profile against the plan floor. Four files under $OUT:
# tests.log, runs.md (every run's report), runs.err (progress), gpu.csv; a short table printed last.
# Usage (device machine): bash scripts/device_engine.sh [pp ...]   (default pp: 512 1024)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_engine}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PPS=${*:-512 1024}
MODEL=${MODEL:-qwen3-coder}
ARMS=${ARMS:-graph:tight graph:small-n eager:cublas}
TESTS=${TESTS-tests/test_engine.py tests/test_run_ab.py tests/test_driver.py}  # TESTS="": none
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$OUT/gpu.csv" 2>&1
if [ -n "$TESTS" ]; then
  timeout 300 python3 -m pytest -q -m gpu -p no:cacheprovider $TESTS > "$OUT/tests.log" 2>&1
  tail -1 "$OUT/tests.log"
fi
summary=""
for pp in $PPS; do
  for arm in $ARMS; do
    mode=${arm%%:*}; guard=${arm##*:}
    extra=""; [ "$mode" = graph ] && extra="--profile"
    report=$(timeout 150 python3 -m impbench run --model "$MODEL" --pp "$pp" --mode "$mode" --guard "$guard" \
             --reps 8 $extra 2>> "$OUT/runs.err")
    rc=$?
    printf '%s\n\n' "$report" >> "$OUT/runs.md"
    median=$(grep -m1 -- '- median' <<< "$report" | sed 's/ (min.*//')
    host=$(grep -m1 -- '- host time' <<< "$report" | sed 's/.*launch: //')
    capture=$(grep -m1 -- '- capture' <<< "$report" | cut -c1-60)
    summary+="$MODEL pp=$pp $mode/$guard rc=$rc ${median#- } host/launch=$host ${capture#- }"$'\n'
  done
done
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv,noheader >> "$OUT/gpu.csv" 2>&1
printf '%s' "$summary"
