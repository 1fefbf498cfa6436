#!/usr/bin/env bash
# One device call for issue 6's end-to-end A/B: `impbench ab` on $MODEL (default qwen3-coder, all
# layers) at pp 512,1024,2048 with 10 reps, once with the default arms (A eager/cublas, B graph/tight)
# and once with B = graph/permissive (GUARDS="tight permissive small-n" picks the B guards). Results (JSON +
# CSV + markdown per guard) under $OUT; tables printed last.
# Usage (device machine): bash scripts/device_ab.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_ab}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
MODEL=${MODEL:-qwen3-coder}
PP=${PP:-512,1024,2048}
for variant in ${GUARDS:-tight permissive}; do
  b="mode=graph,guard=$variant"
  timeout 240 python3 -m impbench ab --model "$MODEL" --pp "$PP" --reps 10 --b "$b" \
    --out "$OUT/ab_${MODEL}_${variant}.json" > "$OUT/ab_${MODEL}_${variant}.md" 2>> "$OUT/ab.err"
  echo "== B = $b: rc=$?"
  head -8 "$OUT/ab_${MODEL}_${variant}.md"
done
