"""One dense NVFP4 GEMM shape timed for `impbench gemm`: our kernel (impbench.kernels.nvfp4_gemm) against cuBLAS
FP16 (`cupy.matmul`) on the same weights dequantized to FP16, and against the roofline floor.

On the shared timing loop (bench.timing): every launch reads the next of several input sets (activations and
weights, fresh synthetic NVFP4 per set from impbench.nvfp4.generate_experts_gpu) that together exceed the L2;
the rule's variant, cuBLAS and any further variants are interleaved, each launch timed alone (no programmatic
dependent launch, as cuBLAS's launches are). Each side's error against cuBLAS is measured on one set, so a
variant that computes garbage cannot look fast. The floor is max(FLOPs / peak FP16 rate, (NVFP4 weight
bytes + A read + C written) / peak bandwidth) of the GPU (impbench.gpus), None for a GPU without an entry.
"""

from __future__ import annotations

from impbench.bench.accuracy import rel_err
from impbench.bench.timing import median_us, set_count, time_interleaved
from impbench.errors import InputError

CUBLAS = "cublas"


def nvfp4_bytes(n: int, k: int) -> int:
    """Bytes of an NVFP4 [N, K] weight: codes, e4m3 block scales, the fp32 global scale."""
    return n * k // 2 + n * k // 16 + 4


def time_nvfp4_dense(m: int, n: int, k: int, reps: int, variants=(), seed: int = 0) -> dict:
    """Device µs of out[M, N] = a[M, K] . W[N, K]^T with W NVFP4: a dict of ours_us (the variant the rule picks),
    cublas_us, floor_us and floor_bound ("memory" or "compute"), variant, rel_err (ours against cuBLAS),
    others ({variant: {"us", "rel_err"}} for `variants`, or every variant with ("all",)) and m, n, k."""
    from impbench.kernels import nvfp4_gemm

    if tuple(variants) == ("all",):
        variants = tuple(nvfp4_gemm.VARIANTS)
    for name in variants:
        if name not in nvfp4_gemm.VARIANTS:
            raise InputError(f"unknown NVFP4 GEMM variant {name!r}; accepted: all, {', '.join(nvfp4_gemm.VARIANTS)}")
    import cupy

    try:
        return _time(m, n, k, reps, variants, seed)
    finally:  # the input sets are gone with _time's frame
        cupy.get_default_memory_pool().free_all_blocks()


def _time(m: int, n: int, k: int, reps: int, variants, seed: int) -> dict:
    import cupy

    from impbench import nvfp4
    from impbench.bench.moe import dequantize_fp16_gpu
    from impbench.gpus import match_gpu_name
    from impbench.kernels import nvfp4_gemm
    from impbench.kernels.driver import no_pdl

    variant = nvfp4_gemm.choose_variant(m, n, k, nvfp4_gemm.device_sms())
    timed = [variant] + [v for v in dict.fromkeys(variants) if v != variant]
    nvfp4_gemm.prewarm()

    sets = set_count(2 * m * k + nvfp4_bytes(n, k) + 2 * n * k + 2 * m * n * (len(timed) + 1))
    rng = cupy.random.default_rng(seed)
    a_sets = [rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    w_sets = [nvfp4.generate_experts_gpu(1, n, k, seed=seed + i) for i in range(sets)]
    w16_sets = [dequantize_fp16_gpu(*w)[0] for w in w_sets]
    w_sets = [(nvfp4_gemm.pack_codes(codes), scale, scale2) for codes, scale, scale2 in w_sets]  # as the engine
    outs = {name: [cupy.full((m, n), cupy.nan, cupy.float16) for _ in range(sets)] for name in [CUBLAS, *timed]}
    with no_pdl():  # launchers built here launch without programmatic serialization
        launchers = {name: [nvfp4_gemm.prepare(a_sets[i], *w_sets[i], outs[name][i], name) for i in range(sets)]
                     for name in timed}  # fmt: skip

    def side(name):
        if name == CUBLAS:
            return lambda i: cupy.matmul(a_sets[i], w16_sets[i].T, out=outs[CUBLAS][i])
        return lambda i: launchers[name][i]()

    times = time_interleaved({name: side(name) for name in [CUBLAS, *timed]}, sets, reps)
    for name in [CUBLAS, *timed]:  # set 0 again from poisoned outputs, for the error column
        outs[name][0].fill(cupy.nan)
        side(name)(0)
    errors = {name: rel_err(outs[name][0], outs[CUBLAS][0]) for name in timed}
    med = {name: median_us(ts) for name, ts in times.items()}

    flops, bytes_moved = 2.0 * m * n * k, nvfp4_bytes(n, k) + 2 * m * k + 2 * m * n
    device_name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    gpu = match_gpu_name(device_name.decode() if isinstance(device_name, bytes) else str(device_name))
    floor_us, bound = gpu.floor_us(flops, bytes_moved) if gpu else (None, None)
    return {"m": m, "n": n, "k": k, "variant": variant, "ours_us": med[variant], "cublas_us": med[CUBLAS],
            "floor_us": floor_us, "floor_bound": bound, "rel_err": errors[variant],
            "others": {v: {"us": med[v], "rel_err": errors[v]} for v in timed[1:]}}  # fmt: skip
