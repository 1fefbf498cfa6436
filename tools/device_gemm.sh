#!/usr/bin/env bash
# One device call for the GEMM work (issue #3): build check, per-variant diagnostics, GPU tests,
# a calibration sweep of every variant and the final table. Run from the repository root on the
# device machine; logs and results go to $OUT (default ./out-gemm).
#   STAGES="info diag tests sweep final ncu probe trace" bash tools/device_gemm.sh
# (sweep times the tma variants, or SWEEP_VARIANTS, on every model shape: the time model's calibration;
#  ncu is an experiment for docs/notes/gemm.md: Nsight Compute sections of our kernel and cuBLAS's.)
set -uo pipefail
OUT=${OUT:-out-gemm}; mkdir -p "$OUT"
STAGES=${STAGES:-"info diag tests sweep final"}
export OUT PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has info; then
  { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'nvrtc', cupy.cuda.nvrtc.getVersion())"
    lscpu | grep 'Model name'; } 2>&1
fi

if has diag; then  # every variant on small structured shapes; error maps where wrong
  # one process per group of variants, so a kernel that hangs (a barrier bug) costs only its group
  cat > /tmp/diag.py <<'PY'
import os, sys, time, cupy
from impbench.kernels import gemm as g
group = sys.argv[1]
t = time.time(); g.prewarm(); print(f"[{group}] compile+load {time.time()-t:.1f}s, device {g.device_info()}", flush=True)
if group == "mma":
    import glob, subprocess
    cubins = [p for p in glob.glob(os.path.expanduser("~/.cupy/kernel_cache/*")) if b"gemm_tma_128x256c2" in open(p, "rb").read()]
    if cubins:  # CuPy prefixes its cache files with a hash: cut at the ELF magic
        blob = open(cubins[0], "rb").read(); open("/tmp/gemm.cubin", "wb").write(blob[blob.find(b"\x7fELF"):])
        done = subprocess.run(["cuobjdump", "-sass", "/tmp/gemm.cubin"], capture_output=True, text=True)
        print("cuobjdump:", done.returncode, done.stderr[:300], "sm_90a" if b"sm_90a" in blob else "not sm_90a")
        for op in ("HGMMA", "HMMA", "UTMALDG", "LDL", "STL"):
            print(op, done.stdout.count(op + "."), end="; ")
        print()
