"""The launch sequence of one prefill chunk, built once per chunk length: Qwen3-MoE layers (full
attention + routed experts), Qwen3.5 / 3.6 hybrid layers (Gated DeltaNet or gated full attention,
routed experts plus a gated shared expert) and Gemma-4 layers (sliding-window or full attention with
sandwich norms, a dense GeGLU MLP beside the routed experts).

Small ops: each layer's combine also writes the next layer's attention norm ("combine+attn_norm";
layer 0's norm follows the embedding, the last layer's combine is plain), and the router top-k
leaves per-block expert counts so that the permutation runs on every block at once (topk_count,
permute_counted). A fused op's name joins the plan's op names with "+", so `impbench run --profile`
can sum their floors (plan.op_floors_us). Gemma-4's norms ride on the same two places: "ffn_norm" is
the post-attention norm with its add and the three norms the feed-forward branches read (dense MLP,
experts, router); "combine+post_ffn_norms(+attn_norm)" sums the expert rows, norms both branches, their
sum, adds, scales by the layer scalar and writes the next layer's input norm.

Every launch is prepared up front: arguments checked, views sliced, GEMM path and tile variant
decided, kernel fetched. What remains is a list of (op name, no-argument launcher), so replaying it
from Python costs one call per kernel: the eager arm's host time is then the engine's, not this
benchmark's bookkeeping.
"""

from __future__ import annotations

import contextlib
import functools
from collections import Counter
from dataclasses import dataclass

from impbench.engine.buffers import GDN_WORKSPACE, cache_names, flat_view, layer_slots

CUBLAS = "cublas"
# A dense projection stored as NVFP4 runs on the dense NVFP4 GEMM (kernels/nvfp4_gemm.py) in every mode and
# under every guard (it is capture-safe); off Hopper, where that kernel has no build, on the grouped expert
# kernel with one expert (NVFP4_GROUPED).
NVFP4_GROUPED = "nvfp4_grouped"


@dataclass
class Launch:
    op: str
    fn: object  # no-argument callable that launches the op's kernel(s) on the current stream
    side: bool = False  # on the side stream, between a fork and a join (Branch)


@dataclass
class Branch:
    """The second stream a layer's branch beside the routed experts runs on (Qwen3.6's shared expert,
    Gemma-4's dense MLP), as vLLM overlaps its shared experts: `fork` makes the side stream wait for what
    the main stream has issued so far, `join` makes the main stream wait for the side's work. Under
    capture the two event waits become the graph's edges, so the branch is a parallel path of the graph."""

    stream: object  # cupy.cuda.Stream
    fork_event: object
    join_event: object

    def fork(self) -> None:
        import cupy

        self.fork_event.record(cupy.cuda.get_current_stream())
        self.stream.wait_event(self.fork_event)

    def join(self, main=None) -> None:
        """`main` (default: the current stream) waits for what the side stream has been given so far."""
        import cupy

        self.join_event.record(self.stream)
        (main or cupy.cuda.get_current_stream()).wait_event(self.join_event)


FORK, JOIN = "fork", "join"  # the op names of a Branch's two marks: no kernel, no device time


@dataclass
class LaunchList:
    launches: list
    gemm_paths: Counter  # GEMM path name -> count in one pass of this list
    branch: Branch | None = None  # where side launches go; None: every launch on the current stream

    @functools.cached_property
    def kernels(self) -> list[Launch]:
        """The launches that run kernels (a branch's fork and join marks do not); once, not per eager chunk."""
        return [launch for launch in self.launches if launch.op not in (FORK, JOIN)]

    def run(self, tracker) -> None:
        for launch in self.launches:
            tracker.current_op = launch.op
            if launch.side:  # only a builder with a branch marks launches side
                with self.branch.stream:
                    launch.fn()
            else:
                launch.fn()

    def run_timed(self, stream) -> list[tuple[str, object, object]]:
        """Run serially with a CUDA event pair around every launch: (op, start, end) to read after a sync."""
        import cupy

        marks = []
        for launch in self.kernels:
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


