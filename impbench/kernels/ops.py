"""Wrappers for kernels_cu/ops.cu: embedding, RMSNorm, residual add + RMSNorm (optionally also in the kperm
order of the wgp MoE kernels), add, q/k norm + RoPE + KV append.

Every wrapper checks dtypes, shapes, contiguity and 16-byte alignment (ValueError naming them), then
launches on the current stream. None allocates, synchronizes or reads device memory on the host, so
each is capture-safe; the chunk position is a device array read by the kernel.

`prepare(op, *args)` does the checks once and returns a no-argument launcher, for replaying a
prepared launch list eagerly with the least host time per launch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from impbench.kernels.modules import get_function
from impbench.kernels.checks import check_array
from impbench.kernels.moe import KPERM_BLOCK  # the order the wgp expert GEMMs read (out_kperm)

FAMILY = "ops"
ROW_CHUNKS = (1, 2, 4, 8)  # 16-byte chunks per thread the row kernels are built for (kernels_cu/ops.cu)
MAX_ROW_THREADS = 128
ROW_THREADS_LIMIT = 256  # the row kernels' __launch_bounds__
QKV_HEADS_PER_WARP = 4  # kernels_cu/ops.cu, narrow form
MAX_QKV_HEADS = 32 * QKV_HEADS_PER_WARP  # one block of at most 32 warps per token
QKV_WIDE_LANES = (2, 4, 8, 16, 32)  # lanes per head of the 16-byte form: head_dim = 8 * lanes
QKV_WIDE_STEPS = (2, 4, 8)  # heads each lane handles in the 16-byte form
QKV_WIDE_DEFAULT_STEPS = 4
MAX_HIDDEN = 8 * ROW_CHUNKS[-1] * MAX_ROW_THREADS  # 8192 halves


def _kernel(name: str):
    return get_function(FAMILY, name)


def _check_aligned(name: str, arr, nbytes: int = 16) -> None:
    if arr.data.ptr % nbytes:
        raise ValueError(f"{name} must start on a {nbytes}-byte boundary, got address {arr.data.ptr:#x}")


def _check_hidden(name: str, hidden: int) -> None:
    if hidden % 8 or not 0 < hidden <= MAX_HIDDEN:
        raise ValueError(f"{name}: hidden size must be a multiple of 8 in [8, {MAX_HIDDEN}], got {hidden}")


def _check_tokens(name: str, tokens: int, arr) -> None:
    if tokens < 1:
        raise ValueError(f"{name}: {tuple(arr.shape)} has no tokens")


def _row_threads(hidden: int) -> int:
    chunks = hidden // 8
    return min(MAX_ROW_THREADS, max(32, -(-chunks // 32) * 32))


def _row_launch(name: str, hidden: int, threads: int | None = None):
    """(kernel, block) of a row kernel: `threads` per row (default min(128, H/8 rounded to a warp)) and
    the smallest built chunk count per thread that covers the row."""
    threads = _row_threads(hidden) if threads is None else threads
    if threads % 32 or not 32 <= threads <= ROW_THREADS_LIMIT:
        raise ValueError(f"{name}: threads must be a multiple of 32 in [32, {ROW_THREADS_LIMIT}], got {threads}")
    per_thread = -(-(hidden // 8) // threads)
    chunks = next((c for c in ROW_CHUNKS if c >= per_thread), None)
    if chunks is None:
        raise ValueError(f"{name}: hidden size {hidden} needs more than {ROW_CHUNKS[-1]} chunks a thread with {threads} threads")
    return _kernel(f"{name}_f16_c{chunks}"), (threads,)


# -- launch plans: (kernel, grid, block, args) after every check ---------------------------------


def _plan_embed(token_ids, table, out):
    check_array("token_ids", token_ids, np.int32, ndim=1)
    check_array("table", table, np.float16, ndim=2)
    tokens, (vocab, hidden) = token_ids.shape[0], table.shape
    check_array("out", out, np.float16, shape=(tokens, hidden))
    _check_tokens("embed", tokens, out)
    _check_hidden("embed", hidden)
    _check_aligned("table", table)
    _check_aligned("out", out)
    args = (token_ids, table, out, np.int32(vocab), np.int32(hidden))
    return _kernel("embed_f16"), (tokens,), (_row_threads(hidden),), args


def _plan_rmsnorm(x, weight, eps, out, threads=None):
    check_array("x", x, np.float16, ndim=2)
    tokens, hidden = x.shape
    check_array("weight", weight, np.float16, shape=(hidden,))
    check_array("out", out, np.float16, shape=(tokens, hidden))
    _check_tokens("rmsnorm", tokens, x)
    _check_hidden("rmsnorm", hidden)
    for name, arr in (("x", x), ("weight", weight), ("out", out)):
        _check_aligned(name, arr)
    args = (x, weight, out, np.int32(hidden), np.float32(eps))
    kernel, block = _row_launch("rmsnorm", hidden, threads)
    return kernel, (tokens,), block, args


def _plan_add_rmsnorm(x, residual, weight, eps, out, threads=None, out_kperm=None):
    check_array("x", x, np.float16, ndim=2)
    tokens, hidden = x.shape
    check_array("residual", residual, np.float16, shape=(tokens, hidden))
    check_array("weight", weight, np.float16, shape=(hidden,))
    check_array("out", out, np.float16, shape=(tokens, hidden))
    _check_tokens("add_rmsnorm", tokens, x)
    _check_hidden("add_rmsnorm", hidden)
    arrays = {"x": x, "residual": residual, "weight": weight, "out": out}
    if out_kperm is not None:
        check_array("out_kperm", out_kperm, np.float16, shape=(tokens, hidden))
        if hidden % KPERM_BLOCK:
            raise ValueError(f"add_rmsnorm: out_kperm needs a hidden size that is a multiple of {KPERM_BLOCK}, got {hidden}")
        arrays["out_kperm"] = out_kperm
    for name, arr in arrays.items():
        _check_aligned(name, arr)
    kp = out_kperm if out_kperm is not None else np.uint64(0)  # null: no kperm copy
    args = (x, residual, weight, out, kp, np.int32(hidden), np.float32(eps))
    kernel, block = _row_launch("add_rmsnorm", hidden, threads)
    return kernel, (tokens,), block, args


def _plan_add(a, b, out):
    check_array("a", a, np.float16)
    check_array("b", b, np.float16, shape=a.shape)
    check_array("out", out, np.float16, shape=a.shape)
    if a.size % 8:
        raise ValueError(f"add: element count must be a multiple of 8, got shape {tuple(a.shape)}")
    for name, arr in (("a", a), ("b", b), ("out", out)):
        _check_aligned(name, arr)
    chunks = a.size // 8
    grid = max(1, min(-(-chunks // 256), 132 * 16))
    return _kernel("add_f16"), (grid,), (256,), (a, b, out, np.int64(a.size))


def qkv_wide_lanes(head_dim: int, arrays) -> int | None:
    """Lanes per head of the 16-byte form, or None where only the narrow form applies (head_dim not
    8 * a power of two up to 256, or an array off a 16-byte boundary)."""
    lanes = head_dim // 8
    if head_dim % 8 or lanes not in QKV_WIDE_LANES or any(arr.data.ptr % 16 for arr in arrays):
        return None
    return lanes


def _plan_qkv_post(qkv, q_norm_w, k_norm_w, eps, rope_theta, pos, q_out, k_cache, v_cache, qk_norm=True,
                   form="auto", steps=QKV_WIDE_DEFAULT_STEPS):
    check_array("q_out", q_out, np.float16, ndim=3)
    tokens, q_heads, head_dim = q_out.shape
    check_array("k_cache", k_cache, np.float16, ndim=3)
    max_len, kv_heads = k_cache.shape[:2]
    if k_cache.shape[2] != head_dim:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and q_out {tuple(q_out.shape)} disagree on head_dim")
    check_array("v_cache", v_cache, np.float16, shape=k_cache.shape)
    check_array("qkv", qkv, np.float16, shape=(tokens, (q_heads + 2 * kv_heads) * head_dim))
    check_array("pos", pos, np.int32, shape=(1,))
    _check_tokens("qkv_post", tokens, q_out)
    if head_dim % 2 or not (head_dim <= 64 or head_dim % 64 == 0) or head_dim > 512:
        raise ValueError(f"qkv_post: head_dim must be even and <= 64, or a multiple of 64 up to 512; got {head_dim}")
    heads = q_heads + 2 * kv_heads
    if heads > MAX_QKV_HEADS:
        raise ValueError(f"qkv_post: at most {MAX_QKV_HEADS} q + k + v heads, got {q_heads} + 2 * {kv_heads}")
    if not rope_theta > 0:
        raise ValueError(f"qkv_post: rope_theta must be > 0, got {rope_theta}")
    if qk_norm:
        check_array("q_norm_w", q_norm_w, np.float16, shape=(head_dim,))
        check_array("k_norm_w", k_norm_w, np.float16, shape=(head_dim,))
    pairs_per_lane = max(1, head_dim // 64)
    for name, arr in (("qkv", qkv), ("q_out", q_out), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_aligned(name, arr, 2 * pairs_per_lane)
    if qk_norm:
        _check_aligned("q_norm_w", q_norm_w, 2 * pairs_per_lane)
        _check_aligned("k_norm_w", k_norm_w, 2 * pairs_per_lane)
    else:
        q_norm_w = k_norm_w = qkv  # never read
    if form not in ("auto", "wide", "narrow") or steps not in QKV_WIDE_STEPS:
        raise ValueError(f"qkv_post: form must be auto, wide or narrow and steps one of {QKV_WIDE_STEPS}; got {form!r}, {steps}")
    lanes = qkv_wide_lanes(head_dim, (qkv, q_norm_w, k_norm_w, q_out, k_cache, v_cache)) if form != "narrow" else None
    if form == "wide" and lanes is None:
        raise ValueError(f"qkv_post: the 16-byte form needs head_dim in {[8 * n for n in QKV_WIDE_LANES]} and 16-byte aligned arrays")
    if lanes is not None:
        heads_per_warp = 32 // lanes * steps
        warps = -(-heads // heads_per_warp)
        if warps <= 32:
            args = (
                qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, np.int32(q_heads), np.int32(kv_heads),
                np.int32(max_len), np.float32(eps), np.float64(math.log2(rope_theta)), np.int32(bool(qk_norm)),
            )  # fmt: skip
            return _kernel(f"qkv_post_l{lanes}_s{steps}"), (tokens,), (32 * warps,), args
    args = (
        qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache,
        np.int32(head_dim), np.int32(q_heads), np.int32(kv_heads), np.int32(max_len),
        np.float32(eps), np.float64(math.log2(rope_theta)), np.int32(bool(qk_norm)),
    )  # fmt: skip
    warps = -(-heads // QKV_HEADS_PER_WARP)
    return _kernel(f"qkv_post_vp{pairs_per_lane}"), (tokens,), (32 * warps,), args


# -- public ops ---------------------------------------------------------------------------------


def embed(token_ids, table, out) -> None:
    """out[t] = table[token_ids[t]] (ids outside [0, V) give a zero row). token_ids int32 [T], table fp16 [V, H], out fp16 [T, H]."""
    kernel, grid, block, args = _plan_embed(token_ids, table, out)
    kernel(grid, block, args)


def rmsnorm(x, weight, eps: float, out) -> None:
    """out = x * rsqrt(mean(x^2, -1) + eps) * weight in FP32 (Qwen3 RMSNorm). x, out fp16 [T, H]; weight fp16 [H]."""
    kernel, grid, block, args = _plan_rmsnorm(x, weight, eps, out)
    kernel(grid, block, args)


def add_rmsnorm(x, residual, weight, eps: float, out, out_kperm=None) -> None:
    """residual += x (stored FP16), then out = rmsnorm(residual). x, residual, out fp16 [T, H]; weight fp16 [H].
    With out_kperm (fp16 [T, H], H % 128 == 0), also out in kperm order there (the wgp expert GEMMs' input)."""
    kernel, grid, block, args = _plan_add_rmsnorm(x, residual, weight, eps, out, out_kperm=out_kperm)
    kernel(grid, block, args)


def add(a, b, out) -> None:
    """out = a + b (FP32 add, one rounding); any shape, size % 8 == 0; out may alias a or b."""
    kernel, grid, block, args = _plan_add(a, b, out)
    kernel(grid, block, args)


def qkv_post(qkv, q_norm_w, k_norm_w, eps: float, rope_theta: float, pos, q_out, k_cache, v_cache, qk_norm: bool = True,
             form: str = "auto", steps: int = QKV_WIDE_DEFAULT_STEPS) -> None:
    """Attention prologue of one chunk: per-head RMSNorm of q and k (skipped when qk_norm is False),
    NeoX RoPE (rotate-half, inv_freq = theta^(-2i/D)) at position pos[0] + t, q to q_out, k and v
    appended to the caches at row pos[0] + t (rows outside [0, max_len) are not written).

    qkv fp16 [T, (Hq + 2*Hkv) * D] with columns [q heads | k heads | v heads]; q_norm_w, k_norm_w
    fp16 [D] (may be None when qk_norm is False); pos int32 [1] on the device; q_out fp16 [T, Hq, D];
    k_cache, v_cache fp16 [max_len, Hkv, D].

    form "auto" runs the 16-byte form (one 16-byte chunk of a head per lane, `steps` heads per lane)
    where D is 8 * a power of two up to 256 and every array is 16-byte aligned, else the narrow form;
    "wide" / "narrow" force one (for tests and timing). Both rotate by the same cos/sin bits.
    """
    kernel, grid, block, args = _plan_qkv_post(
        qkv, q_norm_w, k_norm_w, eps, rope_theta, pos, q_out, k_cache, v_cache, qk_norm, form, steps
    )
    kernel(grid, block, args)


_PLANS = {
    embed: _plan_embed,
    rmsnorm: _plan_rmsnorm,
    add_rmsnorm: _plan_add_rmsnorm,
    add: _plan_add,
    qkv_post: _plan_qkv_post,
}


def prepare(op, *args, **kwargs):
    """Check `op(*args, **kwargs)` once and return a no-argument callable that launches it.

    The callable holds the arrays (not their contents): it launches on the stream current at call
    time and reads device values such as `pos` when the kernel runs, so it can be replayed for
    every chunk of the same length.
    """
    kernel, grid, block, kargs = _PLANS[op](*args, **kwargs)
    return functools.partial(kernel, grid, block, kargs)
