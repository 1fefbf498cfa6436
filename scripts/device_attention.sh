#!/usr/bin/env bash
# Attention on the device: the GPU tests of attention and the engine, then timings of the kernel
# variants (mma = the portable mma.sync kernel, the "before"; wgmma2 = the Hopper kernel with 128-row
# blocks; wgmma = the Hopper kernel with 64-row blocks, two per SM, the default) on Qwen3-Coder
# shapes (Hq 32, Hkv 4, D 128): T 512 at prefix 0 / 512 / 1536 and T 2048 at prefix 0.
# Usage (device tool, repo root): bash scripts/device_attention.sh   -- logs go to $OUT (or ./out):
# gpu.txt, pytest.log, bench.log, bench.json. The last lines printed are the summary table.
# ATTN_REPS (default 60): timed graph replays per shape and variant. ATTN_NCU=1 adds an Nsight Compute
# pass over the wgmma kernel at T 512 / prefix 512 (ncu.txt), before the timings.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    >"$OUT/gpu.txt" 2>&1
python3 -m pytest -q -m gpu tests/test_attention.py tests/test_engine.py 2>&1 | tee "$OUT/pytest.log" | tail -n 12

if [ "${ATTN_NCU:-0}" = 1 ] && command -v ncu >/dev/null; then
    cat >"$OUT/ncu_run.py" <<'EOF'
import math
import cupy
from impbench.kernels.attention import prepare_variant
tokens, pos, heads, kv_heads, dim = 512, 512, 32, 4, 128
rs = cupy.random.RandomState(0)
q = (2.0 * rs.standard_normal((tokens, heads, dim), dtype=cupy.float32)).astype(cupy.float16)
k = rs.standard_normal((pos + tokens, kv_heads, dim), dtype=cupy.float32).astype(cupy.float16)
v = rs.standard_normal((pos + tokens, kv_heads, dim), dtype=cupy.float32).astype(cupy.float16)
out = cupy.empty_like(q)
launch = prepare_variant(q, k, v, cupy.array([pos], dtype=cupy.int32), out, 1 / math.sqrt(dim), "wgmma")
for _ in range(3):
    launch()
cupy.cuda.Device().synchronize()
EOF
    ncu --clock-control none -k regex:attention_prefill_wg -s 2 -c 1 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis \
        python3 "$OUT/ncu_run.py" >"$OUT/ncu.txt" 2>&1
    rm -f "$OUT/ncu_run.py"
    grep -E "Duration|Throughput|Pipe|Issue|Stall|Eligible|Occupancy|Registers|L2 Hit|Active" "$OUT/ncu.txt" | head -n 40
fi

cat >"$OUT/bench.py" <<'EOF'
import json, math, os, statistics

import cupy
import numpy as np

from impbench.kernels import get_function
from impbench.kernels.attention import (HEAD_DIMS, _kernel_name, causal_flops, default_variant, heads_per_block,
                                        prepare_variant, smem_bytes)
from impbench.reference import causal_attention

OUT = os.environ.get("OUT", "out")
REPS = int(os.environ.get("ATTN_REPS", "60"))
HEADS, KV_HEADS, DIM = 32, 4, 128
SHAPES = [(512, 0), (512, 512), (512, 1536), (2048, 0)]  # (T, prefix)
ROTATE_BYTES = 200e6  # input sets per shape cover 4x the 50 MB L2
variants = ["mma"] + (["wgmma2", "wgmma"] if default_variant() == "wgmma" else [])
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"device {props['name'].decode()}, {props['multiProcessorCount']} SMs, L2 {props['l2CacheSize'] >> 20} MiB")

def blocks_per_sm(fn, threads, smem):
    """cuOccupancyMaxActiveBlocksPerMultiprocessor through ctypes (CuPy has no binding)."""
    try:
        import ctypes
        lib = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int()
        rc = lib.cuOccupancyMaxActiveBlocksPerMultiprocessor(ctypes.byref(count), ctypes.c_void_p(fn.kernel.ptr),
                                                             ctypes.c_int(threads), ctypes.c_size_t(smem))
        return count.value if rc == 0 else f"error {rc}"
    except Exception as exc:
        return f"n/a ({type(exc).__name__})"


for variant in variants:
    for dim in HEAD_DIMS:
        smem = smem_bytes(dim, variant)
        fn = get_function("attention", _kernel_name(dim, variant), max_dynamic_smem=smem)
        threads = {"mma": 128, "wgmma": 128, "wgmma2": 256}[variant]
        if variant == "wgmma":
            fn.preferred_shared_memory_carveout = 100
        print(f"{variant} d{dim}: {fn.num_regs} registers, {fn.local_size_bytes} B local, {smem} B shared, "
              f"{blocks_per_sm(fn, threads, smem)} blocks/SM")

