"""Causal GQA flash attention of one prefill chunk over the KV cache (kernels_cu/attention.cu).

The chunk's position is read from a device int32 scalar by the kernel itself, so the launch (grid,
arguments) depends only on static shapes and one captured CUDA graph serves every non-last chunk.
"""

from __future__ import annotations

import functools
import math

from impbench.kernels._cache import get_function
from impbench.kernels._checks import check_array

BLOCK_M = 64  # queries per block (4 warps x 16 rows)
THREADS = 128
HEAD_DIMS = (64, 128, 256)


def smem_bytes(head_dim: int) -> int:
    """Dynamic shared memory of the kernel for `head_dim`: Q tile + two K and two V stages.

    Mirrors Geometry<D>::SMEM_BYTES in attention.cu (the kernel traps if it gets less).
    """
    block_n = 32 if head_dim >= 256 else 64
    stride = head_dim + 8
    return (BLOCK_M * stride + 4 * block_n * stride) * 2


def _plan(q, k_cache, v_cache, pos, out, softmax_scale: float):
    """Check the arguments of attention_prefill; return (kernel, grid, block, args, shared bytes)."""
    import numpy as np

    check_array("q", q, np.float16, ndim=3)
    tokens, heads, head_dim = q.shape
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q head_dim must be one of {HEAD_DIMS}, got {head_dim}")
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

    smem = smem_bytes(head_dim)
    kernel = get_function("attention", f"attention_prefill_d{head_dim}", max_dynamic_smem=smem)
    grid = (heads, (tokens + BLOCK_M - 1) // BLOCK_M)
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
    return kernel, grid, (THREADS,), args, smem


def attention_prefill(q, k_cache, v_cache, pos, out, softmax_scale: float) -> None:
    """out[t, h] = softmax(q[t, h] . k[0 .. pos+t, h // group] * scale) . v[0 .. pos+t, h // group].

    q, out: fp16 [T, Hq, D]; k_cache, v_cache: fp16 [max_len, Hkv, D] with the chunk's keys and
    values already at rows pos .. pos+T-1; pos: int32 device array [1] (read on the device only);
    D in 64, 128, 256; Hq a multiple of Hkv. Launches on the current stream; never synchronizes.
    """
    prepare(q, k_cache, v_cache, pos, out, softmax_scale)()


def prepare(q, k_cache, v_cache, pos, out, softmax_scale: float):
    """Check once; return a no-argument launcher of attention_prefill (reads pos when it runs)."""
    kernel, grid, block, args, smem = _plan(q, k_cache, v_cache, pos, out, softmax_scale)
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def prewarm() -> None:
    """Compile the family and raise every head size's shared-memory limit outside any capture."""
    for head_dim in HEAD_DIMS:
        get_function("attention", f"attention_prefill_d{head_dim}", max_dynamic_smem=smem_bytes(head_dim))


def causal_flops(tokens: int, pos: int, heads: int, head_dim: int) -> int:
    """FLOPs of the causal attention of a chunk: 4 * T * average context * D * Hq (QK^T and PV)."""
    contexts = tokens * pos + tokens * (tokens + 1) // 2  # sum over t of (pos + t + 1)
    return 4 * contexts * head_dim * heads
