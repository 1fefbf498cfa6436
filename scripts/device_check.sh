#!/usr/bin/env bash
# The one device check: on a machine with an NVIDIA GPU, from the repository root, install the tree,
# run the GPU test suite and the benchmark commands of the CLI, and print a short table last.
#
#   STAGES="tests gemm moe ops run" bash scripts/device_check.sh
#
# Stages (any of): tests (pytest -m gpu), gemm (impbench gemm), gemmfp4 (impbench gemm on qwen3-modelopt at M
# 64-2048: every NVFP4 variant, the refit's input), moe (impbench moe, qwen3-coder, pp 512), ops (impbench ops),
# ops36 (impbench ops at Qwen3.6's shapes, T 512), run (impbench run, qwen3-coder pp 1024 graph/small-n), ab
# (the A/A check: eager against eager at pp 512,1024,2048, 10 reps), gate (the CI gate end to end: qwen3-coder,
# two copies of the graph arm, then one with a planted 200 us per layer; the first must pass, the second fail
# with exit 1), sweep (scenarios/sweeps/ci.toml), gdn (impbench gdn against flash-linear-attention, whose wheels
# travel in .whl: carry it), attn (impbench attn, Gemma-4's attention kernels against PyTorch SDPA), attn512
# (the same, full D 512 layers only, T 2048 and 4096), gemm36 (impbench gemm on Qwen3.6's shapes), run36
# (impbench run, qwen3.6 pp 1024 graph/small-n, profile), sweep36 (scenarios/sweeps/qwen3.6.toml: pp
# 512,1024,2048, eager against graph with the seed, tight and small-n guards), rung4 (impbench run, gemma-4 pp
# 2048 eager, profile), sweepg4 (scenarios/sweeps/gemma-4.toml), ncu (Nsight Compute on the first NCU_COUNT
# launches of kernels matching NCU_KERNEL, a regex, while `impbench $NCU_ARGS` runs; the clocks are left alone:
# --clock-control none).
# BEFORE=<folder>: a checkout of another commit; the benchmark stages (gemm, gemmfp4, moe, ops, ops36, attn512,
# run, run36) run there too, on the same machine and in the same call, so before and after compare like for like
# (AFTER=0: there only).
# Everything lands in $OUT/check.tgz (the device tool brings back at most 8 files); $OUT/summary.txt
# holds the table printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/impbench-check}
STAGES=${STAGES:-"tests gemm moe ops run"}
WORK=${WORK:-$(mktemp -d)}  # a caller may name it, to pack what a timed-out check left
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
has() { [[ " $STAGES " == *" $1 "* ]]; }
# wheels carried in .whl (flash-linear-attention and its einops) go to a side folder on the path
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
summary="$WORK/summary.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee "$summary"

