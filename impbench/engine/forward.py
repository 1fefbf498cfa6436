"""The launch sequence of one prefill chunk (Qwen3-MoE architecture), built once per chunk length.

A chunk's launches are prepared as a list of (op name, callable, args) with every view and GEMM
path decided up front, so replaying the list from Python costs one call per kernel and nothing else:
the eager arm's host time is then the engine's, not this benchmark's bookkeeping.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

CUBLAS = "cublas"


@dataclass
class Launch:
    op: str
    fn: object
    args: tuple
    kwargs: dict = field(default_factory=dict)


@dataclass
class LaunchList:
    launches: list
    gemm_paths: Counter  # GEMM path name -> count in one pass of this list

    def run(self, tracker) -> None:
        for launch in self.launches:
            tracker.current_op = launch.op
            launch.fn(*launch.args, **launch.kwargs)


def _cublas_gemm(a, w, out):
    import cupy

    cupy.matmul(a, w.T, out=out)


def build_launches(preset, weights, buffers, length: int, last: bool, guard: str | None) -> LaunchList:
    """Every launch of one chunk of `length` tokens; `guard` picks the dense GEMM path (None: cuBLAS)."""
    from impbench.kernels import attention, gemm, moe, ops, routing

    b, p = buffers, preset
    eps, theta = p.rms_norm_eps, p.rope_theta
    tokens = length
    resid, normed = b.resid[:tokens], b.normed[:tokens]
    qkv, q, attn, attn_proj = b.qkv[:tokens], b.q[:tokens], b.attn[:tokens], b.attn_proj[:tokens]
    router_logits = b.router_logits[:tokens]
    topk_ids, topk_weights, token_rows = b.topk_ids[:tokens], b.topk_weights[:tokens], b.token_rows[:tokens]
    rows = tokens * p.experts_per_token
    row_token, row_weight = b.row_token[:rows], b.row_weight[:rows]
    expert_act, expert_out = b.expert_act[:rows], b.expert_out[:rows]
    scale = 1.0 / float(p.head_dim) ** 0.5

    launches: list[Launch] = []
    paths: Counter = Counter()

    def dense(op, a, w, out):
        variant = gemm.choose_variant(a.shape[0], w.shape[0], w.shape[1], guard) if guard else None
        if variant is None:
            launches.append(Launch(op, _cublas_gemm, (a, w, out)))
            paths[CUBLAS] += 1
        else:
            launches.append(Launch(op, gemm.gemm, (a, w, out), {"variant": variant}))
            paths[variant] += 1

    launches.append(Launch("embed", ops.embed, (b.ids[:tokens], weights.embed, resid)))
    for index, layer in enumerate(weights.layers):
        k_cache, v_cache = b.k_cache[index], b.v_cache[index]
        launches.append(Launch("attn_norm", ops.rmsnorm, (resid, layer.attn_norm, eps, normed)))
        dense("qkv_proj", normed, layer.wqkv, qkv)
        launches.append(
            Launch(
                "qkv_post",
                ops.qkv_post,
                (qkv, layer.q_norm, layer.k_norm, eps, theta, b.pos, q, k_cache, v_cache),
                {"qk_norm": p.qk_norm},
            )
        )
        launches.append(Launch("attention", attention.attention_prefill, (q, k_cache, v_cache, b.pos, attn, scale)))
        dense("o_proj", attn.reshape(tokens, -1), layer.wo, attn_proj)
        launches.append(Launch("ffn_norm", ops.add_rmsnorm, (attn_proj, resid, layer.ffn_norm, eps, normed)))
        dense("router", normed, layer.router, router_logits)
        launches.append(
            Launch("topk", routing.topk_softmax, (router_logits, p.experts_per_token, p.norm_topk_prob, topk_ids, topk_weights))
        )
        launches.append(
            Launch(
                "permute",
                routing.build_permutation,
                (topk_ids, topk_weights, p.num_experts, b.expert_offsets, row_token, row_weight, token_rows),
            )
        )
        launches.append(
            Launch(
                "moe_gate_up",
                moe.moe_gate_up,
                (normed, row_token, b.expert_offsets, layer.w13, layer.w13_scale, layer.w13_scale2, expert_act),
            )
        )
        launches.append(
            Launch(
                "moe_down",
                moe.moe_down,
                (expert_act, b.expert_offsets, layer.w2, layer.w2_scale, layer.w2_scale2, expert_out),
                {"row_weight": row_weight},
            )
        )
        launches.append(Launch("combine", routing.combine, (expert_out, token_rows, resid, resid, None)))
    if last:
        launches.append(Launch("final_norm", ops.rmsnorm, (resid[tokens - 1 : tokens], weights.final_norm, eps, b.last_normed)))
        dense("lm_head", b.last_normed, weights.lm_head, b.logits)
    return LaunchList(launches, paths)