def check(name, m, n, k):
    rng = cupy.random.default_rng(m + n + k)
    a = rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16)
    w = (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16)
    out = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
    g.gemm(a, w, out, variant=name); cupy.cuda.Device().synchronize()
    again = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
    g.gemm(a, w, again, variant=name); cupy.cuda.Device().synchronize()
    same = bool((out.view(cupy.uint16) == again.view(cupy.uint16)).all())
    ref = a.astype(cupy.float32) @ w.astype(cupy.float32).T
    diff = cupy.abs(out.astype(cupy.float32) - ref); bad = ~(diff <= 0.02 * (1 + cupy.abs(ref)))
    rel = float(cupy.linalg.norm(cupy.nan_to_num(out.astype(cupy.float32), nan=1e4) - ref) / cupy.linalg.norm(ref))
    line = f"{name:16s} {m}x{n}x{k}: rel {rel:.2e} bad {int(bad.sum())}/{m*n}{'' if same else ' NOT DETERMINISTIC'}"
    if int(bad.sum()) and m % 8 == 0 and n % 8 == 0:
        blocks = cupy.asnumpy(bad.reshape(m // 8, 8, n // 8, 8).any(axis=(1, 3)))
        line += "\n    bad 8x8 blocks (rows of the map = 8 rows of C):\n    " + "\n    ".join(
            "".join("#" if x else "." for x in row[:64]) for row in blocks[:32])
    print(line, flush=True)
    return rel < 2e-3 and same
def in_group(v):
    if v.family == "tsk": return group == "tsk"
    if v.family != "tma": return group == "mma"
    kind = "sk" if v.split_k > 1 else "c2" if v.multicast > 1 else "s" if v.name.endswith("s") else "c1"
    return group == kind
for v in [v for v in g.candidates("small-n") if in_group(v)]:
    good = True
    shapes = [(2 * v.bm, 2 * v.bn, 1024), (100, 77, 200)]  # unchanged since their last device run
    if v.family == "tsk":
        shapes = [(64, v.bn, 64), (64, v.bn, 8192), (1024, 128, 2048), (2048, 256, 2816)] + shapes
        shapes += [(300, 3 * v.bn + 8, 520)]
        print(f"  {v.name}: max active clusters {g.max_clusters(v.name)}", flush=True)
    if v.family == "tma":
        shapes = [(v.bm, v.bn, 16), (v.bm, v.bn, 128)] + shapes
        shapes += [(300, 3 * v.bn + 8, 520), (1040, 4200, 136)]
        if v.cluster > 1: print(f"  {v.name}: max active clusters {g.max_clusters(v.name)}", flush=True)
    for shape in shapes:
        good &= check(v.name, *shape)
    if good:
        open("/tmp/ok_variants.txt", "a").write(v.name + "\n")  # as we go: a fault ends the process
PY
  rm -f /tmp/ok_variants.txt
  for group in ${DIAG_GROUPS:-tsk mma c1 s sk c2}; do timeout 60 python3 /tmp/diag.py $group; echo "diag $group rc=$?"; done > "$OUT/diag.txt" 2>&1
  grep -E "rc=|compile|clusters|HGMMA|rel [1-9]\.[0-9]*e-0[0-3]|bad [1-9]|NOT|Error|error" "$OUT/diag.txt" | head -40
  if [[ ${DIAG_RESTRICT:-1} == 1 && -s /tmp/ok_variants.txt ]]; then export IMPBENCH_GEMM_VARIANTS=$(paste -sd, /tmp/ok_variants.txt); fi
  echo "variants passing diag: ${IMPBENCH_GEMM_VARIANTS:-none}"
fi

if has tests; then
  timeout ${TEST_TIMEOUT:-150} python3 -m pytest -q -m gpu tests/test_gemm.py ${TEST_ARGS:-} 2>&1 | tee "$OUT/tests.txt" | tail -30
fi

if has sweep; then  # every variant on every model shape: calibration of the time model
  SWEEP_VARIANTS=${SWEEP_VARIANTS:-$(echo "${IMPBENCH_GEMM_VARIANTS:-}" | tr , '\n' | grep '^tma_' | paste -sd,)}
  # SWEEP_SHAPES (e.g. "--shape 1024x128x2048 --shape ...") narrows the sweep to those shapes
  timeout ${SWEEP_TIMEOUT:-240} python3 -m impbench gemm ${SWEEP_SHAPES:-} --variants ${SWEEP_VARIANTS:-all} --reps ${SWEEP_REPS:-20} --format json --out "$OUT/gemm_sweep.json" >/dev/null 2>"$OUT/bench.log"
  echo "sweep rc=$?"; tail -3 "$OUT/bench.log"
  python3 - "$OUT/gemm_sweep.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["summary"])
for r in d["rows"]:
    ex = " ".join(f"{k}={v['us']:.1f}{'' if v['rel_err'] < 2e-3 else '!'}" for k, v in sorted(r["variants"].items(), key=lambda kv: kv[1]["us"]))
    print(f"{r['m']}x{r['n']}x{r['k']} cublas={r['cublas_us']:.1f} {r['variant']}={r['ours_us'] or 0:.1f} | {ex}")
PY
fi

if has probe; then  # the event-timing floor: an empty launch, warm-L2 vs rotated inputs, kernel-only time
  cat > /tmp/probe.py <<'PY'
import statistics, cupy
from impbench.kernels import gemm as g
g.prewarm()
from impbench.kernels import get_function
spin = get_function("bench", "bench_spin"); stream = cupy.cuda.get_current_stream()
def timed(fn, reps=40, sets=1):
    ts = []
    for rep in range(reps):
        spin((1,), (1,), (cupy.int64(300000),)); e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        e0.record(stream); fn(rep % sets); e1.record(stream); e1.synchronize()
        ts.append(cupy.cuda.get_elapsed_time(e0, e1) * 1000)
    return statistics.median(ts)
print(f"empty spin(0) 1 block: {timed(lambda i: spin((1,), (1,), (cupy.int64(0),))):.2f} us")
print(f"empty spin(0) 132 blocks x 128: {timed(lambda i: spin((132,), (128,), (cupy.int64(0),))):.2f} us")
for m, n, k in [(1024, 128, 2048), (512, 128, 2048), (2048, 128, 2816)]:
    sets = 48
    a = [cupy.random.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    w = [cupy.random.standard_normal((n, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    o = cupy.empty((m, n), cupy.float16)
    names = [v.name for v in g.candidates("small-n") if v.family == "tsk"] + [g.choose_variant(m, n, k)]
    line = f"{m}x{n}x{k} cublas warm {timed(lambda i: cupy.matmul(a[0], w[0].T, out=o)):.2f} cold {timed(lambda i: cupy.matmul(a[i], w[i].T, out=o), sets=sets):.2f}"
    for name in dict.fromkeys(names):
        runs = [g.prepare(a[i], w[i], o, name) for i in range(sets)]
        line += f" | {name} warm {timed(lambda i: runs[0]()):.2f} cold {timed(lambda i: runs[i](), sets=sets):.2f}"
    print(line, flush=True)
PY
  timeout 120 python3 /tmp/probe.py 2>&1 | tee "$OUT/probe.txt"
fi

if has trace; then  # per-CTA timelines (tools/gemm_trace.py) of TRACE_VARIANTS on TRACE_SHAPES ("--shape MxNxK ...")
  timeout ${TRACE_TIMEOUT:-200} python3 tools/gemm_trace.py ${TRACE_SHAPES:---shape 2048x128x2048} \
    --variants ${TRACE_VARIANTS:-tma_128x64,tsk_64x128k4} --reps ${TRACE_REPS:-15} ${TRACE_ARGS:-} 2>&1 | tee "$OUT/trace.txt"
fi

if has final; then
  timeout ${FINAL_TIMEOUT:-150} python3 -m impbench gemm --reps 50 --out "$OUT/gemm_h100.md" 2>>"$OUT/bench.log" | tail -70
fi

if has ncu; then  # Nsight Compute sections of our largest-tile kernel and cuBLAS's on one shape
  cat > /tmp/ncu_one.py <<'PY'
import os, cupy
from impbench.kernels import gemm as g
from tools.gemm_trace import experiment_launcher
g.prewarm()
m, n, k = map(int, os.environ.get("NCU_SHAPE", "2048x8192x2048").split("x"))
rng = cupy.random.default_rng(0)
a = rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16)
w = (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16)
out = cupy.empty((m, n), cupy.float16)
for name in os.environ.get("NCU_VARIANTS", "tma_128x256,tma_128x256c2").split(","):
    experiment_launcher(a, w, out, name)()  # tsk_...@G/direct: tile order, store mode (tools/gemm_trace.py)
cupy.matmul(a, w.T, out=out)
cupy.cuda.Device().synchronize()
PY
  what="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats
        --section Occupancy --section LaunchStats"
  if [[ -n ${NCU_METRICS:-} ]]; then  # named metrics instead, those of them this ncu knows (an unknown one fails the run)
    known=$(ncu --query-metrics 2>/dev/null | awk '{print $1}')
    found=$(for m in ${NCU_METRICS//,/ }; do grep -qx "${m%%.*}" <<<"$known" && echo "$m"; done | paste -sd,)
    echo "ncu metrics known: ${found:-none (asking for all)}"; what="--metrics ${found:-$NCU_METRICS}"
  fi
  for shape in ${NCU_SHAPES:-${NCU_SHAPE:-2048x8192x2048}}; do
    NCU_SHAPE=$shape timeout ${NCU_TIMEOUT:-240} ncu --clock-control none -k regex:'gemm_t|sm90|xmma|cutlass|nvjet|gemv|splitK' \
      --launch-count ${NCU_COUNT:-3} $what python3 /tmp/ncu_one.py > "$OUT/ncu_$shape.txt" 2>&1
    echo "ncu $shape rc=$?"; grep -E "^  [a-z_0-9]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Stall|Issue Slots|Shared|__" "$OUT/ncu_$shape.txt" | head -60
  done
fi
