"""Wrappers for kernels_cu/ops.cu: embedding (optionally scaled), RMSNorm, residual add + RMSNorm (optionally
also in the kperm order of the wgp MoE kernels), add, q/k norm + RoPE (all or the first R dims) + KV append;
for the Qwen3.5/3.6 hybrid the linear layers' conv1d prep and conv-state carry and gated RMSNorm, the full
layers' sigmoid output gate, and the gated activation of a dense (shared-expert) MLP; for Gemma-4 the
attention prologue's V norm, K = V and proportional RoPE (qkv_post options), the post-attention norm
with its residual add and the norms that read the sum (post_attn_norms), and the logit soft-cap.

Every wrapper checks dtypes, shapes, contiguity and 16-byte alignment (ValueError naming them), then
launches on the current stream. None allocates, synchronizes or reads device memory on the host, so
each is capture-safe; the chunk position is a device array read by the kernel. Inputs documented as
"rows may be spaced wider" accept a column slice of a wider buffer (unit column stride, any row stride
that keeps 16-byte rows aligned): what a fused projection's output gives.

`prepare(op, *args)` does the checks once and returns a no-argument launcher, for replaying a
prepared launch list eagerly with the least host time per launch.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from impbench.kernels.checks import check_apart, check_array, check_rows
from impbench.kernels.modules import get_function
from impbench.kernels.moe import KPERM_BLOCK

FAMILY = "ops"
ROW_CHUNKS = (1, 2, 4, 8)  # 16-byte chunks per thread the row kernels are built for (kernels_cu/ops.cu)
MAX_ROW_THREADS = 128
ROW_THREADS_LIMIT = 256  # the row kernels' __launch_bounds__
QKV_HEADS_PER_WARP = 4  # kernels_cu/ops.cu, narrow form
MAX_QKV_HEADS = 32 * QKV_HEADS_PER_WARP  # one block of at most 32 warps per token
QKV_NARROW_PAIRS = (1, 2, 4, 8)  # rotary pairs per lane the narrow form is built for (qkv_post_vp{P}): head_dim 64 P
QKV_WIDE_LANES = (2, 4, 8, 16, 32)  # lanes per head of the 16-byte form: head_dim = 8 * lanes
QKV_WIDE_STEPS = (2, 4, 8)  # heads each lane handles in the 16-byte form
QKV_WIDE_DEFAULT_STEPS = 4
MAX_HIDDEN = 8 * ROW_CHUNKS[-1] * MAX_ROW_THREADS  # 8192 halves
CONV_TAPS = 4  # the conv width conv_prep is built for (kernels_cu/ops.cu CONV_TAPS)
CONV_TOKENS = 8  # tokens per thread of conv_prep
CONV_THREADS = 128  # conv_prep's __launch_bounds__
ELEMENTWISE_THREADS = 256  # gated_rmsnorm, attn_gate, gated_act: one 16-byte chunk a thread
GROUP_DIMS = tuple(8 * 2**n for n in range(6))  # head dims reduced by one lane group: 8 .. 256
ACTIVATIONS = ("silu", "gelu_tanh")  # gated_act's, as kernels_cu/ops.cu names its entry points
V_COPY, V_NORM, V_FROM_K = 0, 1, 2  # qkv_post's v_mode (kernels_cu/ops.cu)
MAX_POST_ATTN_OUTS = 3  # post_attn_norms: norms of h after the post-attention norm
SOFTCAP_THREADS = 256


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


def _chunk_grid(elements: int) -> tuple[int]:
    """The grid of an elementwise kernel with one 16-byte chunk (8 halves) a thread."""
    return (-(-elements // (8 * ELEMENTWISE_THREADS)),)


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


def _plan_embed(token_ids, table, out, scale=1.0):
    check_array("token_ids", token_ids, np.int32, ndim=1)
    check_array("table", table, np.float16, ndim=2)
    tokens, (vocab, hidden) = token_ids.shape[0], table.shape
    check_array("out", out, np.float16, shape=(tokens, hidden))
    _check_tokens("embed", tokens, out)
    _check_hidden("embed", hidden)
    _check_aligned("table", table)
    _check_aligned("out", out)
    if not math.isfinite(scale):
        raise ValueError(f"embed: scale must be finite, got {scale}")
    args = (token_ids, table, out, np.int32(vocab), np.int32(hidden), np.float32(scale))
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
    # out_kperm: the order the wgp expert GEMMs read (KPERM_BLOCK-wide blocks)
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


def _plan_post_attn_norms(x, residual, weights, eps, outs, threads=None, out_kperm=None):
    # out_kperm: outs[1] (the pre-MoE norm) also in the order the wgp / wgb expert GEMMs read
    check_array("x", x, np.float16, ndim=2)
    tokens, hidden = x.shape
    check_array("residual", residual, np.float16, shape=(tokens, hidden))
    weights, outs = list(weights), list(outs)
    if not 2 <= len(weights) <= 1 + MAX_POST_ATTN_OUTS or len(outs) != len(weights) - 1:
        raise ValueError(f"post_attn_norms: need 2 to {1 + MAX_POST_ATTN_OUTS} weights and one out per weight after the "
                         f"first; got {len(weights)} weights, {len(outs)} outs")  # fmt: skip
    _check_tokens("post_attn_norms", tokens, x)
    _check_hidden("post_attn_norms", hidden)
    arrays = {"x": x, "residual": residual}
    for j, weight in enumerate(weights):
        check_array(f"weights[{j}]", weight, np.float16, shape=(hidden,))
        arrays[f"weights[{j}]"] = weight
    for j, out in enumerate(outs):
        check_array(f"outs[{j}]", out, np.float16, shape=(tokens, hidden))
        arrays[f"outs[{j}]"] = out
    for name, arr in arrays.items():
        _check_aligned(name, arr)
    written = [("x", x), ("residual", residual)] + [(f"outs[{j}]", out) for j, out in enumerate(outs)]
    if out_kperm is not None:
        check_array("out_kperm", out_kperm, np.float16, shape=(tokens, hidden))
        if len(outs) < 2 or hidden % KPERM_BLOCK:
            raise ValueError(f"post_attn_norms: out_kperm copies outs[1]: needs two outs or more and a hidden size that is "
                             f"a multiple of {KPERM_BLOCK}; got {len(outs)} outs, hidden {hidden}")  # fmt: skip
        _check_aligned("out_kperm", out_kperm)
        written.append(("out_kperm", out_kperm))
    starts = {}
    for name, arr in written:  # same-shape rows: distinct outputs start at distinct addresses
        if arr.data.ptr in starts:
            raise ValueError(f"post_attn_norms: {name} and {starts[arr.data.ptr]} are the same buffer")
        starts[arr.data.ptr] = name
    null = np.uint64(0)  # never read: j >= n_out
    ws = weights[1:] + [null] * (1 + MAX_POST_ATTN_OUTS - len(weights))
    os_ = outs + [null] * (MAX_POST_ATTN_OUTS - len(outs))
    kp = out_kperm if out_kperm is not None else null
    args = (x, residual, weights[0], *ws, *os_, kp, np.int32(len(outs)), np.int32(hidden), np.float32(eps))
    kernel, block = _row_launch("post_attn_norms", hidden, threads)
    return kernel, (tokens,), block, args


def _plan_softcap(x, cap, out):
    check_array("x", x, np.float16)
    check_array("out", out, np.float16, shape=x.shape)
    if x.size % 8 or x.size == 0:
        raise ValueError(f"softcap: element count must be a positive multiple of 8, got shape {tuple(x.shape)}")
    if not (math.isfinite(cap) and cap > 0):
        raise ValueError(f"softcap: cap must be finite and > 0, got {cap}")
    _check_aligned("x", x)
    _check_aligned("out", out)
    chunks = x.size // 8
    grid = max(1, min(-(-chunks // SOFTCAP_THREADS), 132 * 16))
    args = (x, out, np.int64(x.size), np.float32(cap), np.float32(1.0 / cap))
    return _kernel("softcap_f16"), (grid,), (SOFTCAP_THREADS,), args


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


def _rot_chunks(head_dim: int, rotary_dim: int) -> int | None:
    """16-byte chunks of a head that rotate in the 16-byte form (R / 8: a power of two >= 2), or None
    where that form cannot rotate only `rotary_dim` dims."""
    chunks = rotary_dim // 8
    if rotary_dim == head_dim or (rotary_dim % 8 == 0 and chunks >= 2 and chunks & (chunks - 1) == 0):
        return chunks
    return None


def _plan_qkv_post(qkv, q_norm_w, k_norm_w, eps, rope_theta, pos, q_out, k_cache, v_cache, qk_norm=True,
                   form="auto", steps=QKV_WIDE_DEFAULT_STEPS, rotary_dim=None, v_norm=False, k_eq_v=False, rope_pairs=None):
    check_array("q_out", q_out, np.float16, ndim=3)
    tokens, q_heads, head_dim = q_out.shape
    check_array("k_cache", k_cache, np.float16, ndim=3)
    max_len, kv_heads = k_cache.shape[:2]
    if k_cache.shape[2] != head_dim:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and q_out {tuple(q_out.shape)} disagree on head_dim")
    check_array("v_cache", v_cache, np.float16, shape=k_cache.shape)
    v_heads = 0 if k_eq_v else kv_heads  # k_eq_v: no v heads, V is the normed raw k
    v_mode = V_FROM_K if k_eq_v else (V_NORM if v_norm else V_COPY)
    row_stride = check_rows("qkv", qkv, np.float16, (tokens, (q_heads + kv_heads + v_heads) * head_dim), vector=False)
    check_array("pos", pos, np.int32, shape=(1,))
    _check_tokens("qkv_post", tokens, q_out)
    if head_dim % 2 or not (head_dim <= 64 or (head_dim % 64 == 0 and head_dim // 64 in QKV_NARROW_PAIRS)):
        raise ValueError(f"qkv_post: head_dim must be even and <= 64, or one of "
                         f"{', '.join(str(64 * p) for p in QKV_NARROW_PAIRS[1:])}; got {head_dim}")  # fmt: skip
    heads = q_heads + kv_heads + v_heads
    if heads > MAX_QKV_HEADS:
        raise ValueError(f"qkv_post: at most {MAX_QKV_HEADS} q + k + v heads, got {q_heads} + {kv_heads} + {v_heads}")
    if not rope_theta > 0:
        raise ValueError(f"qkv_post: rope_theta must be > 0, got {rope_theta}")
    rotary_dim = head_dim if rotary_dim is None else rotary_dim
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(f"qkv_post: rotary_dim must be even and in [2, head_dim={head_dim}], got {rotary_dim}")
    if rope_pairs is not None:
        if rotary_dim != head_dim:
            raise ValueError(f"qkv_post: rope_pairs ({rope_pairs}) rotates within the whole head; it cannot be combined with "
                             f"rotary_dim {rotary_dim} < head_dim {head_dim}")  # fmt: skip
        if not isinstance(rope_pairs, (int, np.integer)) or isinstance(rope_pairs, bool) or not 0 <= rope_pairs <= head_dim // 2:
            raise ValueError(f"qkv_post: rope_pairs must be an integer in [0, head_dim/2={head_dim // 2}], got {rope_pairs}")
    pairs = rotary_dim // 2 if rope_pairs is None else int(rope_pairs)  # pairs that rotate; the rest pass through
    if qk_norm:
        check_array("q_norm_w", q_norm_w, np.float16, shape=(head_dim,))
        check_array("k_norm_w", k_norm_w, np.float16, shape=(head_dim,))
    pairs_per_lane = max(1, head_dim // 64)
    for name, arr in (("qkv", qkv), ("q_out", q_out), ("k_cache", k_cache), ("v_cache", v_cache)):
        _check_aligned(name, arr, 2 * pairs_per_lane)
    if row_stride % pairs_per_lane:
        raise ValueError(f"qkv_post: qkv's row stride ({row_stride} halves) must be a multiple of {pairs_per_lane}")
    if qk_norm:
        _check_aligned("q_norm_w", q_norm_w, 2 * pairs_per_lane)
        _check_aligned("k_norm_w", k_norm_w, 2 * pairs_per_lane)
    else:
        q_norm_w = k_norm_w = qkv  # never read
    if form not in ("auto", "wide", "narrow") or steps not in QKV_WIDE_STEPS:
        raise ValueError(f"qkv_post: form must be auto, wide or narrow and steps one of {QKV_WIDE_STEPS}; got {form!r}, {steps}")
    lanes = qkv_wide_lanes(head_dim, (qkv, q_norm_w, k_norm_w, q_out, k_cache, v_cache)) if form != "narrow" else None
    rot_chunks = _rot_chunks(head_dim, rotary_dim)
    if lanes is not None and (row_stride % 8 or rot_chunks is None):
        lanes = None
    if form == "wide" and lanes is None:
        raise ValueError(f"qkv_post: the 16-byte form needs head_dim in {[8 * n for n in QKV_WIDE_LANES]}, 16-byte aligned "
                         f"arrays and rows, and rotary_dim = head_dim or 8 * a power of two >= 16; got head_dim {head_dim}, "
                         f"rotary_dim {rotary_dim}")  # fmt: skip
    heads_per_warp = 0 if lanes is None else 32 // lanes * steps
    if lanes is not None and -(-heads // heads_per_warp) <= 32:
        args = (
            qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, np.int32(row_stride), np.int32(rot_chunks),
            np.int32(q_heads), np.int32(kv_heads), np.int32(max_len), np.float32(eps),
            np.float64(math.log2(rope_theta)), np.int32(bool(qk_norm)), np.int32(pairs), np.int32(v_mode),
        )  # fmt: skip
        name = f"qkv_post_l{lanes}_s{steps}" + ("_partial" if rotary_dim < head_dim else "")
        return _kernel(name), (tokens,), (32 * -(-heads // heads_per_warp),), args
    if rotary_dim != head_dim:
        raise ValueError(f"qkv_post: rotary_dim {rotary_dim} < head_dim {head_dim} needs the 16-byte form (head_dim in "
                         f"{[8 * n for n in QKV_WIDE_LANES]}, rotary_dim 8 * a power of two >= 16, 16-byte aligned arrays and rows)")  # fmt: skip
    args = (
        qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, np.int32(row_stride),
        np.int32(head_dim), np.int32(q_heads), np.int32(kv_heads), np.int32(max_len),
        np.float32(eps), np.float64(math.log2(rope_theta)), np.int32(bool(qk_norm)), np.int32(pairs), np.int32(v_mode),
    )  # fmt: skip
    warps = -(-heads // QKV_HEADS_PER_WARP)
    return _kernel(f"qkv_post_vp{pairs_per_lane}"), (tokens,), (32 * warps,), args


def _plan_conv_prep(mixed, conv_weight, conv_state, a, b, a_log, dt_bias, q, k, v, g, beta, eps=1e-6):
    check_array("q", q, np.float16, ndim=3)
    tokens, key_heads, key_dim = q.shape
    check_array("k", k, np.float16, shape=q.shape)
    check_array("v", v, np.float16, ndim=3)
    _, value_heads, value_dim = v.shape
    if v.shape[0] != tokens:
        raise ValueError(f"conv_prep: v {tuple(v.shape)} and q {tuple(q.shape)} disagree on tokens")
    _check_tokens("conv_prep", tokens, q)
    if key_dim not in GROUP_DIMS or value_dim % 8 or key_heads < 1 or value_heads < 1:
        raise ValueError(f"conv_prep: need key head dim in {GROUP_DIMS} and value head dim a multiple of 8; "
                         f"got q {tuple(q.shape)}, v {tuple(v.shape)}")  # fmt: skip
    channels = 2 * key_heads * key_dim + value_heads * value_dim
    mixed_stride = check_rows("mixed", mixed, np.float16, (tokens, channels))
    check_array("conv_weight", conv_weight, np.float16, ndim=2)
    if tuple(conv_weight.shape) != (channels, CONV_TAPS):
        raise ValueError(f"conv_weight must have shape ({channels}, {CONV_TAPS}) (channels 2 Hk dk + Hv dv; {CONV_TAPS} taps, "
                         f"the one conv width built), got {tuple(conv_weight.shape)}")  # fmt: skip
    check_array("conv_state", conv_state, np.float16, shape=(CONV_TAPS - 1, channels))
    a_stride = check_rows("a", a, np.float16, (tokens, value_heads), vector=False)
    b_stride = check_rows("b", b, np.float16, (tokens, value_heads), vector=False)
    check_array("a_log", a_log, np.float32, shape=(value_heads,))
    check_array("dt_bias", dt_bias, np.float32, shape=(value_heads,))
    check_array("g", g, np.float32, shape=(tokens, value_heads))
    check_array("beta", beta, np.float32, shape=(tokens, value_heads))
    for name, arr in (("conv_weight", conv_weight), ("conv_state", conv_state), ("q", q), ("k", k), ("v", v)):
        _check_aligned(name, arr)
    # the state is rewritten (the conv's carry) in the launch that reads mixed, conv_weight, a, b, a_log and
    # dt_bias through non-coherent loads and writes q, k, v, g and beta
    check_apart("conv_state", conv_state, {"mixed": mixed, "conv_weight": conv_weight, "a": a, "b": b, "a_log": a_log,
                                           "dt_bias": dt_bias, "q": q, "k": k, "v": v, "g": g, "beta": beta})  # fmt: skip
    chunks = channels // 8
    threads = min(CONV_THREADS, -(-chunks // 32) * 32)
    grid = (-(-chunks // threads), -(-tokens // CONV_TOKENS))
    args = (
        mixed, np.int32(mixed_stride), conv_weight, conv_state, a, np.int32(a_stride), b, np.int32(b_stride), a_log,
        dt_bias, q, k, v, g, beta, np.int32(tokens), np.int32(key_heads), np.int32(value_heads), np.int32(key_dim),
        np.int32(value_dim), np.float32(eps), np.float32(1.0 / math.sqrt(key_dim)),
    )  # fmt: skip
    return _kernel(f"conv_prep_k{CONV_TAPS}"), grid, (threads,), args


def _plan_gated_rmsnorm(o, z, weight, eps, out):
    check_array("o", o, np.float16, ndim=3)
    tokens, heads, head_dim = o.shape
    _check_tokens("gated_rmsnorm", tokens, o)
    if head_dim not in GROUP_DIMS:
        raise ValueError(f"gated_rmsnorm: head dim must be one of {GROUP_DIMS}, got o {tuple(o.shape)}")
    width = heads * head_dim
    z_stride = check_rows("z", z, np.float16, (tokens, width))
    check_array("weight", weight, np.float16, shape=(head_dim,))
    check_array("out", out, np.float16, shape=(tokens, width))
    for name, arr in (("o", o), ("weight", weight), ("out", out)):
        _check_aligned(name, arr)
    args = (o, z, np.int32(z_stride), weight, out, np.int32(tokens), np.int32(width), np.int32(head_dim), np.float32(eps))
    return _kernel("gated_rmsnorm_f16"), _chunk_grid(tokens * width), (ELEMENTWISE_THREADS,), args


def _plan_attn_gate(attn, gate, out):
    check_array("attn", attn, np.float16, ndim=3)
    tokens, heads, head_dim = attn.shape
    _check_tokens("attn_gate", tokens, attn)
    width = heads * head_dim
    if width % 8 or width < 8:
        raise ValueError(f"attn_gate: heads * head_dim must be a multiple of 8, got attn {tuple(attn.shape)}")
    gate_stride = check_rows("gate", gate, np.float16, (tokens, width))
    check_array("out", out, np.float16, shape=(tokens, width))
    _check_aligned("attn", attn)
    _check_aligned("out", out)
    args = (attn, gate, np.int32(gate_stride), out, np.int32(tokens), np.int32(width))
    return _kernel("attn_gate_f16"), _chunk_grid(tokens * width), (ELEMENTWISE_THREADS,), args


def _plan_gated_act(gate_up, out, activation="silu"):
    check_array("out", out, np.float16, ndim=2)
    tokens, inter = out.shape
    _check_tokens("gated_act", tokens, out)
    if activation not in ACTIVATIONS:
        raise ValueError(f"gated_act: activation must be one of {ACTIVATIONS}, got {activation!r}")
    if inter % 8 or inter < 8:
        raise ValueError(f"gated_act: the intermediate size must be a multiple of 8, got out {tuple(out.shape)}")
    stride = check_rows("gate_up", gate_up, np.float16, (tokens, 2 * inter))
    _check_aligned("out", out)
    args = (gate_up, np.int32(stride), out, np.int32(tokens), np.int32(inter))
    return _kernel(f"gated_act_{activation}"), _chunk_grid(tokens * inter), (ELEMENTWISE_THREADS,), args


# -- public ops ---------------------------------------------------------------------------------


def embed(token_ids, table, out, scale: float = 1.0) -> None:
    """out[t] = table[token_ids[t]] * scale (ids outside [0, V) give a zero row): the product in FP32, rounded once
    (scale 1: the row's bits; Gemma-4: sqrt(H)). token_ids int32 [T], table fp16 [V, H], out fp16 [T, H]."""
    kernel, grid, block, args = _plan_embed(token_ids, table, out, scale)
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


def post_attn_norms(x, residual, weights, eps: float, outs, out_kperm=None) -> None:
    """Gemma-4's norms around the post-attention residual add, one launch: a = rmsnorm(x) * weights[0], stored
    over x; residual += a (the FP32 sum rounded once to FP16); then outs[j] = rmsnorm(residual) * weights[j + 1]
    for each further weight (1 to 3: pre-MLP, pre-MoE, the router's prenorm with its scale folded into the
    weight). h's rms is taken from the stored FP16 residual, as add_rmsnorm's. x, residual, outs[j] fp16 [T, H]
    (distinct buffers); weights[j] fp16 [H]; every norm x * rsqrt(mean(x^2) + eps) * w in FP32. out_kperm: outs[1]
    also in kperm order (moe.to_kperm), the input of the wgp / wgb expert GEMMs (H % 128 == 0)."""
    kernel, grid, block, args = _plan_post_attn_norms(x, residual, weights, eps, outs, out_kperm=out_kperm)
    kernel(grid, block, args)


def softcap(x, cap: float, out) -> None:
    """out = cap * tanh(x / cap) elementwise in FP32 (accurate tanhf), rounded once: Gemma-4's final logit
    soft-capping. x, out fp16 of one shape (e.g. the last token's logits [1, V]), size % 8 == 0; out may be x."""
    kernel, grid, block, args = _plan_softcap(x, cap, out)
    kernel(grid, block, args)


def add(a, b, out) -> None:
    """out = a + b (FP32 add, one rounding); any shape, size % 8 == 0; out may alias a or b."""
    kernel, grid, block, args = _plan_add(a, b, out)
    kernel(grid, block, args)


def qkv_post(qkv, q_norm_w, k_norm_w, eps: float, rope_theta: float, pos, q_out, k_cache, v_cache, qk_norm: bool = True,
             form: str = "auto", steps: int = QKV_WIDE_DEFAULT_STEPS, rotary_dim: int | None = None, v_norm: bool = False,
             k_eq_v: bool = False, rope_pairs: int | None = None) -> None:
    """Attention prologue of one chunk: per-head RMSNorm of q and k (skipped when qk_norm is False),
    NeoX RoPE at position pos[0] + t, q to q_out, k and v appended to the caches at row pos[0] + t
    (rows outside [0, max_len) are not written). RoPE rotates the first R = rotary_dim dims (default
    D) as rotate-half over R: pairs (i, i + R/2), inv_freq = theta^(-2i/R); dims R..D pass through.

    qkv fp16 [T, (Hq + 2*Hkv) * D] with columns [q heads | k heads | v heads]; its rows may be spaced
    wider (a column slice, e.g. without the output-gate columns that follow); q_norm_w, k_norm_w fp16
    [D], the scale itself (may be None when qk_norm is False); pos int32 [1] on the device; q_out fp16
    [T, Hq, D]; k_cache, v_cache fp16 [max_len, Hkv, D].

    Gemma-4: v_norm writes the v head under a weightless RMSNorm (x * rsqrt(mean(x^2) + eps)) instead of
    a copy; k_eq_v (implies v_norm) takes qkv fp16 [T, (Hq + Hkv) * D], columns [q heads | k heads], and
    writes the weightless RMSNorm of the raw k head (before k_norm and RoPE) as V; rope_pairs = P
    ("proportional" RoPE) rotates only pairs (i, i + D/2) with i < P, at inv_freq theta^(-2i/D) still,
    and passes the others through (None: all D/2; not with rotary_dim < D).

    form "auto" runs the 16-byte form (one 16-byte chunk of a head per lane, `steps` heads per lane)
    where D is 8 * a power of two up to 256, every array and qkv's rows are 16-byte aligned and R is D
    or 8 * a power of two >= 16, else the narrow form (R = D only; at D = 512 its lanes also move 16
    bytes a load); "wide" / "narrow" force one (for tests and timing). Both rotate by the same cos/sin bits.
    """
    kernel, grid, block, args = _plan_qkv_post(
        qkv, q_norm_w, k_norm_w, eps, rope_theta, pos, q_out, k_cache, v_cache, qk_norm, form, steps, rotary_dim,
        v_norm, k_eq_v, rope_pairs,
    )
    kernel(grid, block, args)


def conv_prep(mixed, conv_weight, conv_state, a, b, a_log, dt_bias, q, k, v, g, beta, eps: float = 1e-6) -> None:
    """The linear (Gated DeltaNet) layer's prologue of one chunk, one launch: x = silu(causal depthwise
    conv1d of mixed, K = 4 taps, no bias, with conv_state's K - 1 rows before the chunk's first), then
    q = l2norm(x_q) / sqrt(dk), k = l2norm(x_k) per head (x / sqrt(sum x^2 + eps)), v = x_v; and
    g = -exp(a_log) * softplus(a + dt_bias), beta = sigmoid(b). FP32 math. The same launch carries the
    state to the next chunk: conv_state <- the last 3 rows of concat(conv_state, mixed) (also when T < 3).

    mixed fp16 [T, C] (rows may be spaced wider), C = 2 Hk dk + Hv dv, columns [q | k | v];
    conv_weight fp16 [C, 4]; conv_state fp16 [3, C], in place: the last 3 raw rows of the previous chunk
    (zeros at the prompt's start); a, b fp16 [T, Hv] (rows may be spaced wider); a_log, dt_bias fp32 [Hv];
    out: q, k fp16 [T, Hk, dk] (dk = 8 * 2^n <= 256), v fp16 [T, Hv, dv] (dv % 8 == 0), g, beta fp32 [T, Hv].
    """
    kernel, grid, block, args = _plan_conv_prep(mixed, conv_weight, conv_state, a, b, a_log, dt_bias, q, k, v, g, beta, eps)
    kernel(grid, block, args)


def gated_rmsnorm(o, z, weight, eps: float, out) -> None:
    """out = weight * rmsnorm(o) * silu(z) per (token, head), FP32 math, one rounding (the linear layer's
    gated norm: plain weight, not 1 + w). o fp16 [T, Hv, dv] (dv = 8 * 2^n <= 256); z fp16 [T, Hv * dv]
    (rows may be spaced wider); weight fp16 [dv]; out fp16 [T, Hv * dv], may alias o."""
    kernel, grid, block, args = _plan_gated_rmsnorm(o, z, weight, eps, out)
    kernel(grid, block, args)


def attn_gate(attn, gate, out) -> None:
    """out[t, h * D + d] = attn[t, h, d] * sigmoid(gate[t, h * D + d]): the gated attention's output gate.
    attn fp16 [T, Hq, D]; gate fp16 [T, Hq * D] (rows may be spaced wider: the gate columns of the q
    projection); out fp16 [T, Hq * D], may alias attn."""
    kernel, grid, block, args = _plan_attn_gate(attn, gate, out)
    kernel(grid, block, args)


def gated_act(gate_up, out, activation: str = "silu") -> None:
    """out = act(gate) * up of a dense gated MLP (the shared expert), act "silu" or "gelu_tanh", FP32 math.
    gate_up fp16 [T, 2S]: the gate columns then the up columns (rows may be spaced wider); out fp16 [T, S]."""
    kernel, grid, block, args = _plan_gated_act(gate_up, out, activation)
    kernel(grid, block, args)


_PLANS = {
    embed: _plan_embed,
    rmsnorm: _plan_rmsnorm,
    add_rmsnorm: _plan_add_rmsnorm,
    post_attn_norms: _plan_post_attn_norms,
    softcap: _plan_softcap,
    add: _plan_add,
    qkv_post: _plan_qkv_post,
    conv_prep: _plan_conv_prep,
    gated_rmsnorm: _plan_gated_rmsnorm,
    attn_gate: _plan_attn_gate,
    gated_act: _plan_gated_act,
}


def prepare(op, *args, **kwargs):
    """Check `op(*args, **kwargs)` once and return a no-argument callable that launches it.

    The callable holds the arrays (not their contents): it launches on the stream current at call
    time and reads device values such as `pos` when the kernel runs, so it can be replayed for
    every chunk of the same length.
    """
    kernel, grid, block, kargs = _PLANS[op](*args, **kwargs)
    return functools.partial(kernel, grid, block, kargs)
