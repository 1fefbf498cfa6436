"""The launch sequence of one prefill chunk (Qwen3-MoE architecture), built once per chunk length.

Small ops: each layer's combine also writes the next layer's attention norm ("combine+attn_norm";
layer 0's norm follows the embedding, the last layer's combine is plain), and the router top-k
leaves per-block expert counts so that the permutation runs on every block at once (topk_count,
permute_counted). A fused op's name joins the plan's op names with "+", so `impbench run --profile`
can sum their floors (plan.op_floors_us).

Every launch is prepared up front: arguments checked, views sliced, GEMM path and tile variant
decided, kernel fetched. What remains is a list of (op name, no-argument launcher), so replaying it
from Python costs one call per kernel: the eager arm's host time is then the engine's, not this
benchmark's bookkeeping.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass

CUBLAS = "cublas"
NVFP4 = "nvfp4"  # a dense projection stored as NVFP4, through the grouped kernel with one expert


@dataclass
class Launch:
    op: str
    fn: object  # no-argument callable that launches the op's kernel(s) on the current stream


@dataclass
class LaunchList:
    launches: list
    gemm_paths: Counter  # GEMM path name -> count in one pass of this list

    def run(self, tracker) -> None:
        for launch in self.launches:
            tracker.current_op = launch.op
            launch.fn()

    def run_timed(self, stream) -> list[tuple[str, object, object]]:
        """Run with a CUDA event pair around every launch: (op, start, end) to read after a sync."""
        import cupy

        marks = []
        for launch in self.launches:
            start, end = cupy.cuda.Event(), cupy.cuda.Event()
            start.record(stream)
            launch.fn()
            end.record(stream)
            marks.append((launch.op, start, end))
        return marks


def _cublas(a, w, out):
    """cuBLAS through CuPy, as an eager engine calls it (refused inside a capture)."""
    import cupy

    return functools.partial(cupy.matmul, a, w.T, out=out)


def _delay(delay_us: float):
    import cupy

    from impbench.kernels import get_function

    return functools.partial(get_function("bench", "bench_delay"), (1,), (1,), (cupy.int64(round(1000 * delay_us)),))


def build_launches(preset, weights, buffers, length: int, last: bool, guard: str, delay_us: float = 0.0) -> LaunchList:
    """Every launch of one chunk of `length` tokens; `guard` picks the dense GEMM path (impbench.arms);
    `delay_us` > 0 plants a wait of that many µs after every layer (tests of the CI gate)."""
    from impbench.engine.weights import Nvfp4Linear
    from impbench.kernels import attention, gemm, moe, ops, routing
    from impbench.kernels.driver import packed

    b, p, t = buffers, preset, length
    eps, theta = p.rms_norm_eps, p.rope_theta
    resid, normed = b.resid[:t], b.normed[:t]
    rows = t * p.experts_per_token
    row_token, row_weight = b.row_token[:rows], b.row_weight[:rows]
    topk_ids, topk_weights, token_rows = b.topk_ids[:t], b.topk_weights[:t], b.token_rows[:t]
    scale = 1.0 / float(p.head_dim) ** 0.5

    launches: list[Launch] = []
    paths: Counter = Counter()

    def add(op, fn):
        launches.append(Launch(op, packed(fn)))

    def dense(op, a, w, out):
        if isinstance(w, Nvfp4Linear):
            offsets = b.dense_offsets[a.shape[0]]  # [0, M]: every row belongs to the one "expert"
            path, fn = NVFP4, moe.prepare(moe.moe_down, a, offsets, w.codes, w.scale, w.scale2, out)
        else:
            variant = gemm.choose_variant(a.shape[0], w.shape[0], w.shape[1], guard)
            path = variant or CUBLAS
            fn = gemm.prepare(a, w, out, variant) if variant else _cublas(a, w, out)
        paths[path] += 1
        add(op, fn)

    layers = weights.layers
    expert = weights.expert_variant  # the experts are stored as it reads them
    kperm = moe.VARIANTS[expert].kperm
    add("embed", ops.prepare(ops.embed, b.ids[:t], weights.embed, resid))
    add("attn_norm", ops.prepare(ops.rmsnorm, resid, layers[0].attn_norm, eps, normed))  # later layers': in combine
    for index, layer in enumerate(layers):
        k_cache, v_cache = b.k_cache[index], b.v_cache[index]
        dense("qkv_proj", normed, layer.wqkv, b.qkv[:t])
        add("qkv_post", ops.prepare(ops.qkv_post, b.qkv[:t], layer.q_norm, layer.k_norm, eps, theta, b.pos,
                                    b.q[:t], k_cache, v_cache, qk_norm=p.qk_norm))  # fmt: skip
        add("attention", attention.prepare(b.q[:t], k_cache, v_cache, b.pos, b.attn[:t], scale))
        dense("o_proj", b.attn[:t].reshape(t, -1), layer.wo, b.attn_proj[:t])
        kp_out = b.normed_kp[:t] if kperm else None  # the wgp expert GEMMs' x, written by the same launch
        add("ffn_norm", ops.prepare(ops.add_rmsnorm, b.attn_proj[:t], resid, layer.ffn_norm, eps, normed, out_kperm=kp_out))
        dense("router", normed, layer.router, b.router_logits[:t])
        counts = b.route_counts[: routing.count_blocks(t)]
        add("topk", routing.prepare(routing.topk_count, b.router_logits[:t], p.experts_per_token, p.norm_topk_prob,
                                    topk_ids, topk_weights, token_rows, counts))  # fmt: skip
        add("permute", routing.prepare(routing.permute_counted, topk_ids, topk_weights, counts, b.expert_offsets,
                                       row_token, row_weight, token_rows))  # fmt: skip
        # wgp reads x K-permuted (ffn_norm wrote it) and passes h to down in that order
        x_moe = kp_out if kperm else normed
        add("moe_gate_up", moe.prepare(moe.moe_gate_up, x_moe, row_token, b.expert_offsets, layer.w13,
                                       layer.w13_scale, layer.w13_scale2, b.expert_act[:rows], variant=expert))  # fmt: skip
        add("moe_down", moe.prepare(moe.moe_down, b.expert_act[:rows], b.expert_offsets, layer.w2, layer.w2_scale,
                                    layer.w2_scale2, b.expert_out[:rows], row_weight=row_weight, variant=expert))  # fmt: skip
        if delay_us:
            add("delay", _delay(delay_us))
        if index + 1 < len(layers):  # the residual's next reader is the next layer's attn_norm: fused
            add("combine+attn_norm", routing.prepare(routing.combine_rmsnorm, b.expert_out[:rows], token_rows, resid,
                                                     resid, layers[index + 1].attn_norm, eps, normed))  # fmt: skip
        else:
            add("combine", routing.prepare(routing.combine, b.expert_out[:rows], token_rows, resid, resid, None))
    if last:
        add("final_norm", ops.prepare(ops.rmsnorm, resid[t - 1 : t], weights.final_norm, eps, b.last_normed))
        dense("lm_head", b.last_normed, weights.lm_head, b.logits)
    return LaunchList(launches, paths)
