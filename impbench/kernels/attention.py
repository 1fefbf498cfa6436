"""Causal GQA flash attention of one prefill chunk over the KV cache (kernels_cu/attention.cu), with an
optional sliding window.

The chunk's position is read from a device int32 scalar by the kernel itself, so the launch (grid,
arguments) depends only on static shapes and one captured CUDA graph serves every non-last chunk.
"""

from __future__ import annotations

import functools
import math
import numbers

from impbench.kernels.modules import get_function
from impbench.kernels.checks import check_array

HEAD_DIMS = (64, 128, 256, 512)
# wgmma: Hopper (sm_90a) kernel, 64 (query, head) rows per block, two blocks per SM; wgmma2: the same
# kernel with 128 rows (2 warpgroups) per block; mma: portable mma.sync kernel (any sm_80+).
# Head dim 512 (Gemma-4's full layers): wgmma with two warpgroups that split the head dimension of
# one 64-row block, and mma with two warps per 16 rows (32 queries a block, 16-key tiles, within the
# 99 KiB of shared memory of sm_89 / sm_120); no wgmma2 (its 128 rows would need four warpgroups of
# 128 registers a thread, too few for the 128 accumulators each holds).
VARIANTS = ("wgmma", "wgmma2", "mma")

# mma variant: 64 queries of one head per block (4 warps x 16 rows; 32 queries at head dim 512).
BLOCK_M = 64
THREADS = 128
SPLIT_HEAD_DIM = 512  # the head dim whose kernels split the output columns over two warps / warpgroups
# wgmma variants: warpgroups (64 rows, 128 threads each) per block; the heads of one KV group share it.
WG_WARPGROUPS = {"wgmma": 1, "wgmma2": 2}
_KERNEL_PREFIX = {"wgmma": "attention_prefill_wg_d", "wgmma2": "attention_prefill_wg2_d", "mma": "attention_prefill_d"}


def default_variant() -> str:
    """The variant for the current device: wgmma where the family is built for sm_90a (cc 9.0)."""
    from impbench import device

    return "wgmma" if device.compute_capability() == 90 else "mma"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def supports(head_dim: int, variant: str) -> bool:
    """Whether `variant` has a kernel for `head_dim` (every pair but wgmma2 at 512)."""
    return head_dim in HEAD_DIMS and not (variant == "wgmma2" and head_dim == SPLIT_HEAD_DIM)


def _check_head_dim(head_dim: int, variant: str) -> None:
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q head_dim must be one of {HEAD_DIMS}, got {head_dim}")
    if not supports(head_dim, variant):
        raise ValueError(f"variant {variant!r} has no head_dim {head_dim} kernel; use 'wgmma' (Hopper) or 'mma'")


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 0:
        raise ValueError(f"window must be a whole number of keys >= 0 (0 = no window), got {window!r}")
    return int(window)


def smem_bytes(head_dim: int, variant: str | None = None) -> int:
    """Dynamic shared memory per block of the kernel for `head_dim` (variant: default_variant()).

    Mirrors Geometry<D>::SMEM_BYTES (mma: Q tile + two K and two V stages),
    WgGeometry<D, WGS>::SMEM_BYTES (wgmma: Q tile + STAGES x (K + V) + 1 KiB alignment) and
    SplitGeometry<512>::SMEM_BYTES (wgmma at 512: per warpgroup its Q half, two K and two V half
    tiles and two FP32 partial-S tiles, + 1 KiB) in attention.cu; the kernels trap if they get less.
    """
    variant = variant or default_variant()
    _check_variant(variant)
    _check_head_dim(head_dim, variant)
    block_n = 32 if head_dim >= 256 else 64
    if variant == "mma":
        stride = head_dim + 8
        return (_mma_block_m(head_dim) * stride + 4 * (16 if head_dim == SPLIT_HEAD_DIM else block_n) * stride) * 2
    if head_dim == SPLIT_HEAD_DIM:
        half = head_dim // 2
        return 2 * (64 * half * 2 + 4 * block_n * half * 2 + 2 * 64 * block_n * 4) + 1024
    warpgroups = WG_WARPGROUPS[variant]
    stages = 4 if (warpgroups == 1 and head_dim == 64) or (warpgroups == 2 and head_dim <= 128) else 3
    return 64 * warpgroups * head_dim * 2 + stages * 2 * block_n * head_dim * 2 + 1024


def heads_per_block(heads: int, kv_heads: int, rows: int = 64) -> int:
    """wgmma variants: query heads per block, the largest divisor of the GQA group that fits in `rows`.

    Qwen3-Coder (32 / 4): 8 heads x 8 queries in a 64-row block, so each K/V tile is read once for
    the whole group.
    """
    group = heads // kv_heads
    return max(d for d in range(1, min(group, rows) + 1) if group % d == 0)


def _kernel_name(head_dim: int, variant: str) -> str:
    return f"{_KERNEL_PREFIX[variant]}{head_dim}"


def _mma_block_m(head_dim: int) -> int:
    return BLOCK_M // 2 if head_dim == SPLIT_HEAD_DIM else BLOCK_M


def threads_per_block(head_dim: int, variant: str) -> int:
    """Block size: 4 warps (mma), 128 per warpgroup (wgmma, and two warpgroups at head dim 512)."""
    if variant == "mma":
        return THREADS
    return 256 if head_dim == SPLIT_HEAD_DIM else 128 * WG_WARPGROUPS[variant]


