#!/usr/bin/env bash
# One device call for the GEMM work (issue #3): build check, per-variant diagnostics, GPU tests,
# a calibration sweep of every variant and the final table. Run from the repository root on the
# device machine; logs and results go to $OUT (default ./out-gemm).
#   STAGES="diag tests sweep final tma ncu" bash scripts/device_gemm.sh
# (tma and ncu are experiments for results/NOTES.md: the TMA-fed kernel against cuBLAS, and Nsight
#  Compute sections of our largest-tile kernel and cuBLAS on one shape.)
set -uo pipefail
OUT=${OUT:-out-gemm}; mkdir -p "$OUT"
STAGES=${STAGES:-"info diag tests sweep final"}
export OUT PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
has() { [[ " $STAGES " == *" $1 "* ]]; }

if has info; then
  { nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
    python3 -c "import cupy, sys; print('python', sys.version.split()[0], 'cupy', cupy.__version__, 'nvrtc', cupy.cuda.nvrtc.getVersion())"
    lscpu | grep 'Model name'; } 2>&1 | tee "$OUT/info.txt"
fi

if has diag; then  # every variant on small structured shapes; error maps where wrong
  timeout 150 python3 - <<'PY' 2>&1 | tee "$OUT/diag.txt"
import time, cupy
from impbench.kernels import gemm as g, _cache
t = time.time(); g.prewarm(); print(f"compile+load {time.time()-t:.1f}s, device {g.device_info()}")
import glob, subprocess, os
cubins = [p for p in glob.glob(os.path.expanduser("~/.cupy/kernel_cache/*")) if b"gemm_mma_128x128" in open(p, "rb").read()]
if cubins:  # CuPy prefixes its cache files with a hash: cut at the ELF magic
    blob = open(cubins[0], "rb").read(); open("/tmp/gemm.cubin", "wb").write(blob[blob.find(b"\x7fELF"):])
    done = subprocess.run(["cuobjdump", "-sass", "/tmp/gemm.cubin"], capture_output=True, text=True)
    sass = done.stdout
    print("cuobjdump:", done.returncode, done.stderr[:300])
    print("cubin", cubins[0], "sm_90a" if b"sm_90a" in blob else "not sm_90a")
    for op in ("HGMMA", "HMMA", "LDSM", "LDGSTS", "LDL", "STL"):
        print(op, sass.count(op + "."), end="; ")
    print()
def check(name, m, n, k):
    rng = cupy.random.default_rng(m + n + k)
    a = rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16)
    w = (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16)
    out = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
    g.gemm(a, w, out, variant=name); cupy.cuda.Device().synchronize()
    ref = a.astype(cupy.float32) @ w.astype(cupy.float32).T
    diff = cupy.abs(out.astype(cupy.float32) - ref); bad = ~(diff <= 0.02 * (1 + cupy.abs(ref)))
    rel = float(cupy.linalg.norm(cupy.nan_to_num(out.astype(cupy.float32), nan=1e4) - ref) / cupy.linalg.norm(ref))
    line = f"{name:16s} {m}x{n}x{k}: rel {rel:.2e} bad {int(bad.sum())}/{m*n}"
    if int(bad.sum()) and m % 8 == 0 and n % 8 == 0:
        blocks = cupy.asnumpy(bad.reshape(m // 8, 8, n // 8, 8).any(axis=(1, 3)))
        line += "\n    bad 8x8 blocks (rows of the map = 8 rows of C):\n    " + "\n    ".join(
            "".join("#" if x else "." for x in row[:64]) for row in blocks[:32])
    print(line, flush=True)
    return rel < 2e-3
ok = []
for v in g.candidates("small-n"):
    good = True
    for shape in [(v.bm, v.bn, 16), (v.bm, v.bn, 64), (v.bm, v.bn, 128), (2 * v.bm, 2 * v.bn, 1024), (100, 77, 200)]:
        good &= check(v.name, *shape)
    ok += [v.name] if good else []
    open("/tmp/ok_variants.txt", "w").write(",".join(ok))  # as we go: a fault ends the process
PY
  if [[ -s /tmp/ok_variants.txt ]]; then export IMPBENCH_GEMM_VARIANTS=$(cat /tmp/ok_variants.txt); fi
  echo "variants passing diag: ${IMPBENCH_GEMM_VARIANTS:-none}"
fi

if has tests; then
  timeout 200 python3 -m pytest -q -m gpu tests/test_gemm.py 2>&1 | tee "$OUT/tests.txt" | tail -30
fi

if has sweep; then  # every variant on every model shape: calibration of the time model
  timeout 240 python3 -m impbench gemm --variants ${IMPBENCH_GEMM_VARIANTS:-all} --reps 20 --format json --out "$OUT/gemm_sweep.json" >/dev/null 2>"$OUT/sweep.err"
  echo "sweep rc=$?"; tail -3 "$OUT/sweep.err"
  python3 - "$OUT/gemm_sweep.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(d["summary"])
for r in d["rows"]:
    ex = " ".join(f"{k}={v['us']:.1f}{'' if v['rel_err'] < 2e-3 else '!'}" for k, v in sorted(r["variants_us"].items(), key=lambda kv: kv[1]["us"]))
    print(f"{r['m']}x{r['n']}x{r['k']} cublas={r['cublas_us']:.1f} {r['variant']}={r['ours_us'] or 0:.1f} | {ex}")
PY
fi

if has final; then
  timeout 150 python3 -m impbench gemm --reps 50 --out "$OUT/gemm_h100.md" 2>"$OUT/final.err" | tail -60
fi

if has tma; then  # experimental TMA-fed kernels: correctness, then time against cuBLAS and ours
  timeout 200 python3 - <<'PY' 2>&1 | tee "$OUT/tma.txt" | tail -25
import ctypes, math, statistics, cupy, numpy as np
from impbench.kernels import gemm as g, get_function
g.prewarm()
enc = ctypes.CDLL("libcuda.so.1").cuTensorMapEncodeTiled
enc.restype = ctypes.c_int
U64P, U32P = ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint32)
enc.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p, U64P, U64P, U32P, U32P,
                ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int]