# bench TREE TAG: the benchmark stages, run with the package of checkout TREE (PYTHONPATH: no install)
bench() {
  local tree=$1 tag=$2 log="$WORK/$2"
  mkdir -p "$log"
  # from inside the tree: `python3 -m` puts the working folder first on the path, before PYTHONPATH
  local impbench="env PYTHONPATH=$tree${PYTHONPATH#$PWD} python3 -m impbench"
  pushd "$tree" > /dev/null
  if has gemm; then
    timeout ${GEMM_TIMEOUT:-240} $impbench gemm --reps 50 --out "$log/gemm.md" > "$log/gemm.log" 2>&1
    echo "$tag gemm rc=$? $(grep -h 'geomean' "$log/gemm.md" 2>/dev/null)" >> "$summary"
  fi
  if has gemmfp4; then
    timeout ${GEMMFP4_TIMEOUT:-240} $impbench gemm --model qwen3-modelopt --m 64,128,512,1024,2048 --reps 30 \
      --out "$log/gemm_fp4.md" > "$log/gemmfp4.log" 2>&1
    echo "$tag gemm qwen3-modelopt rc=$? $(grep -h 'geomean' "$log/gemm_fp4.md" 2>/dev/null | tr '\n' ' ')" >> "$summary"
  fi
  if has moe; then
    timeout 240 $impbench moe --model qwen3-coder --pp 512 --routing uniform --routing skewed --reps 100 \
      --out "$log/moe.md" > "$log/moe.log" 2>&1
    echo "$tag moe rc=$?" >> "$summary"
    grep -hE "^- (uniform|skewed)" "$log/moe.md" 2>/dev/null | sed "s/^/$tag   /" >> "$summary"
  fi
  if has ops; then
    timeout 300 $impbench ops --model qwen3-coder --pp 512,2048 --out "$log/ops.md" > "$log/ops.log" 2>&1
    echo "$tag ops rc=$?" >> "$summary"
  fi
  if has ops36; then
    timeout 200 $impbench ops --model qwen3.6 --pp 512 --out "$log/ops_qwen3.6.md" > "$log/ops36.log" 2>&1
    echo "$tag ops qwen3.6 rc=$?" >> "$summary"
    grep -hE "^\| (conv_prep|gated_rmsnorm|conv_state)" "$log/ops_qwen3.6.md" 2>/dev/null | sed "s/^/$tag   /" >> "$summary"
  fi
  if has run; then
    timeout 300 $impbench run --model qwen3-coder --pp 1024 --mode graph --guard small-n --reps 10 --profile \
      > "$log/run.md" 2> "$log/run.err"
    echo "$tag run rc=$? $(grep -m1 -E 'qwen3-coder.*(tok/s|of )|^- median' "$log/run.md")" >> "$summary"
  fi
  if has attn512; then
    timeout 200 $impbench attn --model gemma-4 --layer full --pp 2048,4096 --out "$log/attn_full.md" \
      > "$log/attn512.log" 2>&1
    echo "$tag attn full rc=$?" >> "$summary"
    grep -hE "^\| full" "$log/attn_full.md" 2>/dev/null | sed "s/^/$tag   /" >> "$summary"
  fi
  if has run36; then
    timeout 300 $impbench run --model qwen3.6 --pp 1024 --mode graph --guard small-n --reps 10 --profile \
      > "$log/run_qwen3.6.md" 2> "$log/run_qwen3.6.err"
    echo "$tag run qwen3.6 rc=$? $(grep -m1 -E 'qwen3.6.*(tok/s|of )|^- median' "$log/run_qwen3.6.md")" >> "$summary"
  fi
  popd > /dev/null
}

if has tests; then
  timeout ${TEST_TIMEOUT:-270} python3 -m pytest -q -m gpu -p no:cacheprovider --durations=15 \
    > "$WORK/tests_gpu.log" 2>&1
  echo "GPU tests: $(tail -1 "$WORK/tests_gpu.log")" >> "$summary"
fi
if [ "${AFTER:-1}" = 1 ]; then
  bench "$PWD" after
fi
if [ -n "${BEFORE:-}" ]; then
  bench "$(cd "$BEFORE" && pwd)" before
fi
if has ab; then
  timeout ${AB_TIMEOUT:-200} python3 -m impbench ab --model qwen3-coder --a mode=eager --b mode=eager \
    --pp 512,1024,2048 --reps 10 --out "$WORK/ab_aa.json" > "$WORK/ab_aa.md" 2> "$WORK/ab_aa.err"
  echo "A/A ab rc=$?" >> "$summary"
  grep -E "^\| qwen3.* B " "$WORK/ab_aa.md" >> "$summary"
fi
if has gate; then
  for plant in 0 200; do
    timeout ${GATE_TIMEOUT:-150} python3 -m impbench sweep --model qwen3-coder --pp 1024 --reps 6 \
      --arm mode=graph --arm "mode=graph,delay_us=$plant" --fail-on slower --threshold 1 \
      --out "$WORK/gate_delay$plant.json" > "$WORK/gate_delay$plant.md" 2> "$WORK/gate_delay$plant.err"
    echo "gate delay_us=$plant rc=$? (expect $([ $plant = 0 ] && echo 0 || echo 1)): $(grep -h 'gate ' "$WORK/gate_delay$plant.err")" >> "$summary"
  done