def _plan(q, k_cache, v_cache, pos, out, softmax_scale: float, variant: str | None = None, window: int = 0):
    """Check the arguments of attention_prefill; return (kernel, grid, block, args, shared bytes)."""
    import numpy as np

    check_array("q", q, np.float16, ndim=3)
    tokens, heads, head_dim = q.shape
    variant = variant or default_variant()
    _check_variant(variant)
    _check_head_dim(head_dim, variant)
    window = _check_window(window)
    if tokens < 1:
        raise ValueError(f"q must hold at least one token, got shape {tuple(q.shape)}")
    check_array("k_cache", k_cache, np.float16, ndim=3)
    max_len, kv_heads, k_dim = k_cache.shape
    if k_dim != head_dim:
        raise ValueError(f"k_cache head_dim {k_dim} differs from q head_dim {head_dim}")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"q heads ({heads}) must be a multiple of k_cache heads ({kv_heads})")
    if max_len < tokens:
        raise ValueError(f"k_cache holds {max_len} rows, fewer than the chunk's {tokens} tokens")
    check_array("v_cache", v_cache, np.float16, shape=k_cache.shape)
    check_array("pos", pos, np.int32, shape=(1,))
    check_array("out", out, np.float16, shape=q.shape)
    for name, arr in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} must be 16-byte aligned (cp.async / 16-byte stores), got address {arr.data.ptr:#x}")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be finite and > 0, got {softmax_scale}")

    smem = smem_bytes(head_dim, variant)
    kernel = get_function("attention", _kernel_name(head_dim, variant), max_dynamic_smem=smem)
    if variant == "wgmma":
        # ask for the largest shared-memory carveout: two 113 KiB blocks per SM (D = 128) need all of it
        kernel.preferred_shared_memory_carveout = 100
    args = (
        q,
        k_cache,
        v_cache,
        pos,
        out,
        np.int32(tokens),
        np.int32(heads),
        np.int32(kv_heads),
        np.int32(max_len),
        np.float32(softmax_scale * math.log2(math.e)),
    )
    block = (threads_per_block(head_dim, variant),)
    window = 0 if window >= max_len else window  # no query of this cache is past such a window (and int32-safe)
    if variant != "mma":
        rows = 64 * WG_WARPGROUPS[variant]
        per_block = heads_per_block(heads, kv_heads, rows)
        queries = rows // per_block
        grid = (heads // per_block, (tokens + queries - 1) // queries)
        return kernel, grid, block, args + (np.int32(per_block), np.int32(window)), smem
    queries = _mma_block_m(head_dim)
    grid = (heads, (tokens + queries - 1) // queries)
    return kernel, grid, block, args + (np.int32(window),), smem


def attention_prefill(q, k_cache, v_cache, pos, out, softmax_scale: float, window: int = 0) -> None:
    """out[t, h] = softmax(q[t, h] . k[lo .. i, h // group] * scale) . v[lo .. i, h // group], i = pos + t.

    lo = 0, or with a sliding window W > 0, lo = max(0, i - W + 1): key j is visible to query i iff
    i - W < j <= i (key tiles wholly below the window are skipped). q, out: fp16 [T, Hq, D];
    k_cache, v_cache: fp16 [max_len, Hkv, D] with the chunk's keys and values already at rows
    pos .. pos+T-1; pos: int32 device array [1] (read on the device only); D in 64, 128, 256, 512; Hq
    a multiple of Hkv; any scale > 0 (Gemma-4: 1.0). Launches on the current stream; never synchronizes.
    """
    prepare(q, k_cache, v_cache, pos, out, softmax_scale, window)()


def prepare(q, k_cache, v_cache, pos, out, softmax_scale: float, window: int = 0):
    """Check once; return a no-argument launcher of attention_prefill (reads pos when it runs)."""
    kernel, grid, block, args, smem = _plan(q, k_cache, v_cache, pos, out, softmax_scale, window=window)
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def prepare_variant(q, k_cache, v_cache, pos, out, softmax_scale: float, variant: str, window: int = 0):
    """prepare() with an explicit kernel variant (tests and benchmarks run both on one device)."""
    _check_variant(variant)
    kernel, grid, block, args, smem = _plan(q, k_cache, v_cache, pos, out, softmax_scale, variant, window)
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def prewarm() -> None:
    """Compile the family and raise every kernel's shared-memory limit outside any capture."""
    variants = VARIANTS if default_variant() == "wgmma" else ("mma",)
    for variant in variants:
        for head_dim in HEAD_DIMS:
            if supports(head_dim, variant):
                get_function("attention", _kernel_name(head_dim, variant), max_dynamic_smem=smem_bytes(head_dim, variant))


def causal_flops(tokens: int, pos: int, heads: int, head_dim: int, window: int = 0) -> int:
    """FLOPs of the causal attention of a chunk: 4 * visible (query, key) pairs * D * Hq (QK^T and PV);
    query i sees i + 1 keys, at most `window` of them with a window."""
    contexts = tokens * pos + tokens * (tokens + 1) // 2  # sum over t of (pos + t + 1)
    if window:
        # minus, for each query i = pos + t past the window, its i + 1 - window keys out of it
        first = max(pos, window)  # first query position with keys outside the window
        last = pos + tokens - 1
        if last >= first:
            n = last - first + 1
            contexts -= n * (first + 1 - window) + n * (n - 1) // 2
    return 4 * contexts * head_dim * heads
