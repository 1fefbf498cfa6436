"""Wrappers for kernels_cu/routing.cu: router top-k, the expert permutation, and the weighted combine.

Layouts (the contract with the expert GEMMs and the engine; R = T * k permuted rows):
  topk_ids int32 [T, k], topk_weights fp32 [T, k]
  expert_offsets int32 [E + 1]: rows of expert e are [offsets[e], offsets[e + 1]), offsets[E] = R
  row_token int32 [R], row_weight fp32 [R]: token and router weight of permuted row r
  token_rows int32 [T, k]: the permuted row of (t, j)
Rows of one expert are in increasing (t, j) order; every kernel is deterministic bit for bit.

The engine runs topk_count + permute_counted (top-k, then the permutation spread over every block
instead of a few: same outputs as topk_softmax + build_permutation) and combine_rmsnorm (combine,
then the next layer's RMSNorm of the new residual). topk_softmax, build_permutation and combine
remain for other callers and as references. Both combines optionally add a shared expert's output
scaled by the sigmoid of its N=1 gate (Qwen3.5/3.6) in the same pass. Gemma-4's router multiplies each
chosen expert's weight by a per-expert scale (the top-k's expert_scale), and its feed-forward block
ends in post_ffn_norms (the expert rows summed, three norms, the residual add and the layer scalar, and
optionally the next layer's input norm) instead of a combine.

Wrappers check dtypes, shapes and contiguity (ValueError naming them) and launch on the current
stream without allocating, synchronizing or reading device memory: each is capture-safe. The one
workspace is topk_count's block_counts int32 [ceil(T / 16), E] (no zeroing needed: every entry is
written).
"""

from __future__ import annotations

import functools

import numpy as np

from impbench.kernels.checks import check_array, check_rows
from impbench.kernels.modules import get_function

FAMILY = "routing"
MAX_EXPERTS = 512
MAX_TOP_K = 16
TOPK_WARPS_PER_BLOCK = 4
PERM_EXPERTS_PER_BLOCK = 8  # EPB in kernels_cu/routing.cu
PERM_THREADS = 1024
COUNT_TOKENS = 16  # topk_count / permute_counted: tokens per block (kernels_cu/routing.cu)
COUNT_THREADS = 32 * COUNT_TOKENS
COMBINE_THREADS = 256
COMBINE_CHUNKS = (1, 2, 4)  # 16-byte chunks per thread combine_rmsnorm is built for
MAX_COMBINE_NORM_HIDDEN = 8 * COMBINE_CHUNKS[-1] * COMBINE_THREADS  # 8192


def _kernel(name: str):
    return get_function(FAMILY, name)


def _expert_scale_arg(expert_scale, experts: int):
    """The kernel argument of the optional per-expert weight scale fp32 [E]: the array, or a null pointer."""
    if expert_scale is None:
        return np.uint64(0)
    check_array("expert_scale", expert_scale, np.float32, shape=(experts,))
    return expert_scale