try:
    import pynvml
    pynvml.nvmlInit()
    nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:
    nvml = None


def sm_mhz():
    return pynvml.nvmlDeviceGetClockInfo(nvml, pynvml.NVML_CLOCK_SM) if nvml else None


def floor_us(tokens, pos):
    """impbench plan's floor: max(FLOPs / 750 TFLOP/s, bytes / 3 TB/s); bytes = q + k/v read once + out."""
    flops = causal_flops(tokens, pos, HEADS, DIM)
    moved = 2 * tokens * HEADS * DIM * 2 + (pos + tokens) * KV_HEADS * DIM * 2 * 2
    return max(flops / 750e12, moved / 3e12) * 1e6


def time_graph_us(launches, stream, reps=REPS):
    """Median / min / max µs per launch over `reps` replays of one graph of all `launches` in a row."""
    with stream:
        for launch in launches:
            launch()
        stream.synchronize()
        stream.begin_capture()
        for launch in launches:
            launch()
        graph = stream.end_capture()
        for _ in range(5):
            graph.launch(stream=stream)
        times = []
        for _ in range(reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            graph.launch(stream=stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / len(launches))
    return statistics.median(times), min(times), max(times)


def reference(q, k, v, pos, scale):
    """float64 reference, one KV group at a time (bounded memory for T 2048)."""
    group = HEADS // KV_HEADS
    end = pos + q.shape[0]
    f64 = np.float64
    return np.concatenate([causal_attention(q[:, g * group:(g + 1) * group].astype(f64), k[:end, g:g + 1].astype(f64),
                                            v[:end, g:g + 1].astype(f64), pos, scale) for g in range(KV_HEADS)], axis=1)


def rel_err(out, ref):
    out = out.astype(np.float64)
    if not np.isfinite(out).all():
        return float("inf")
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def diagnose(variant, stream):
    """Probe inputs that separate the V path (PV descriptor) from the S/P path, printed when a check fails."""
    tokens, pos, max_len = 512, 512, 1024
    scale = 1.0 / math.sqrt(DIM)
    d = np.arange(DIM)
    q = cupy.asarray((2.0 * np.random.default_rng(1).standard_normal((tokens, HEADS, DIM))).astype(np.float16))
    k = cupy.asarray(np.random.default_rng(2).standard_normal((max_len, KV_HEADS, DIM)).astype(np.float16))
    out = cupy.full((tokens, HEADS, DIM), cupy.nan, dtype=cupy.float16)
    pos_d = cupy.array([pos], dtype=cupy.int32)
    # 1. V[key, d] = f(d) for every key: out[t, h, d] = f(d) whatever P is (tests the V descriptor).
    f = ((d % 64) / 64.0 + d // 64).astype(np.float16)
    v = cupy.asarray(np.broadcast_to(f, (max_len, KV_HEADS, DIM)).copy())
    prepare_variant(q, k, v, pos_d, out, scale, variant)()
    got = out.get().astype(np.float64)
    err = np.abs(got - f[None, None, :].astype(np.float64))
    print(f"diag V=f(d): max err {err.max():.3g}; per 64-column block {[float(err[..., b*64:(b+1)*64].max()) for b in range(DIM // 64)]}; "
          f"row0 head0 got {np.round(got[0, 0, :8], 3).tolist()} want {f[:8].tolist()}")
    # 2. Q = 0 (uniform P over visible keys), V[key, d] = key / 1024: out = mean visible key / 1024 (tests P and the mask).
    qz = cupy.zeros_like(q)
    keys = (np.arange(max_len) / 1024.0).astype(np.float16)
    v = cupy.asarray(np.broadcast_to(keys[:, None, None], (max_len, KV_HEADS, DIM)).copy())
    prepare_variant(qz, k, v, pos_d, out, scale, variant)()
    got = out.get().astype(np.float64)[:, :, 0]
    want = np.array([keys[: pos + t + 1].astype(np.float64).mean() for t in range(tokens)])
    err = np.abs(got - want[:, None])
    print(f"diag Q=0, V=key: max err {err.max():.3g}; worst query {int(err.max(axis=1).argmax())}; "
          f"t=0..3 head0 got {np.round(got[:4, 0], 4).tolist()} want {np.round(want[:4], 4).tolist()}")
    # 3. random Q/K, V[key, d] = 1 if d == key % D: out[t, h, d] = sum of P over keys = d mod D (tests S).
    onehot = (np.arange(max_len)[:, None] % DIM == d[None, :]).astype(np.float16)
    v = cupy.asarray(np.broadcast_to(onehot[:, None, :], (max_len, KV_HEADS, DIM)).copy())
    prepare_variant(q, k, v, pos_d, out, scale, variant)()
    got = out.get().astype(np.float64)
    kh, vh = k.get(), v.get()
    ref = reference(q.get(), kh, vh, pos, scale)
    err = np.abs(got - ref)
    print(f"diag V=onehot: max err {err.max():.3g}; per head-in-group max {[float(err[:, h::8].max()) for h in range(8)]}; "
          f"per query%16 max {[round(float(err[t::16].max()), 3) for t in range(16)]}")


stream = cupy.cuda.Stream(non_blocking=True)
rows = []
for tokens, pos in SHAPES:
    max_len = pos + tokens
    set_bytes = (2 * tokens * HEADS * DIM + 2 * max_len * KV_HEADS * DIM) * 2
    n_sets = max(2, min(16, math.ceil(ROTATE_BYTES / set_bytes)))
    scale = 1.0 / math.sqrt(DIM)
    with stream:
        rs = cupy.random.RandomState(tokens + pos)
        sets = []
        for _ in range(n_sets):
            q = (2.0 * rs.standard_normal((tokens, HEADS, DIM), dtype=cupy.float32)).astype(cupy.float16)
            k = rs.standard_normal((max_len, KV_HEADS, DIM), dtype=cupy.float32).astype(cupy.float16)
            v = rs.standard_normal((max_len, KV_HEADS, DIM), dtype=cupy.float32).astype(cupy.float16)
            sets.append((q, k, v, cupy.full((tokens, HEADS, DIM), cupy.nan, dtype=cupy.float16)))
        pos_d = cupy.array([pos], dtype=cupy.int32)
    stream.synchronize()
    q0, k0, v0, out0 = sets[0]
    ref = reference(q0.get(), k0.get(), v0.get(), pos, scale)
    row = dict(tokens=tokens, pos=pos, heads=HEADS, kv_heads=KV_HEADS, dim=DIM, n_sets=n_sets,
               set_mb=round(set_bytes / 1e6, 1), floor_us=floor_us(tokens, pos),
               tflops_needed=causal_flops(tokens, pos, HEADS, DIM) / 1e12)
    for variant in variants:
        launches = [prepare_variant(q, k, v, pos_d, out, scale, variant) for q, k, v, out in sets]
        with stream:
            out0.fill(cupy.nan)
            launches[0]()
        stream.synchronize()
        row[f"{variant}_rel_err"] = rel_err(out0.get(), ref)
        med, lo, hi = time_graph_us(launches, stream)
        warm, _, _ = time_graph_us([launches[0]] * n_sets, stream)
        row.update({f"{variant}_us": med, f"{variant}_min_us": lo, f"{variant}_max_us": hi, f"{variant}_warm_us": warm,
                    f"{variant}_sm_mhz": sm_mhz()})
        row[f"{variant}_tflops"] = causal_flops(tokens, pos, HEADS, DIM) / med / 1e6
    rows.append(row)
    print(json.dumps(row))
    del sets, launches
    cupy.get_default_memory_pool().free_all_blocks()

for variant in variants:
    if any(r[f"{variant}_rel_err"] > 2e-3 for r in rows):
        print(f"{variant}: rel-err above 2e-3, diagnosing")
        diagnose(variant, stream)

with open(os.path.join(OUT, "bench.json"), "w") as fh:
    json.dump({"gpu": props["name"].decode(), "reps": REPS, "heads_per_block": heads_per_block(HEADS, KV_HEADS),
               "rows": rows}, fh, indent=1)

print("\n| T | prefix | floor µs | " + " | ".join(f"{v} µs (x floor) | {v} warm µs | {v} rel-err" for v in variants)
      + " | speed-up |")
print("|---|---|---|" + "---|---|---|" * len(variants) + "---|")
for r in rows:
    cells = [f"{r[f'{v}_us']:.1f} ({r[f'{v}_us'] / r['floor_us']:.2f}) | {r[f'{v}_warm_us']:.1f} | {r[f'{v}_rel_err']:.1e}"
             for v in variants]
    speed = r["mma_us"] / r[f"{variants[-1]}_us"]
    print(f"| {r['tokens']} | {r['pos']} | {r['floor_us']:.1f} | " + " | ".join(cells) + f" | {speed:.2f} |")
pp1024 = {v: (rows[0][f"{v}_us"] + rows[1][f"{v}_us"]) / 2 for v in variants}
print("pp=1024 average of prefix 0 and 512 (the engine's two chunks): "
      + ", ".join(f"{v} {t:.1f} µs" for v, t in pp1024.items())
      + f"; floor {(rows[0]['floor_us'] + rows[1]['floor_us']) / 2:.2f} µs")
print(f"SM clock at the end: {sm_mhz()} MHz")
EOF
python3 "$OUT/bench.py" 2>&1 | tee "$OUT/bench.log" | tail -n 14
rm -f "$OUT/bench.py"
