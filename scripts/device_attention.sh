#!/usr/bin/env bash
# Attention on the device: GPU tests (attention + reference), then timings of the causal GQA kernel
# on Qwen3-Coder shapes (T = 512 chunk, Hq 32, Hkv 4, D 128) next to torch SDPA on the same inputs.
# Usage (device tool, repo root): bash scripts/device_attention.sh   -- logs go to $OUT (or ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
    | tee "$OUT/gpu.txt"
{
    python3 -m pytest -q -rA tests/test_attention.py tests/test_reference.py
    python3 -m pytest -q tests/test_kernels_compile.py -k attention
} 2>&1 | tee "$OUT/pytest.log" | tail -n 40

python3 - <<'EOF' 2>&1 | tee "$OUT/bench.log"
import json, math, os, statistics

import cupy
import numpy as np

from impbench.kernels import get_function
from impbench.kernels.attention import attention_prefill, causal_flops, smem_bytes
from impbench.reference import causal_attention

for dim in (64, 128, 256):
    fn = get_function("attention", f"attention_prefill_d{dim}", max_dynamic_smem=smem_bytes(dim))
    print(f"d{dim}: {fn.num_regs} registers, {fn.local_size_bytes} B local (spills), {smem_bytes(dim)} B shared")

try:
    import pynvml
    pynvml.nvmlInit()
    nvml = pynvml.nvmlDeviceGetHandleByIndex(0)
except Exception:
    nvml = None


def sm_mhz():
    return pynvml.nvmlDeviceGetClockInfo(nvml, pynvml.NVML_CLOCK_SM) if nvml else None


def time_graph_us(launch, stream, per_graph=20, reps=15):
    """Median µs per launch over `reps` replays of a graph of `per_graph` back-to-back launches."""
    with stream:
        launch()
        stream.synchronize()
        stream.begin_capture()
        for _ in range(per_graph):
            launch()
        graph = stream.end_capture()
        for _ in range(3):
            graph.launch(stream=stream)
        times = []
        for _ in range(reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            graph.launch(stream=stream)
            stop.record(stream)
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / per_graph)
    return statistics.median(times), min(times), max(times)


def time_events_us(launch, stream, iters=30, reps=7):
    with stream:
        for _ in range(5):
            launch()
        times = []
        for _ in range(reps):
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            for _ in range(iters):
                launch()
            stop.record(stream)
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3 / iters)
    return statistics.median(times)


try:
    import torch
    import torch.nn.functional as F
except Exception as exc:
    torch = None
    print("torch unavailable:", exc)

rows = []
stream = cupy.cuda.Stream(non_blocking=True)
heads, kv_heads, tokens = 32, 4, 512
for dim, pos, max_len in [(128, 0, 2048), (128, 1536, 2048), (128, 7680, 8192), (64, 1536, 2048), (256, 1536, 2048)]:
    rng = np.random.default_rng(pos + dim)
    q = (2.0 * rng.standard_normal((tokens, heads, dim))).astype(np.float16)
    k = rng.standard_normal((max_len, kv_heads, dim)).astype(np.float16)
    v = rng.standard_normal((max_len, kv_heads, dim)).astype(np.float16)
    scale = 1.0 / math.sqrt(dim)
    with stream:
        q_d, k_d, v_d = cupy.asarray(q), cupy.asarray(k), cupy.asarray(v)
        out = cupy.full(q.shape, cupy.nan, dtype=cupy.float16)
        pos_d = cupy.array([pos], dtype=cupy.int32)
    stream.synchronize()
    launch = lambda: attention_prefill(q_d, k_d, v_d, pos_d, out, scale)  # noqa: E731
    med, lo, hi = time_graph_us(launch, stream)
    mhz = sm_mhz()
    flops = causal_flops(tokens, pos, heads, dim)
    end = pos + tokens
    ref = causal_attention(q.astype(np.float64), k[:end].astype(np.float64), v[:end].astype(np.float64), pos, scale)
    got = out.get().astype(np.float64)
    rel_err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    row = dict(dim=dim, pos=pos, tokens=tokens, heads=heads, kv_heads=kv_heads, time_us=med, min_us=lo, max_us=hi,
               tflops=flops / med / 1e6, rel_err=rel_err, sm_mhz=mhz)
    if torch is not None:
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            from torch.nn.attention.bias import causal_lower_right

            tq = torch.from_dlpack(q_d).permute(1, 0, 2).unsqueeze(0).contiguous()
            tk = torch.from_dlpack(k_d[:end]).permute(1, 0, 2).unsqueeze(0).repeat_interleave(heads // kv_heads, 1).contiguous()
            tv = torch.from_dlpack(v_d[:end]).permute(1, 0, 2).unsqueeze(0).repeat_interleave(heads // kv_heads, 1).contiguous()
            mask = causal_lower_right(tokens, end)
            tstream = torch.cuda.ExternalStream(stream.ptr)
            sdpa = lambda: F.scaled_dot_product_attention(tq, tk, tv, attn_mask=mask, scale=scale)  # noqa: E731
            with torch.cuda.stream(tstream):
                try:  # flash backend (FA2) if it takes this mask, else whatever torch picks
                    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                        torch_out = sdpa()
                        row["torch_sdpa_us"] = time_events_us(sdpa, stream)
                    row["torch_backend"] = "flash"
                except Exception as exc:
                    row["torch_flash_error"] = f"{type(exc).__name__}: {exc}"[:200]
                    torch_out = sdpa()
                    row["torch_sdpa_us"] = time_events_us(sdpa, stream)
                    row["torch_backend"] = "default"
            t_ref = torch_out[0].permute(1, 0, 2).double().cpu().numpy()
            row["torch_rel_err"] = float(np.linalg.norm(t_ref - ref) / np.linalg.norm(ref))
            row["torch_tflops"] = flops / row["torch_sdpa_us"] / 1e6
        except Exception as exc:
            row["torch_error"] = f"{type(exc).__name__}: {exc}"[:300]
    rows.append(row)
    print(json.dumps(row))

with open(os.path.join(os.environ.get("OUT", "out"), "bench.json"), "w") as fh:
    json.dump({"gpu": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": rows}, fh, indent=1)
EOF
