#!/usr/bin/env bash
# One device call that measures where the kernel targets stand (issues 3, 4, 5) on the machine it runs
# on: GPU info, the whole GPU test suite, the engine (scripts/device_engine.sh, graph/small-n and eager
# at pp 512 / 1024), `impbench moe` (production variant + $MOE_VARIANTS, both routings), `impbench gemm`
# (every preset's dense shapes), and on request the end-to-end A/B (scripts/device_ab.sh) and the CI
# sweep (scenarios/sweeps/ci.toml). Everything lands in $OUT/$ARCHIVE (default targets.tgz: the device
# tool returns at most 8 files); a short summary is printed last.
# STAGES: any of "tests engine moe gemm ab sweep" (default "tests engine moe gemm").
# BEFORE_KERNELS=<dir>: the moe bench also on that copy of kernels_cu (a before / after on one machine).
# Usage (device machine): IMPBENCH_GIT_COMMIT=<sha> bash scripts/device_targets.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/device_targets}
WORK=$(mktemp -d)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
STAGES=${STAGES:-"tests engine moe gemm"}
ARCHIVE=${ARCHIVE:-targets.tgz}
has() { [[ " $STAGES " == *" $1 "* ]]; }
summary=$(nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu,power.draw --format=csv,noheader)$'\n'
if has tests; then
  timeout ${TEST_TIMEOUT:-240} python3 -m pytest -q -m gpu -p no:cacheprovider > "$WORK/tests_gpu.log" 2>&1
  summary+="GPU tests: $(tail -1 "$WORK/tests_gpu.log")"$'\n'
fi
if has engine; then
  summary+=$(OUT=$WORK/engine TESTS="" ARMS="${ARMS:-graph:small-n eager:cublas}" bash scripts/device_engine.sh 512 1024)$'\n'
fi
if has moe; then
  timeout 240 python3 -m impbench moe --model qwen3-coder --pp 512 --routing uniform --routing skewed \
    --reps 100 ${MOE_VARIANTS:+--variants $MOE_VARIANTS} --out "$WORK/moe.md" > "$WORK/moe.log" 2>&1
  summary+="moe rc=$?"$'\n'$(grep -E "^- (uniform|skewed)|^- copy" "$WORK/moe.md")$'\n'
  if [ -n "${BEFORE_KERNELS:-}" ]; then  # the same bench on an older kernels_cu (IMPBENCH_KERNELS_DIR), same machine
    IMPBENCH_KERNELS_DIR=$BEFORE_KERNELS timeout 240 python3 -m impbench moe --model qwen3-coder --pp 512 \
      --routing uniform --routing skewed --reps 100 --out "$WORK/moe_before.md" > "$WORK/moe_before.log" 2>&1
    summary+="moe before ($BEFORE_KERNELS) rc=$?"$'\n'$(grep -E "^- (uniform|skewed)" "$WORK/moe_before.md")$'\n'
  fi
fi
if has gemm; then
  timeout 300 python3 -m impbench gemm --reps 50 --out "$WORK/gemm.md" > "$WORK/gemm.log" 2>&1
  summary+="gemm rc=$?"$'\n'$(grep -iE 'geomean|geometric' "$WORK/gemm.md")$'\n'
fi
if has ab; then
  OUT=$WORK/ab bash scripts/device_ab.sh
fi
if has sweep; then
  timeout 240 python3 -m impbench sweep scenarios/sweeps/ci.toml --out "$WORK/sweep_ci_h100.json" \
    > "$WORK/sweep_ci_h100.md" 2> "$WORK/sweep_ci_h100.err"
  summary+="sweep rc=$?"$'\n'
  python3 -m impbench sweep scenarios/sweeps/ci.toml --out "$WORK/sweep_ci_h100.json" --format csv \
    > "$WORK/sweep_ci_h100.csv" 2>/dev/null
  summary+=$(tail -n +4 "$WORK/sweep_ci_h100.md")$'\n'
fi
tar czf "$OUT/$ARCHIVE" -C "$WORK" .
printf '%s' "$summary"
