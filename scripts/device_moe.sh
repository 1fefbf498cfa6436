#!/usr/bin/env bash
# One device call for the NVFP4 MoE work (issue #4): build facts (registers, SASS mix), a diagnostic
# correctness pass with error maps, the GPU tests, generator throughput, the benchmark table, and
# Nsight Compute sections of both kernels. Run from the repository root on the device machine; logs
# and results go to $OUT (default ./out-moe).
#   STAGES="info build diag tests gen bench models ncu" bash scripts/device_moe.sh
set -uo pipefail
OUT=${OUT:-out-moe}; mkdir -p "$OUT"
STAGES=${STAGES:-"info build diag tests gen bench"}
export OUT PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has info; then
  { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'nvrtc', cupy.cuda.nvrtc.getVersion())"
    lscpu | grep 'Model name'; } 2>&1 | tee "$OUT/info.txt"
fi

if has build; then  # compile through NVRTC as the package does, then registers / spills / SASS mix
  timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/build.txt"
import glob, os, subprocess, time
from impbench.kernels import moe, get_function
t = time.time(); moe.prewarm(); get_function("nvfp4_gen", "nvfp4_generate"); print(f"compile+load {time.time()-t:.1f}s")
for name in ("moe_nvfp4_gate_up", "moe_nvfp4_down"):
    k = get_function("moe_nvfp4", name)
    print(name, {a: k.attributes[a] for a in ("num_regs", "local_size_bytes", "shared_size_bytes", "max_threads_per_block")})
cubins = [p for p in glob.glob(os.path.expanduser("~/.cupy/kernel_cache/*")) if b"moe_nvfp4_gate_up" in open(p, "rb").read()]
if cubins:
    blob = open(cubins[0], "rb").read(); open("/tmp/moe.cubin", "wb").write(blob[blob.find(b"\x7fELF"):])
    sass = subprocess.run(["cuobjdump", "-sass", "/tmp/moe.cubin"], capture_output=True, text=True).stdout
    open(os.environ["OUT"] + "/moe.sass", "w").write(sass)
    for fn in sass.split("Function : ")[1:]:
        print(fn.split("\n")[0], {op: fn.count(op) for op in ("HMMA.16816", "HMUL2", "LDS.128", "LDS.U16", "LDGSTS", "PRMT", "LOP3", "SHF", "LDL", "STL", "BAR.SYNC")})
PY
fi

if has diag; then  # small and real shapes; on a mismatch, a map of wrong 8x8 blocks (rows x columns)
  timeout 200 python3 - <<'PY' 2>&1 | tee "$OUT/diag.txt"
import sys, numpy as np, cupy
sys.path.insert(0, "tests")
from test_moe import Problem, _ref_gate_up, _ref_down
def show(name, got, ref):
    got = got.astype(np.float64); bad = ~(np.abs(got - ref) <= 2e-2 * (1 + np.abs(ref)))
    rel = np.linalg.norm(np.nan_to_num(got, nan=1e4) - ref) / np.linalg.norm(ref)
    line = f"  {name}: rel {rel:.2e} nan {int(np.isnan(got).sum())} bad {int(bad.sum())}/{bad.size}"
    if bad.any():
        r, c = bad.shape; pad = np.zeros((-(-r // 8) * 8, -(-c // 8) * 8), bool); pad[:r, :c] = bad
        blocks = pad.reshape(pad.shape[0] // 8, 8, pad.shape[1] // 8, 8).any(axis=(1, 3))
        line += "\n    " + "\n    ".join("".join("#" if x else "." for x in row[:96]) for row in blocks[:40])
    print(line, flush=True)
for args in [(6, 320, 192, 40, 4), (4, 128, 64, 37, 3), (3, 64, 64, 200, 1), (8, 2048, 768, 96, 8)]:
    for kind in ("random", "one_expert", "uniform"):
        p = Problem(*args, seed=1, gpu_weights=args[1] == 2048).route(kind); p.poison(); p.launch()
        cupy.cuda.Device().synchronize()
        off, rt, rw = p.routing
        print(f"E,H,I,T,k={args} {kind} counts={np.diff(off).tolist()[:16]}")
        show("gate_up", p.act.get(), _ref_gate_up(p.x_host, rt, off, p.w13_deq))
        show("down", p.out.get(), _ref_down(p.h_host, off, p.w2_deq, rw))
PY
fi

if has tests; then
  timeout 300 python3 -m pytest -q -m gpu tests/test_moe.py tests/test_nvfp4.py 2>&1 | tee "$OUT/tests.txt" | tail -30
fi

if has gen; then  # generator throughput: every expert weight of the whole Qwen3-Coder model
  timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/gen.txt"
import time, cupy
from impbench.nvfp4 import generate_experts_gpu
from impbench.presets import get_preset
p = get_preset("qwen3-coder"); e, h, i = p.num_experts, p.hidden_size, p.moe_intermediate_size
generate_experts_gpu(e, 2 * i, h, seed=0); cupy.cuda.Device().synchronize()
t = time.perf_counter(); keep = []
for layer in range(p.num_layers):
    keep.append(generate_experts_gpu(e, 2 * i, h, seed=2 * layer)); keep.append(generate_experts_gpu(e, h, i, seed=2 * layer + 1))
cupy.cuda.Device().synchronize(); dt = time.perf_counter() - t
params = p.num_layers * e * 3 * h * i; nbytes = sum(a.nbytes for w in keep for a in w)
print(f"{p.name}: {p.num_layers} layers x {e} experts, {params/1e9:.1f}e9 expert weights, {nbytes/1e9:.1f} GB NVFP4 in {dt:.2f} s ({params/dt/1e9:.0f}e9 weights/s)")
PY
fi

if has bench; then
  timeout 240 python3 -m impbench moe --model qwen3-coder --pp 512 --routing uniform --routing skewed --reps 50 \
    --out "$OUT/moe_h100.md" 2>"$OUT/bench.err" | tail -20
  tail -5 "$OUT/bench.err"
fi

if has models; then  # the other presets' expert shapes, for the notes
  for m in gemma-4 qwen3.6; do
    timeout 120 python3 -m impbench moe --model $m --pp 512 --routing uniform --reps 20 --format csv 2>>"$OUT/models.err" | tee "$OUT/moe_$m.csv"
  done
fi

if has ncu; then  # Nsight Compute sections of both kernels, Qwen3-Coder shapes, uniform routing
  cat > /tmp/ncu_moe.py <<'PY'
import cupy
from impbench.moe_bench import MoeShapes, _Layer, route
from impbench.presets import get_preset
s = MoeShapes.from_preset(get_preset("qwen3-coder")); layer = _Layer(s, 512, 0)
layer.set_routing(*route(512, s.experts, s.top_k, "uniform", 0))
for _ in range(2):
    layer.ours_gate_up(); layer.ours_down()
cupy.cuda.Device().synchronize()
PY
  timeout 240 ncu --clock-control none -k regex:moe_nvfp4 --launch-skip 2 --launch-count 2 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats --section InstructionStats python3 /tmp/ncu_moe.py > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "^  moe|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache|Issue Slots|Issued Warp|Eligible|Achieved Occupancy|Stall|No Eligible|Registers|Executed Ipc" "$OUT/ncu.txt" | head -60
fi