def _plan_topk_softmax(logits, k: int, renormalize: bool, topk_ids, topk_weights, expert_scale=None):
    check_array("logits", logits, np.float16, ndim=2)
    tokens, experts = logits.shape
    if not 1 <= experts <= MAX_EXPERTS:
        raise ValueError(f"topk_softmax: experts must be in [1, {MAX_EXPERTS}], got logits {tuple(logits.shape)}")
    if not 1 <= k <= min(MAX_TOP_K, experts):
        raise ValueError(f"topk_softmax: k must be in [1, min({MAX_TOP_K}, E={experts})], got {k}")
    if tokens < 1:
        raise ValueError(f"topk_softmax: logits {tuple(logits.shape)} has no tokens")
    check_array("topk_ids", topk_ids, np.int32, shape=(tokens, k))
    check_array("topk_weights", topk_weights, np.float32, shape=(tokens, k))
    scale = _expert_scale_arg(expert_scale, experts)
    per_lane = next(n for n in (4, 8, 16) if experts <= 32 * n)
    grid = -(-tokens // TOPK_WARPS_PER_BLOCK)
    args = (logits, np.int32(tokens), np.int32(experts), np.int32(k), np.int32(bool(renormalize)), topk_ids, topk_weights,
            scale)  # fmt: skip
    return _kernel(f"topk_softmax_n{per_lane}"), (grid,), (32 * TOPK_WARPS_PER_BLOCK,), args


def _check_permutation(topk_weights, expert_offsets, row_token, row_weight, token_rows, tokens, k, experts) -> None:
    """The router weights in and the permutation's outputs (the contract with kernels/moe.py)."""
    rows = tokens * k
    check_array("topk_weights", topk_weights, np.float32, shape=(tokens, k))
    check_array("expert_offsets", expert_offsets, np.int32, shape=(experts + 1,))
    check_array("row_token", row_token, np.int32, shape=(rows,))
    check_array("row_weight", row_weight, np.float32, shape=(rows,))
    check_array("token_rows", token_rows, np.int32, shape=(tokens, k))


def _plan_build_permutation(topk_ids, topk_weights, num_experts: int, expert_offsets, row_token, row_weight, token_rows):
    check_array("topk_ids", topk_ids, np.int32, ndim=2)
    tokens, k = topk_ids.shape
    rows = tokens * k
    if num_experts < 1:
        raise ValueError(f"build_permutation: num_experts must be >= 1, got {num_experts}")
    if rows < 1:
        raise ValueError(f"build_permutation: topk_ids {tuple(topk_ids.shape)} has no rows")
    _check_permutation(topk_weights, expert_offsets, row_token, row_weight, token_rows, tokens, k, num_experts)
    args = (
        topk_ids, topk_weights, np.int32(rows), np.int32(k), np.int32(num_experts),
        expert_offsets, row_token, row_weight, token_rows,
    )  # fmt: skip
    grid = -(-num_experts // PERM_EXPERTS_PER_BLOCK)
    return _kernel("build_permutation_i32"), (grid,), (PERM_THREADS,), args


def _shared_args(shared, shared_gate, tokens: int, hidden: int) -> tuple:
    """Kernel arguments (shared, shared_stride, shared_gate, gate_stride) of the optional shared expert;
    null pointers where absent."""
    if shared is None:
        if shared_gate is not None:
            raise ValueError("combine: shared_gate without shared: pass the shared expert's output too")
        return np.uint64(0), np.int32(0), np.uint64(0), np.int32(0)
    stride = check_rows("shared", shared, np.float16, (tokens, hidden))
    if shared_gate is None:
        return shared, np.int32(stride), np.uint64(0), np.int32(0)
    gate_stride = check_rows("shared_gate", shared_gate, np.float16, (tokens, 1), vector=False)
    return shared, np.int32(stride), shared_gate, np.int32(gate_stride)


def _token_rows_shape(op: str, token_rows) -> tuple[int, int]:
    """(T, k) of a combine's token_rows [T, k] (each token's k expert rows)."""
    check_array("token_rows", token_rows, np.int32, ndim=2)
    tokens, k = token_rows.shape
    if not 1 <= k <= 32 or tokens < 1:
        raise ValueError(f"{op}: token_rows must be [T >= 1, 1 <= k <= 32], got {tuple(token_rows.shape)}")
    return tokens, k


def _plan_combine(y, token_rows, residual, out, topk_weights=None, shared=None, shared_gate=None):
    tokens, k = _token_rows_shape("combine", token_rows)
    check_array("residual", residual, np.float16, ndim=2)
    hidden = residual.shape[1]
    check_array("residual", residual, np.float16, shape=(tokens, hidden))
    check_array("out", out, np.float16, shape=(tokens, hidden))
    check_array("y", y, np.float16, ndim=2)
    if y.shape[1] != hidden:
        raise ValueError(f"combine: y {tuple(y.shape)} and residual {tuple(residual.shape)} disagree on hidden size")
    if hidden % 8:
        raise ValueError(f"combine: hidden size must be a multiple of 8, got residual {tuple(residual.shape)}")
    for name, arr in (("y", y), ("residual", residual), ("out", out)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} must start on a 16-byte boundary, got address {arr.data.ptr:#x}")
    if topk_weights is None:
        weights, has_weights = token_rows, 0  # never read
    else:
        check_array("topk_weights", topk_weights, np.float32, shape=(tokens, k))
        weights, has_weights = topk_weights, 1
    threads = min(COMBINE_THREADS, max(32, -(-(hidden // 8) // 32) * 32))
    args = (y, token_rows, residual, out, weights, np.int32(has_weights), np.int32(y.shape[0]), np.int32(k), np.int32(hidden),
            *_shared_args(shared, shared_gate, tokens, hidden))  # fmt: skip
    return _kernel("combine_f16"), (tokens,), (threads,), args


def count_blocks(tokens: int) -> int:
    """Rows of the block_counts workspace topk_count fills for `tokens` tokens."""
    return -(-tokens // COUNT_TOKENS)


def _plan_topk_count(logits, k: int, renormalize: bool, topk_ids, topk_weights, token_rows, block_counts,
                     expert_scale=None):  # fmt: skip
    _, _, _, topk_args = _plan_topk_softmax(logits, k, renormalize, topk_ids, topk_weights, expert_scale)
    tokens, experts = logits.shape
    check_array("token_rows", token_rows, np.int32, shape=(tokens, k))
    check_array("block_counts", block_counts, np.int32, shape=(count_blocks(tokens), experts))
    per_lane = next(n for n in (4, 8, 16) if experts <= 32 * n)
    # (logits, tokens, experts, k, renormalize), then the outputs, then expert_scale (null: none)
    args = topk_args[:5] + (topk_ids, topk_weights, token_rows, block_counts, topk_args[-1])
    return _kernel(f"topk_count_n{per_lane}"), (count_blocks(tokens),), (COUNT_THREADS,), args


def _plan_permute_counted(topk_ids, topk_weights, block_counts, expert_offsets, row_token, row_weight, token_rows):
    check_array("topk_ids", topk_ids, np.int32, ndim=2)
    tokens, k = topk_ids.shape
    rows = tokens * k
    if rows < 1:
        raise ValueError(f"permute_counted: topk_ids {tuple(topk_ids.shape)} has no rows")
    check_array("block_counts", block_counts, np.int32, ndim=2)
    experts = block_counts.shape[1]
    check_array("block_counts", block_counts, np.int32, shape=(count_blocks(tokens), experts))
    if not 1 <= experts <= MAX_EXPERTS or not 1 <= k <= MAX_TOP_K:
        raise ValueError(f"permute_counted: need 1 <= E <= {MAX_EXPERTS} and 1 <= k <= {MAX_TOP_K}, got E={experts}, k={k}")
    _check_permutation(topk_weights, expert_offsets, row_token, row_weight, token_rows, tokens, k, experts)
    args = (
        topk_ids, topk_weights, block_counts, np.int32(tokens), np.int32(k), np.int32(experts),
        expert_offsets, row_token, row_weight, token_rows,
    )  # fmt: skip
    return _kernel("permute_counted_i32"), (count_blocks(tokens),), (COUNT_THREADS,), args


def _plan_combine_rmsnorm(y, token_rows, residual, out, norm_weight, eps, normed, topk_weights=None, shared=None,
                          shared_gate=None):  # fmt: skip
    _, grid, block, args = _plan_combine(y, token_rows, residual, out, topk_weights, shared, shared_gate)
    tokens, hidden = residual.shape
    check_array("norm_weight", norm_weight, np.float16, shape=(hidden,))
    check_array("normed", normed, np.float16, shape=(tokens, hidden))
    for name, arr in (("norm_weight", norm_weight), ("normed", normed)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} must start on a 16-byte boundary, got address {arr.data.ptr:#x}")
    if hidden > MAX_COMBINE_NORM_HIDDEN:
        raise ValueError(f"combine_rmsnorm: hidden size must be <= {MAX_COMBINE_NORM_HIDDEN}, got residual {tuple(residual.shape)}")
    per_thread = -(-(hidden // 8) // block[0])
    chunks = next(c for c in COMBINE_CHUNKS if c >= per_thread)
    args = args + (norm_weight, normed, np.float32(eps))
    return _kernel(f"combine_rmsnorm_f16_c{chunks}"), grid, block, args


def _plan_post_ffn_norms(y, token_rows, dense, residual, norm_weights, eps, layer_scalar, out, next_norm=None,
                         normed=None):  # fmt: skip
    tokens, k = _token_rows_shape("post_ffn_norms", token_rows)
    check_array("dense", dense, np.float16, ndim=2)
    hidden = dense.shape[1]
    check_array("dense", dense, np.float16, shape=(tokens, hidden))
    check_array("residual", residual, np.float16, shape=(tokens, hidden))
    check_array("out", out, np.float16, shape=(tokens, hidden))
    check_array("y", y, np.float16, ndim=2)
    if y.shape[1] != hidden:
        raise ValueError(f"post_ffn_norms: y {tuple(y.shape)} and dense {tuple(dense.shape)} disagree on hidden size")
    if hidden % 8 or not 8 <= hidden <= MAX_COMBINE_NORM_HIDDEN:
        raise ValueError(f"post_ffn_norms: hidden size must be a multiple of 8 in [8, {MAX_COMBINE_NORM_HIDDEN}], got dense {tuple(dense.shape)}")
    try:
        norms = tuple(norm_weights)
    except TypeError:
        norms = ()
    if len(norms) != 3:
        raise ValueError("post_ffn_norms: norm_weights must be three fp16 [H] arrays: the post-MLP, post-MoE and post-feed-forward norms")
    for i, w in enumerate(norms):
        check_array(f"norm_weights[{i}]", w, np.float16, shape=(hidden,))
    if (next_norm is None) != (normed is None):
        raise ValueError("post_ffn_norms: next_norm and normed go together: pass both or neither")
    if next_norm is not None:
        check_array("next_norm", next_norm, np.float16, shape=(hidden,))
        check_array("normed", normed, np.float16, shape=(tokens, hidden))
    if out.data.ptr == dense.data.ptr:
        raise ValueError("post_ffn_norms: out must not be dense (dense receives the block's output, out the new residual)")
    if not np.isfinite(layer_scalar):
        raise ValueError(f"post_ffn_norms: layer_scalar must be a finite number, got {layer_scalar!r}")
    arrays = {"y": y, "dense": dense, "residual": residual, "out": out, **{f"norm_weights[{i}]": w for i, w in enumerate(norms)}}
    if next_norm is not None:
        arrays.update(next_norm=next_norm, normed=normed)
    for name, arr in arrays.items():
        if arr.data.ptr % 16:
            raise ValueError(f"{name} must start on a 16-byte boundary, got address {arr.data.ptr:#x}")
    chunks = hidden // 8
    per_thread = next(c for c in COMBINE_CHUNKS if chunks <= c * COMBINE_THREADS)
    per_block = -(-chunks // per_thread)  # the chunks spread evenly: ceil(H / 8 / C) threads, rounded up to a warp
    threads = -(-per_block // 32) * 32
    null = np.uint64(0)
    args = (y, token_rows, dense, residual, out, np.int32(y.shape[0]), np.int32(k), np.int32(hidden), *norms,
            np.float32(eps), np.float32(layer_scalar), null if next_norm is None else next_norm,
            null if normed is None else normed)  # fmt: skip
    return _kernel(f"post_ffn_norms_f16_c{per_thread}"), (tokens,), (threads,), args


def topk_softmax(logits, k: int, renormalize: bool, topk_ids, topk_weights, expert_scale=None) -> None:
    """Router: softmax over E in FP32, the k largest (ties to the lower expert id), weights renormalised
    to sum 1 when `renormalize` (Qwen3 norm_topk_prob), then each multiplied by expert_scale[its expert]
    where given (Gemma-4). logits fp16 [T, E] (E <= 512), k <= 16, topk_ids int32 [T, k] (largest first),
    topk_weights fp32 [T, k], expert_scale fp32 [E] or None."""
    kernel, grid, block, args = _plan_topk_softmax(logits, k, renormalize, topk_ids, topk_weights, expert_scale)
    kernel(grid, block, args)


def build_permutation(topk_ids, topk_weights, num_experts: int, expert_offsets, row_token, row_weight, token_rows) -> None:
    """Group the T*k (token, slot) pairs by expert: a stable counting sort, one block per 8 experts.

    Writes expert_offsets int32 [E+1] (exclusive prefix sum of the per-expert counts), and for
    each (t, j) its row r: row_token[r] = t, row_weight[r] = topk_weights[t, j], token_rows[t, j] = r.
    topk_ids must lie in [0, E) (an id outside is skipped: its rows are left unwritten).
    """
    kernel, grid, block, args = _plan_build_permutation(
        topk_ids, topk_weights, num_experts, expert_offsets, row_token, row_weight, token_rows
    )
    kernel(grid, block, args)


def combine(y, token_rows, residual, out, topk_weights=None, shared=None, shared_gate=None) -> None:
    """out[t] = residual[t] + sum_j w[t, j] * y[token_rows[t, j]] (+ sigmoid(shared_gate[t]) * shared[t]),
    FP32, j in order 0..k-1 then the shared row, one rounding.

    y fp16 [R, H]; token_rows int32 [T, k]; residual, out fp16 [T, H] (out may be residual);
    topk_weights fp32 [T, k], or None when the rows of y are already scaled by their router weight;
    shared fp16 [T, H] (the shared expert's output; rows may be spaced wider) or None; shared_gate fp16
    [T, 1] (its gate logit, e.g. a column slice of a wider GEMM output) or None for an ungated shared expert.
    """
    kernel, grid, block, args = _plan_combine(y, token_rows, residual, out, topk_weights, shared, shared_gate)
    kernel(grid, block, args)


def topk_count(logits, k: int, renormalize: bool, topk_ids, topk_weights, token_rows, block_counts,
               expert_scale=None) -> None:  # fmt: skip
    """topk_softmax (same outputs, bit for bit, expert_scale included), plus the first half of the
    permutation for permute_counted: per block of COUNT_TOKENS tokens, block_counts int32 [ceil(T / 16), E]
    gets each expert's count, and token_rows [T, k] each (t, j)'s rank among the block's rows of its expert."""
    kernel, grid, block, args = _plan_topk_count(logits, k, renormalize, topk_ids, topk_weights, token_rows, block_counts,
                                                 expert_scale)  # fmt: skip
    kernel(grid, block, args)


def permute_counted(topk_ids, topk_weights, block_counts, expert_offsets, row_token, row_weight, token_rows) -> None:
    """The permutation from topk_count's counts and ranks (run right after it on the same arrays): the
    outputs of build_permutation (E = block_counts.shape[1]), bit for bit; token_rows is overwritten
    with the rows."""
    kernel, grid, block, args = _plan_permute_counted(
        topk_ids, topk_weights, block_counts, expert_offsets, row_token, row_weight, token_rows
    )
    kernel(grid, block, args)


def combine_rmsnorm(y, token_rows, residual, out, norm_weight, eps: float, normed, topk_weights=None, shared=None,
                    shared_gate=None) -> None:  # fmt: skip
    """combine(y, token_rows, residual, out, topk_weights, shared, shared_gate), then normed = rmsnorm(out,
    norm_weight, eps) of the FP16 row just stored: the next layer's attention norm in the same launch.
    H <= 8192; norm_weight fp16 [H], normed fp16 [T, H]."""
    kernel, grid, block, args = _plan_combine_rmsnorm(y, token_rows, residual, out, norm_weight, eps, normed, topk_weights,
                                                      shared, shared_gate)  # fmt: skip
    kernel(grid, block, args)


def post_ffn_norms(y, token_rows, dense, residual, norm_weights, eps: float, layer_scalar: float, out, next_norm=None,
                   normed=None) -> None:  # fmt: skip
    """Gemma-4's feed-forward block after its GEMMs, per token t (FP32 throughout):
        routed = sum_j y[token_rows[t, j]]   (the expert rows, already weighted by moe_down's row_weight; j in order)
        o = rmsnorm(rmsnorm(dense[t], norm_weights[0]) + rmsnorm(routed, norm_weights[1]), norm_weights[2])
    o is rounded to FP16 and stored over dense[t] (the block's output); out[t] = (residual[t] + o) *
    layer_scalar, one rounding; with next_norm, normed[t] = rmsnorm(out[t], next_norm) of the FP16 row just
    stored (the next layer's input norm). y fp16 [R, H]; token_rows int32 [T, k]; dense, residual, out fp16
    [T, H] (out may be residual, not dense); norm_weights: three fp16 [H] (post-MLP, post-MoE,
    post-feed-forward); layer_scalar a float (FP32); next_norm fp16 [H] and normed fp16 [T, H], or both None.
    H a multiple of 8, <= 8192."""
    kernel, grid, block, args = _plan_post_ffn_norms(y, token_rows, dense, residual, norm_weights, eps, layer_scalar, out,
                                                     next_norm, normed)  # fmt: skip
    kernel(grid, block, args)


_PLANS = {
    topk_softmax: _plan_topk_softmax,
    build_permutation: _plan_build_permutation,
    combine: _plan_combine,
    combine_rmsnorm: _plan_combine_rmsnorm,
    topk_count: _plan_topk_count,
    permute_counted: _plan_permute_counted,
    post_ffn_norms: _plan_post_ffn_norms,
}


def prepare(op, *args, **kwargs):
    """Check `op(*args, **kwargs)` once and return a no-argument callable that launches it (see ops.prepare)."""
    kernel, grid, block, kargs = _PLANS[op](*args, **kwargs)
    return functools.partial(kernel, grid, block, kargs)
