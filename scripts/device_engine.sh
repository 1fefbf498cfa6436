#!/usr/bin/env bash
# One device call for the engine (issue 5) and the A/B driver (issue 6): their GPU tests, then
# `impbench run` on qwen3-coder (all 48 layers) in graph and eager mode at the issue's prompt lengths,
# with a per-op profile against the plan floor. Logs under $OUT; a short table last.
# Usage (device machine): bash scripts/device_engine.sh [pp ...]   (default pp: 512 1024)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_engine}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
PPS=${*:-512 1024}
MODEL=${MODEL:-qwen3-coder}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv > "$OUT/gpu_before.csv" 2>&1
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout 240 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_engine.py tests/test_run_ab.py > "$OUT/tests_engine.log" 2>&1
  tail -3 "$OUT/tests_engine.log"
fi
for pp in $PPS; do
  for mode in graph eager; do
    extra=""; [ "$mode" = graph ] && extra="--profile"
    timeout 150 python3 -m impbench run --model "$MODEL" --pp "$pp" --mode "$mode" --reps 8 $extra \
      > "$OUT/run_${MODEL}_${mode}_${pp}.md" 2> "$OUT/run_${MODEL}_${mode}_${pp}.err"
    echo "$MODEL $mode pp=$pp rc=$?: $(grep -m1 -- '- median' "$OUT/run_${MODEL}_${mode}_${pp}.md") $(grep -m1 -- '- capture' "$OUT/run_${MODEL}_${mode}_${pp}.md")"
    tail -1 "$OUT/run_${MODEL}_${mode}_${pp}.err"
  done
done
nvidia-smi --query-gpu=name,clocks.sm,temperature.gpu,power.draw --format=csv > "$OUT/gpu_after.csv" 2>&1