class _Builder:
    """Appends the launches of one chunk of `length` tokens, sublayer by sublayer."""

    def __init__(self, preset, weights, buffers, length: int, guard: str, branch: Branch | None = None):
        self.p, self.w, self.b, self.t, self.guard, self.branch = preset, weights, buffers, length, guard, branch
        self.launches: list[Launch] = []
        self.paths: Counter = Counter()
        self.side = False  # True inside beside(): launches go to the branch's stream
        self.forked = False  # a fork since the last join: the next join() marks one

    def add(self, op, fn) -> None:
        from impbench.kernels.driver import packed

        self.launches.append(Launch(op, packed(fn), self.side))

    def fork(self) -> None:
        """Mark where the side stream starts: launches beside() adds after it wait only for what the main
        stream was given before this mark (none without a branch, or where a fork is already open)."""
        if self.branch is not None and not self.forked:
            self.launches.append(Launch(FORK, self.branch.fork))
            self.forked = True

    @contextlib.contextmanager
    def beside(self):
        """Launches added inside run on the branch's stream (forked here unless fork() already marked an
        earlier point), beside the main stream's, until join(); without a branch they run in place, in list
        order."""
        if self.branch is None:
            yield
            return
        self.fork()
        self.side = True
        try:
            yield
        finally:
            self.side = False

    def join(self) -> None:
        """The main stream waits for the side's launches (if any were forked since the last join)."""
        if self.forked:
            self.launches.append(Launch(JOIN, self.branch.join))
            self.forked = False

    def dense(self, op, a, w, out) -> None:
        """A dense projection on its GEMM path (our GEMMs with PDL on their input side only: kernels_cu/common.cuh
        pdl_wait)."""
        from impbench.engine.weights import Nvfp4Linear
        from impbench.kernels import gemm, moe, nvfp4_gemm

        if isinstance(w, Nvfp4Linear):
            m, n, k = a.shape[0], out.shape[1], a.shape[1]
            variant = nvfp4_gemm.choose_variant(m, n, k, nvfp4_gemm.device_sms())
            if nvfp4_gemm.cannot_run(variant) is None:
                path, fn = f"nvfp4_{variant}", nvfp4_gemm.prepare(a, w.packed, w.scale, w.scale2, out, variant)
            else:
                offsets = self.b.dense_offsets[m]  # [0, M]: every row belongs to the one "expert"
                path, fn = NVFP4_GROUPED, moe.prepare(moe.moe_down, a, offsets, w.codes, w.scale, w.scale2, out)
        else:
            variant = gemm.choose_variant(a.shape[0], w.shape[0], w.shape[1], self.guard)
            path = variant or CUBLAS
            fn = gemm.prepare(a, w, out, variant) if variant else _cublas(a, w, out)
        self.paths[path] += 1
        self.add(op, fn)

    # -- token mixers: each leaves its output, before the residual add, in attn_proj --------------------
    def attention(self, layer, slot: int) -> None:
        """Softmax attention, full or sliding-window: fused q/k/v projection, q/k norm + RoPE (+ Gemma-4's V
        norm) + cache append, attention, (the sigmoid output gate of a gated attention,) O projection."""
        from impbench.kernels import attention, ops

        p, b, t, a, kind = self.p, self.b, self.t, layer.attention, layer.kind
        heads, kv_heads, dim = p.attention_dims(kind)
        k_name, v_name = cache_names(kind)
        k_cache, v_cache = getattr(b, k_name)[slot], getattr(b, v_name)[slot]
        width = p.qkv_width(kind)
        qkv = flat_view(b.qkv, t, width)
        q, out = flat_view(b.q, t, heads, dim), flat_view(b.attn, t, heads, dim)
        self.dense("qkv_proj", b.normed[:t], a.wqkv, qkv)
        k_eq_v = not p.has_v_proj(kind)
        qkv_width = (heads + (1 if k_eq_v else 2) * kv_heads) * dim  # the gate heads, where there are any, follow
        theta, rope = p.rope_theta, {"rotary_dim": int(dim * p.partial_rotary_factor)}
        if kind == "full" and p.full_rope_theta:  # Gemma-4: "proportional" RoPE, its own base
            theta, rope = p.full_rope_theta, {"rope_pairs": int(dim // 2 * p.full_partial_rotary_factor)}
        gemma = {"v_norm": True, "k_eq_v": k_eq_v} if p.architecture == "gemma4" else {}
        self.add("qkv_post", ops.prepare(ops.qkv_post, qkv[:, :qkv_width], a.q_norm, a.k_norm, p.rms_norm_eps, theta,
                                         b.pos, q, k_cache, v_cache, qk_norm=p.qk_norm, **rope, **gemma))  # fmt: skip
        window = p.sliding_window if kind == "sliding" else 0
        self.add("attention", attention.prepare(q, k_cache, v_cache, b.pos, out, p.softmax_scale(kind), window=window))
        attn = out.reshape(t, -1)
        if p.attn_output_gate:
            self.add("attn_gate", ops.prepare(ops.attn_gate, out, qkv[:, qkv_width:], attn))
        self.dense("o_proj", attn, a.wo, b.attn_proj[:t])

    def linear_attention(self, layer, slot: int) -> None:
        """Gated DeltaNet: three projections (q, k, v and z merged; b; a), the causal conv with its carried
        state (+ SiLU, q/k L2 norm, decay and write strength, and the state's carry, in one launch), the
        chunked gated delta rule with its carried state, the gated norm, the output projection."""
        from impbench.kernels import gated_delta, ops

        p, b, t, lw = self.p, self.b, self.t, layer.linear
        normed = b.normed[:t]
        qkvz = b.lin_qkvz[:t]
        mixed, z = qkvz[:, : p.linear_conv_dim], qkvz[:, p.linear_conv_dim :]  # rows spaced wider: the ops take it
        # b beside the merged GEMM and a (N=32: 64 small, latency-bound blocks each), issued after the GEMM: b
        # takes the SMs the GEMM's last tiles leave idle, then runs beside a, not one after the other behind it
        self.fork()
        self.dense("in_proj_qkvz", normed, lw.in_proj_qkvz, qkvz)
        with self.beside():
            self.dense("in_proj_b", normed, lw.in_proj_b, b.lin_b[:t])
        self.dense("in_proj_a", normed, lw.in_proj_a, b.lin_a[:t])
        self.join()
        q, k, v, g, beta = b.lin_q[:t], b.lin_k[:t], b.lin_v[:t], b.lin_g[:t], b.lin_beta[:t]
        self.add("conv1d", ops.prepare(ops.conv_prep, mixed, lw.conv, b.conv_state[slot], b.lin_a[:t], b.lin_b[:t],
                                       lw.a_log, lw.dt_bias, q, k, v, g, beta, L2_EPS))  # fmt: skip
        work = gated_delta.workspace_from(b, GDN_WORKSPACE)
        self.add("gated_delta_rule", gated_delta.prepare(q, k, v, g, beta, b.gdn_state[slot], b.gdn_out[:t], work))
        self.add("gated_norm", ops.prepare(ops.gated_rmsnorm, b.gdn_out[:t], z, lw.gated_norm, p.rms_norm_eps,
                                           b.gated[:t]))  # fmt: skip
        self.dense("out_proj", b.gated[:t], lw.out_proj, b.attn_proj[:t])

    # -- the MoE block ---------------------------------------------------------------------------
    def experts(self, layer) -> None:
        """ffn_norm (with the residual add), router, top-k, permutation, the two grouped expert GEMMs, and
        the shared expert where the model has one. The combine that sums them follows (`combine`)."""
        from impbench.kernels import moe, ops, routing

        p, b, t = self.p, self.b, self.t
        expert = self.w.expert_variant  # the experts are stored as it reads them
        kperm = moe.VARIANTS[expert].kperm
        rows = t * p.experts_per_token
        row_token, row_weight = b.row_token[:rows], b.row_weight[:rows]
        topk_ids, topk_weights, token_rows = b.topk_ids[:t], b.topk_weights[:t], b.token_rows[:t]
        normed = b.normed[:t]
        kp_out = b.normed_kp[:t] if kperm else None  # the wgp expert GEMMs' x, written by the same launch
        self.add("ffn_norm", ops.prepare(ops.add_rmsnorm, b.attn_proj[:t], b.resid[:t], layer.ffn_norm, p.rms_norm_eps,
                                         normed, out_kperm=kp_out))  # fmt: skip
        if layer.shared is not None:
            with self.beside():
                s = layer.shared
                self.dense("shared_gate_up", normed, s.w13, b.shared_gate_up[:t])
                self.add("shared_act", ops.prepare(ops.gated_act, b.shared_gate_up[:t], b.shared_act[:t], p.activation))
                self.dense("shared_down", b.shared_act[:t], s.w2, b.shared_out[:t])
                if s.gate is not None:
                    self.dense("shared_expert_gate", normed, s.gate, b.shared_gate[:t])
        self.dense("router", normed, layer.router, b.router_logits[:t])
        counts = b.route_counts[: routing.count_blocks(t)]
        self.add("topk", routing.prepare(routing.topk_count, b.router_logits[:t], p.experts_per_token, p.norm_topk_prob,
                                         topk_ids, topk_weights, token_rows, counts))  # fmt: skip
        self.add("permute", routing.prepare(routing.permute_counted, topk_ids, topk_weights, counts, b.expert_offsets,
                                            row_token, row_weight, token_rows))  # fmt: skip
        # wgp reads x K-permuted (ffn_norm wrote it) and passes h to down in that order
        x_moe = kp_out if kperm else normed
        self.add("moe_gate_up", moe.prepare(moe.moe_gate_up, x_moe, row_token, b.expert_offsets, layer.w13,
                                            layer.w13_scale, layer.w13_scale2, b.expert_act[:rows], variant=expert))  # fmt: skip
        self.add("moe_down", moe.prepare(moe.moe_down, b.expert_act[:rows], b.expert_offsets, layer.w2, layer.w2_scale,
                                         layer.w2_scale2, b.expert_out[:rows], row_weight=row_weight, variant=expert))  # fmt: skip
        self.join()

    def gemma_ffn(self, layer) -> None:
        """Gemma-4's feed-forward block up to its sum: the norms after attention (with the residual add), the
        dense GeGLU MLP, and the routed experts with the router's prenorm and per-expert scales."""
        from impbench.kernels import moe, ops, routing

        p, b, t, n = self.p, self.b, self.t, layer.sandwich
        rows = t * p.experts_per_token
        row_token, row_weight = b.row_token[:rows], b.row_weight[:rows]
        topk_ids, topk_weights, token_rows = b.topk_ids[:t], b.topk_weights[:t], b.token_rows[:t]
        expert = self.w.expert_variant
        kperm = moe.VARIANTS[expert].kperm
        normed = b.normed[:t]
        x_moe = b.normed_kp[:t] if kperm else normed  # the experts' input, in the order their kernel reads
        self.add("ffn_norm", ops.prepare(ops.post_attn_norms, b.attn_proj[:t], b.resid[:t],
                                         (n.post_attn, n.pre_mlp, n.pre_moe, n.router_prenorm), p.rms_norm_eps,
                                         (b.normed_mlp[:t], normed, b.normed_router[:t]),
                                         out_kperm=x_moe if kperm else None))  # fmt: skip
        with self.beside():
            self.dense("mlp_gate_up", b.normed_mlp[:t], layer.mlp.w13, b.mlp_gate_up[:t])
            self.add("mlp_act", ops.prepare(ops.gated_act, b.mlp_gate_up[:t], b.mlp_act[:t], p.activation))
            self.dense("mlp_down", b.mlp_act[:t], layer.mlp.w2, b.mlp_out[:t])
        self.dense("router", b.normed_router[:t], layer.router, b.router_logits[:t])
        counts = b.route_counts[: routing.count_blocks(t)]
        self.add("topk", routing.prepare(routing.topk_count, b.router_logits[:t], p.experts_per_token, p.norm_topk_prob,
                                         topk_ids, topk_weights, token_rows, counts, expert_scale=n.expert_scale))  # fmt: skip
        self.add("permute", routing.prepare(routing.permute_counted, topk_ids, topk_weights, counts, b.expert_offsets,
                                            row_token, row_weight, token_rows))  # fmt: skip
        self.add("moe_gate_up", moe.prepare(moe.moe_gate_up, x_moe, row_token, b.expert_offsets, layer.w13,
                                            layer.w13_scale, layer.w13_scale2, b.expert_act[:rows], variant=expert,
                                            activation=p.activation))  # fmt: skip
        self.add("moe_down", moe.prepare(moe.moe_down, b.expert_act[:rows], b.expert_offsets, layer.w2, layer.w2_scale,
                                         layer.w2_scale2, b.expert_out[:rows], row_weight=row_weight, variant=expert))  # fmt: skip
        self.join()

    def gemma_combine(self, layer, next_norm) -> None:
        """resid = (resid + post_ffn_norm(post_mlp_norm(dense) + post_moe_norm(expert rows summed))) * the layer
        scalar; the block's output is also stored over the dense MLP's (the engine trace reads it there); fused
        with the next layer's input norm where there is a next layer."""
        from impbench.kernels import routing

        p, b, t, n = self.p, self.b, self.t, layer.sandwich
        rows = t * p.experts_per_token
        norms = (n.post_mlp, n.post_moe, n.post_ffn)
        name = "combine+post_ffn_norms" + ("+attn_norm" if next_norm is not None else "")
        normed = b.normed[:t] if next_norm is not None else None
        self.add(name, routing.prepare(routing.post_ffn_norms, b.expert_out[:rows], b.token_rows[:t], b.mlp_out[:t],
                                       b.resid[:t], norms, p.rms_norm_eps, n.layer_scalar, b.resid[:t],
                                       next_norm=next_norm, normed=normed))  # fmt: skip

    def combine(self, layer, next_norm) -> None:
        """resid += the token's expert rows (+ the gated shared expert); fused with the next layer's
        attention norm where there is a next layer."""
        from impbench.kernels import routing

        p, b, t = self.p, self.b, self.t
        rows = t * p.experts_per_token
        shared = {}
        name = "combine"
        if layer.shared is not None:
            gate = b.shared_gate[:t] if layer.shared.gate is not None else None
            shared = {"shared": b.shared_out[:t], "shared_gate": gate}
            name += "+shared_combine"
        expert_out, token_rows, resid = b.expert_out[:rows], b.token_rows[:t], b.resid[:t]
        if next_norm is not None:  # the residual's next reader is the next layer's attn_norm: fused
            self.add(name + "+attn_norm", routing.prepare(routing.combine_rmsnorm, expert_out, token_rows, resid, resid,
                                                          next_norm, p.rms_norm_eps, b.normed[:t], **shared))  # fmt: skip
        else:
            self.add(name, routing.prepare(routing.combine, expert_out, token_rows, resid, resid, None, **shared))


L2_EPS = 1e-6  # the q / k L2 norm of a Gated DeltaNet layer (flash-linear-attention's l2norm)


def build_launches(preset, weights, buffers, length: int, last: bool, guard: str, delay_us: float = 0.0,
                   branch: Branch | None = None) -> LaunchList:  # fmt: skip
    """Every launch of one chunk of `length` tokens; `guard` picks the dense GEMM path (impbench.arms);
    `delay_us` > 0 plants a wait of that many µs after every layer (tests of the CI gate); `branch`: the
    stream the branch beside the routed experts runs on (None: in line, on the main stream)."""
    from impbench.kernels import ops

    p, b, t = preset, buffers, length
    build = _Builder(preset, weights, buffers, length, guard, branch)
    layers = weights.layers
    gemma = p.architecture == "gemma4"
    embed_scale = {"scale": p.hidden_size**0.5} if gemma else {}  # Gemma-4 scales its (tied) embedding by sqrt(H)
    build.add("embed", ops.prepare(ops.embed, b.ids[:t], weights.embed, b.resid[:t], **embed_scale))
    build.add("attn_norm", ops.prepare(ops.rmsnorm, b.resid[:t], layers[0].attn_norm, p.rms_norm_eps, b.normed[:t]))
    for index, (layer, slot) in enumerate(zip(layers, layer_slots(p))):
        if layer.kind == "linear":
            build.linear_attention(layer, slot)
        else:
            build.attention(layer, slot)
        ffn, combine = (build.gemma_ffn, build.gemma_combine) if gemma else (build.experts, build.combine)
        ffn(layer)
        if delay_us:
            build.add("delay", _delay(delay_us))
        combine(layer, layers[index + 1].attn_norm if index + 1 < len(layers) else None)
    if last:
        build.add("final_norm", ops.prepare(ops.rmsnorm, b.resid[t - 1 : t], weights.final_norm, p.rms_norm_eps,
                                            b.last_normed))  # fmt: skip
        build.dense("lm_head", b.last_normed, weights.lm_head, b.logits)
        if p.final_logit_softcapping:
            build.add("softcap", ops.prepare(ops.softcap, b.logits, p.final_logit_softcapping, b.logits))
    return LaunchList(build.launches, build.paths, branch)
