#!/usr/bin/env bash
# One device call that says where the expert kernel's time goes (issue #4, results/NOTES.md MoE): the bench
# for $VARIANT against wgq, the ablations of tools/moe_ablation.py on $VARIANT, and Nsight Compute of
# $VARIANT (sections, then stall samples per SASS instruction summed by opcode).
# Run from the repository root on the device machine; files go to $OUT/profile.tgz, a summary is printed.
#   VARIANT=wgp ABLATIONS=no_decode,no_mma STAGES="bench ablate ncu" bash scripts/device_moe_profile.sh
set -uo pipefail
OUT=${OUT:-out-profile}; mkdir -p "$OUT"
WORK=$(mktemp -d)
VARIANT=${VARIANT:-wgp}
STAGES=${STAGES:-"bench ablate ncu"}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
has() { [[ " $STAGES " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu,power.draw --format=csv,noheader | tee "$WORK/info.txt"
if has bench; then
  timeout 200 python3 -m impbench moe --model qwen3-coder --pp 512 --routing uniform --routing skewed --reps 100 \
    --variant "$VARIANT" --variants ${BENCH_VARIANTS:-wgq} --out "$WORK/moe.md" > "$WORK/moe.log" 2>&1
  echo "bench rc=$?"; grep -E "^- (uniform|skewed)|^- copy" "$WORK/moe.md"
fi
if has ablate; then
  timeout 420 python3 tools/moe_ablation.py "$WORK/ablation" --variant "$VARIANT" --reps 50 \
    ${ABLATIONS:+--only $ABLATIONS} ${COMBINE:+--combine $COMBINE} ${BASE_DIR:+--base-dir $BASE_DIR} \
    > "$WORK/ablation.md" 2> "$WORK/ablation.err"
  echo "ablation rc=$?"; cat "$WORK/ablation.md"
fi
if has ncu; then
  cat > "$WORK/ncu_moe.py" <<PY
import cupy
from impbench.moe_bench import MoeShapes, _Layer, route
from impbench.presets import get_preset
s = MoeShapes.from_preset(get_preset("qwen3-coder")); layer = _Layer(s, 512, 0); layer.primary = "$VARIANT"
layer.set_routing(*route(512, s.experts, s.top_k, "uniform", 0)); layer.errors([layer.primary])
for _ in range(2):
    layer.ours("gate_up", "$VARIANT"); layer.ours("down", "$VARIANT")
cupy.cuda.Device().synchronize()
PY
  for op in gate_up down; do
    timeout 150 ncu --clock-control none -k regex:moe_nvfp4_${op}_$VARIANT --launch-skip 1 --launch-count 1 \
      --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section InstructionStats \
      --section Occupancy --section SourceCounters --import-source no -o "$WORK/$op" python3 "$WORK/ncu_moe.py" \
      > "$WORK/ncu_$op.log" 2>&1
    echo "ncu $op rc=$?"
    ncu --import "$WORK/$op.ncu-rep" --print-summary none > "$WORK/ncu_$op.txt" 2>&1
    ncu --import "$WORK/$op.ncu-rep" --page source --csv --print-source sass > "$WORK/src_$op.csv" 2> "$WORK/src_$op.err"
    echo "source page rc=$? lines=$(wc -l < "$WORK/src_$op.csv")"
    grep -E "Duration|Issue Slots Busy|Eligible Warps|Warp Cycles Per Issued|Executed Ipc Active|No Eligible" "$WORK/ncu_$op.txt" | cut -c1-120
    python3 scripts/sass_stalls.py "$WORK/src_$op.csv" 2>&1 | head -40
  done
  rm -f "$WORK"/*.ncu-rep.tmp
fi
tar czf "$OUT/profile.tgz" -C "$WORK" .