fi
if has sweep; then
  timeout 500 python3 -m impbench sweep ci --out "$WORK/sweep_ci.json" > "$WORK/sweep_ci.md" \
    2> "$WORK/sweep_ci.err"
  echo "sweep ci rc=$?" >> "$summary"
  grep -E "^\| qwen3" "$WORK/sweep_ci.md" | head -30 >> "$summary"
fi
if has gdn; then
  timeout 300 python3 -m impbench gdn --pp 512,1024,2048 --out "$WORK/gdn.md" > "$WORK/gdn.log" 2>&1
  echo "gdn rc=$?" >> "$summary"; tail -8 "$WORK/gdn.md" >> "$summary" 2>/dev/null
fi
if has attn; then
  timeout 300 python3 -m impbench attn --model gemma-4 --pp 1024,2048,4096 --out "$WORK/attn.md" > "$WORK/attn.log" 2>&1
  echo "attn rc=$?" >> "$summary"; grep -E "^\|" "$WORK/attn.md" >> "$summary" 2>/dev/null
fi
if has gemm36; then
  timeout 240 python3 -m impbench gemm --model qwen3.6 --reps 50 --out "$WORK/gemm_qwen3.6.md" > "$WORK/gemm36.log" 2>&1
  echo "gemm qwen3.6 rc=$? $(grep -h 'geomean' "$WORK/gemm_qwen3.6.md" 2>/dev/null)" >> "$summary"
fi
if has sweep36; then
  timeout ${SWEEP36_TIMEOUT:-500} python3 -m impbench sweep qwen3.6 --out "$WORK/ab_qwen3.6.json" \
    > "$WORK/ab_qwen3.6.md" 2> "$WORK/ab_qwen3.6.err"
  echo "sweep qwen3.6 rc=$?" >> "$summary"
  grep -E "^\| qwen3.6" "$WORK/ab_qwen3.6.md" | head -12 >> "$summary"
fi
if has rung4; then
  timeout 300 python3 -m impbench run --model gemma-4 --pp 2048 --mode eager --reps 10 --profile \
    > "$WORK/run_gemma-4.md" 2> "$WORK/run_gemma-4.err"
  echo "run gemma-4 rc=$? $(grep -m1 -E 'gemma.*(tok/s|of )|^- median' "$WORK/run_gemma-4.md")" >> "$summary"
fi
if has sweepg4; then
  timeout ${SWEEPG4_TIMEOUT:-500} python3 -m impbench sweep gemma-4 --out "$WORK/ab_gemma-4.json" \
    > "$WORK/ab_gemma-4.md" 2> "$WORK/ab_gemma-4.err"
  echo "sweep gemma-4 rc=$?" >> "$summary"
  grep -E "^\| gemma" "$WORK/ab_gemma-4.md" | head -24 >> "$summary"
fi
if has ncu; then
  timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k "regex:${NCU_KERNEL:-gated_delta}" --launch-count ${NCU_COUNT:-2} \
    --section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section SchedulerStats \
    --section WarpStateStats --section LaunchStats --section Occupancy --section SourceCounters \
    python3 -m impbench ${NCU_ARGS:-gdn --pp 512 --reps 3} > "$WORK/ncu.txt" 2> "$WORK/ncu.err"
  echo "ncu rc=$? ($(grep -c '^  [a-z_0-9]* (' "$WORK/ncu.txt") kernels)" >> "$summary"
  grep -E "^  [a-z_0-9]+ \(|Duration|Issue Slots Busy|No Eligible|Warp Cycles Per Issued|Achieved Occupancy|L2 Cache Throughput|DRAM Throughput" \
    "$WORK/ncu.txt" >> "$summary"
fi
cp "$summary" "$OUT/summary.txt"
tar czf "$OUT/check.tgz" -C "$WORK" .
cat "$summary"