def tmap(arr, box_rows):
    rows, k = arr.shape
    raw = ctypes.create_string_buffer(256); at = (ctypes.addressof(raw) + 63) & ~63
    rc = enc(at, 6, 2, arr.data.ptr, (ctypes.c_uint64 * 2)(k, rows), (ctypes.c_uint64 * 1)(2 * k),
             (ctypes.c_uint32 * 2)(64, box_rows), (ctypes.c_uint32 * 2)(1, 1), 0, 3, 3, 0)  # fp16, 128B swizzle, L2 256B
    assert rc == 0, f"cuTensorMapEncodeTiled -> {rc}"
    return cupy.asarray(np.frombuffer(ctypes.string_at(at, 128), dtype=np.uint8).copy())
SMEM = 197632
kern = {bn: get_function("gemm_fp16", f"gemm_tma_128x{bn}", max_dynamic_smem=SMEM) for bn in (256, 128)}
def run_tma(bn, maps, out, m, n, k):
    kern[bn](((m + 127) // 128, (n + bn - 1) // bn), (384,), (maps[0], maps[1], out, np.int32(m), np.int32(n), np.int32(k)), shared_mem=SMEM)
def inputs(m, n, k, seed):
    rng = cupy.random.default_rng(seed)
    return (rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16),
            (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16))
for m, n, k in [(128, 256, 64), (100, 77, 200), (300, 520, 1032), (256, 512, 4096)]:
    a, w = inputs(m, n, k, 1); ref = a.astype(cupy.float32) @ w.astype(cupy.float32).T
    for bn in (256, 128):
        out = cupy.full((m, n), cupy.nan, dtype=cupy.float16)
        run_tma(bn, (tmap(a, 128), tmap(w, bn)), out, m, n, k); cupy.cuda.Device().synchronize()
        rel = float(cupy.linalg.norm(cupy.nan_to_num(out.astype(cupy.float32), nan=1e4) - ref) / cupy.linalg.norm(ref))
        print(f"tma_128x{bn} {m}x{n}x{k}: rel {rel:.2e} nan {int(cupy.isnan(out).sum())}", flush=True)
spin = g.spin_kernel()
for m, n, k in [(512, 5120, 2048), (2048, 5120, 2048), (2048, 8192, 2048), (1024, 9216, 2816), (1024, 2816, 8192), (2048, 151936, 2048)]:
    sets = max(2, min(16, (200 << 20) // (2 * (m * k + n * k))))
    data = [inputs(m, n, k, 10 + i) for i in range(sets)]
    maps = {bn: [(tmap(a, 128), tmap(w, bn)) for a, w in data] for bn in (256, 128)}
    ours = g.choose_variant(m, n, k)
    outs = {name: cupy.empty((m, n), cupy.float16) for name in ("cublas", ours, "tma256", "tma128")}
    def run(name, i):
        a, w = data[i]
        if name == "cublas": cupy.matmul(a, w.T, out=outs[name])
        elif name.startswith("tma"): run_tma(int(name[3:]), maps[int(name[3:])][i], outs[name], m, n, k)
        else: g.gemm(a, w, outs[name], variant=name)
    names = list(outs); times = {x: [] for x in names}
    for i in range(3):
        for x in names: run(x, i % sets)
    for rep in range(30):
        order = names if rep % 2 == 0 else names[::-1]
        ev = [cupy.cuda.Event() for _ in range(len(order) + 1)]
        spin((1,), (1,), (cupy.int64(300000),)); ev[0].record()
        for j, x in enumerate(order): run(x, (rep + j) % sets); ev[j + 1].record()
        ev[-1].synchronize()
        for j, x in enumerate(order): times[x].append(cupy.cuda.get_elapsed_time(ev[j], ev[j + 1]) * 1e3)
    for x in names: run(x, 0)
    ref = outs["cublas"].astype(cupy.float32)
    med = {x: statistics.median(t) for x, t in times.items()}
    tf = lambda us: 2.0 * m * n * k / us / 1e6
    errs = {x: float(cupy.linalg.norm(outs[x].astype(cupy.float32) - ref) / cupy.linalg.norm(ref)) for x in names}
    print(f"{m}x{n}x{k}: " + ", ".join(f"{x} {med[x]:.1f} us ({tf(med[x]):.0f} TF/s, err {errs[x]:.1e})" for x in names), flush=True)
    del data, maps, outs; cupy.get_default_memory_pool().free_all_blocks()
PY
fi

if has ncu; then  # Nsight Compute sections of our largest-tile kernel and cuBLAS's on one shape
  cat > /tmp/ncu_one.py <<'PY'
import cupy
from impbench.kernels import gemm as g
g.prewarm()
m, n, k = 2048, 8192, 2048
rng = cupy.random.default_rng(0)
a = rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16)
w = (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16)
out = cupy.empty((m, n), cupy.float16)
for name in ("wgmma_128x256", "wgmma_ws_128x256"):
    g.gemm(a, w, out, variant=name)
cupy.matmul(a, w.T, out=out)
cupy.cuda.Device().synchronize()
PY
  timeout 240 ncu --clock-control none -k regex:'wgmma|sm90|xmma|cutlass' --launch-count 3 --section SpeedOfLight \
    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section Occupancy \
    python3 /tmp/ncu_one.py > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "^  [a-z_0-9]+.*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput|Stall|Issue Slots|Shared" "$OUT/ncu.txt" | head -60
fi
