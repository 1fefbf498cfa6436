"""Synthetic model weights on the GPU, with the exact shapes of a preset.

Dense tensors are FP16 (nn.Linear layout [N, K]); expert weights are NVFP4 in the ModelOpt layout
(impbench.nvfp4). Values are random with realistic scales (std 0.02 linears, norms near 1) so
activations stay in FP16 range through every layer, as in a trained model.

Two choices of storage a real engine would also make at load time: RMSNorm weights are stored as the
scale the kernel multiplies by (Qwen3.6's checkpoints hold w around 0 for a scale of 1 + w: the engine
stores 1 + w, so one norm kernel serves every model), and a gated attention's q_proj rows are stored
as [q heads | k heads | v heads | gate heads] instead of per head [q | gate], so q, k and v are one
contiguous slice for qkv_post and the gate another. Gemma-4's router reads h through a weightless
RMSNorm times a learned scale times H^-1/2: the engine stores that product as one norm weight, so the
router's prenorm is one more output of the norm kernel after the attention block. reference_weights
undoes all three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from impbench.reference.blocks import LINEAR_STD


@dataclass
class Nvfp4Linear:
    """A dense projection stored as NVFP4: one "expert" in the grouped layout of kernels/moe.py."""

    codes: object  # uint8 [1, N, K/2]
    scale: object  # uint8 e4m3 [1, N, K/16]
    scale2: object  # fp32 [1]

    packed: object = field(init=False, repr=False)  # the codes in the dense NVFP4 GEMM's layout

    def __post_init__(self):
        from impbench.kernels.nvfp4_gemm import pack_codes

        # here, not on first use: the engine may build its launches inside a graph capture
        self.packed = pack_codes(self.codes)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.scale2.nbytes)

    def float64(self) -> np.ndarray:
        return _experts_float64(self.codes, self.scale, self.scale2)[0]


@dataclass
class AttentionWeights:
    """A softmax-attention layer's projections and q/k norms."""

    wqkv: object  # fp16 [(Hq + 2 Hkv) D (+ Hq D gate rows), H]: q heads, k heads, v heads (, gate heads) (or Nvfp4Linear)
    q_norm: object  # fp16 [D]
    k_norm: object  # fp16 [D]
    wo: object  # fp16 [H, Hq D] (or Nvfp4Linear)


@dataclass
class LinearAttentionWeights:
    """A Gated DeltaNet layer (Qwen3.5 / 3.6): projections, conv, decay parameters, gated norm."""

    # in_proj_qkv and in_proj_z are the two row blocks of one matrix, so the engine runs them as one GEMM
    # (one launch, one pass over x, fewer ragged tiles) as vLLM merges them; b and a stay apart (N=32 each)
    in_proj_qkvz: object  # fp16 [2 Hk dk + 2 Hv dv, H]: in_proj_qkv's rows (q, k, v channels), then in_proj_z's
    in_proj_b: object  # fp16 [Hv, H]
    in_proj_a: object  # fp16 [Hv, H]
    conv: object  # fp16 [channels, K]
    a_log: object  # fp32 [Hv]
    dt_bias: object  # fp32 [Hv]
    gated_norm: object  # fp16 [dv] (plain w)
    out_proj: object  # fp16 [H, Hv dv]


@dataclass
class SharedExpertWeights:
    """The shared expert beside the routed ones (Qwen3.5 / 3.6), FP16, and its N=1 gate."""

    w13: object  # fp16 [2 S, H]: gate rows, then up rows
    w2: object  # fp16 [H, S]
    gate: object  # fp16 [1, H], or None where the shared expert is not gated


@dataclass
class DenseMlpWeights:
    """Gemma-4's dense GeGLU MLP beside the routed experts, FP16."""

    w13: object  # fp16 [2 F, H]: gate rows, then up rows
    w2: object  # fp16 [H, F]


@dataclass
class SandwichNorms:
    """Gemma-4's norms around its attention and feed-forward blocks (plain w), and its router's scales."""

    post_attn: object  # fp16 [H]
    pre_mlp: object  # fp16 [H]
    pre_moe: object  # fp16 [H]
    router_prenorm: object  # fp16 [H]: the router's learned per-channel scale times H^-1/2
    post_mlp: object  # fp16 [H]
    post_moe: object  # fp16 [H]
    post_ffn: object  # fp16 [H]
    expert_scale: object  # fp32 [E]: each chosen expert's routing weight is multiplied by its scale
    layer_scalar: float  # the layer's output is multiplied by it (a float32 value)


@dataclass
class LayerWeights:
    kind: str  # the preset's layer type: "full", "sliding" or "linear"
    attn_norm: object  # fp16 [H] (Gemma-4: the input norm)
    ffn_norm: object  # fp16 [H]; None in Gemma-4, whose norms after the attention block are in `sandwich`
    router: object  # fp16 [E, H]
    w13: object  # NVFP4 codes uint8 [E, 2I, H/2]: gate rows, then up rows
    w13_scale: object  # e4m3 bits uint8 [E, 2I, H/16]
    w13_scale2: object  # fp32 [E]
    w2: object  # uint8 [E, H, I/2]
    w2_scale: object  # uint8 [E, H, I/16]
    w2_scale2: object  # fp32 [E]
    attention: AttentionWeights | None = None  # full layers
    linear: LinearAttentionWeights | None = None  # linear layers
    shared: SharedExpertWeights | None = None  # models with a shared expert
    mlp: DenseMlpWeights | None = None  # Gemma-4
    sandwich: SandwichNorms | None = None  # Gemma-4


@dataclass
class ModelWeights:
    embed: object  # fp16 [V, H]
    layers: list
    final_norm: object  # fp16 [H]
    lm_head: object  # fp16 [V, H] (the embedding itself where the preset ties them)
    expert_variant: str  # the MoE kernel variant the experts are stored for (tile-major where it is tiled)


def _normal_fp16(rng, shape, std):
    import cupy

    return (rng.standard_normal(shape, dtype=cupy.float32) * std).astype(cupy.float16)


def _norm_fp16(rng, size):
    """A norm's scale: 1 + 0.1 N(0, 1) (for a (1 + w) norm, w = 0.1 N(0, 1), as the reference draws it)."""
    import cupy

    return (1.0 + 0.1 * rng.standard_normal((size,), dtype=cupy.float32)).astype(cupy.float16)


def _linear(rng, n: int, k: int, nvfp4: bool, seed: int):
    """A dense [N, K] projection: FP16, or NVFP4 where the preset quantizes its group."""
    from impbench.nvfp4 import generate_experts_gpu

    if nvfp4:
        return Nvfp4Linear(*generate_experts_gpu(1, n, k, seed=seed, std=LINEAR_STD))
    return _normal_fp16(rng, (n, k), LINEAR_STD)


def _attention(rng, p, kind: str, nvfp4: bool, seed: int) -> AttentionWeights:
    heads, _, dim = p.attention_dims(kind)
    return AttentionWeights(
        wqkv=_linear(rng, p.qkv_width(kind), p.hidden_size, nvfp4, seed),
        q_norm=_norm_fp16(rng, dim),
        k_norm=_norm_fp16(rng, dim),
        wo=_linear(rng, p.hidden_size, heads * dim, nvfp4, seed + 1),
    )


def _linear_attention(rng, p) -> LinearAttentionWeights:
    import cupy

    from impbench.reference.gated_delta import draw_decay_parameters

    h, hv, dv = p.hidden_size, p.linear_num_value_heads, p.linear_value_head_dim
    a_log, dt_bias = draw_decay_parameters(np.random.default_rng(int(rng.integers(0, 1 << 31))), hv)
    conv = p.linear_conv_dim
    qkvz = cupy.concatenate([_normal_fp16(rng, (conv, h), LINEAR_STD), _normal_fp16(rng, (hv * dv, h), LINEAR_STD)])
    return LinearAttentionWeights(
        in_proj_qkvz=qkvz,
        in_proj_b=_normal_fp16(rng, (hv, h), LINEAR_STD),
        in_proj_a=_normal_fp16(rng, (hv, h), LINEAR_STD),
        conv=_normal_fp16(rng, (p.linear_conv_dim, p.linear_conv_kernel), 0.3),
        a_log=cupy.asarray(a_log, dtype=cupy.float32),
        dt_bias=cupy.asarray(dt_bias, dtype=cupy.float32),
        gated_norm=_norm_fp16(rng, dv),
        out_proj=_normal_fp16(rng, (h, hv * dv), LINEAR_STD),
    )


def _shared_expert(rng, p) -> SharedExpertWeights:
    h, s = p.hidden_size, p.shared_expert_intermediate_size
    gate = _normal_fp16(rng, (1, h), LINEAR_STD) if p.shared_expert_gate else None
    return SharedExpertWeights(_normal_fp16(rng, (2 * s, h), LINEAR_STD), _normal_fp16(rng, (h, s), LINEAR_STD), gate)


def _sandwich(rng, p) -> SandwichNorms:
    import cupy

    h = p.hidden_size
    norms = {name: _norm_fp16(rng, h) for name in ("post_attn", "pre_mlp", "pre_moe", "post_mlp", "post_moe", "post_ffn")}
    router_scale = 1.0 + 0.1 * rng.standard_normal((h,), dtype=cupy.float32)
    # spread as the reference draws them (reference.gemma4.random_weights): a missing scale must show
    expert_scale = cupy.exp(0.3 * rng.standard_normal((p.num_experts,), dtype=cupy.float32))
    scalar = float(np.float32(1.0 + 0.1 * float(rng.standard_normal(()))))
    return SandwichNorms(**norms, router_prenorm=(router_scale * h**-0.5).astype(cupy.float16),
                         expert_scale=expert_scale.astype(cupy.float32), layer_scalar=scalar)  # fmt: skip


def _dense_mlp(rng, p) -> DenseMlpWeights:
    h, f = p.hidden_size, p.dense_intermediate_size
    return DenseMlpWeights(_normal_fp16(rng, (2 * f, h), LINEAR_STD), _normal_fp16(rng, (h, f), LINEAR_STD))


def expert_width(preset) -> int:
    """The intermediate width the engine stores the experts with: I, or I rounded up to whole moe.TILE_K where
    that adds at most an eighth (Gemma-4: 704 -> 768), so that the tile-major K-permuted expert kernels (wgb)
    run the layer instead of wgq, which takes any multiple of 64. The padding's gate / up rows and down
    columns are zero: the layer computes the same output with 9% more MMA work (the plan's floor counts I)."""
    from impbench.kernels.moe import TILE_K

    inter = preset.moe_intermediate_size
    padded = -(-inter // TILE_K) * TILE_K
    return padded if preset.hidden_size % TILE_K == 0 and 8 * (padded - inter) <= inter else inter


def _zero_padding(w13, w2, inter: int, width: int) -> None:
    """Zero the codes of the padding (expert_width): gate rows inter.., up rows width + inter.., down columns inter..
    (e2m1 code 0 is +0, whatever the block scale)."""
    w13[:, inter:width] = 0
    w13[:, width + inter :] = 0
    w2[:, :, inter // 2 :] = 0


def generate_weights(preset, seed: int = 0) -> ModelWeights:
    """Every weight of `preset` (all of its layers) allocated and filled on the current device."""
    import cupy

    from impbench.kernels import moe
    from impbench.nvfp4 import generate_experts_gpu

    rng = cupy.random.default_rng(seed)
    p = preset
    hidden, experts, inter = p.hidden_size, p.num_experts, expert_width(p)
    attn_nvfp4 = "attention" in p.nvfp4_tensors
    gemma = p.architecture == "gemma4"
    # the engine can store the expert weights and write x in whichever layout the chosen variant reads
    expert_variant = moe.choose_variant(hidden, inter, tiled=True, kperm=True)
    tiled = moe.VARIANTS[expert_variant].tiled
    layers = []
    for index, kind in enumerate(p.layer_types):
        w13, w13_scale, w13_scale2 = generate_experts_gpu(experts, 2 * inter, hidden, seed=seed * 1000 + 2 * index)
        w2, w2_scale, w2_scale2 = generate_experts_gpu(experts, hidden, inter, seed=seed * 1000 + 2 * index + 1)
        if inter != p.moe_intermediate_size:
            _zero_padding(w13, w2, p.moe_intermediate_size, inter)
        if tiled:
            w13, w13_scale = moe.tile_experts(w13, w13_scale, gate_up=True)
            w2, w2_scale = moe.tile_experts(w2, w2_scale, gate_up=False)
        layers.append(
            LayerWeights(
                kind=kind,
                attn_norm=_norm_fp16(rng, hidden),
                ffn_norm=None if gemma else _norm_fp16(rng, hidden),
                router=_normal_fp16(rng, (experts, hidden), LINEAR_STD),
                w13=w13,
                w13_scale=w13_scale,
                w13_scale2=w13_scale2,
                w2=w2,
                w2_scale=w2_scale,
                w2_scale2=w2_scale2,
                attention=None if kind == "linear" else _attention(rng, p, kind, attn_nvfp4, 7919 + seed * 1000 + 2 * index),
                linear=_linear_attention(rng, p) if kind == "linear" else None,
                shared=_shared_expert(rng, p) if p.shared_expert_intermediate_size else None,
                mlp=_dense_mlp(rng, p) if p.dense_intermediate_size else None,
                sandwich=_sandwich(rng, p) if gemma else None,
            )
        )
    embed = _normal_fp16(rng, (p.vocab_size, hidden), 1.0)
    lm_head = embed if p.tie_word_embeddings else _normal_fp16(rng, (p.vocab_size, hidden), LINEAR_STD)
    return ModelWeights(embed=embed, layers=layers, final_norm=_norm_fp16(rng, hidden), lm_head=lm_head,
                        expert_variant=expert_variant)  # fmt: skip


def _experts_float64(codes, scale, scale2, tiled_gate_up: bool | None = None) -> np.ndarray:
    """Dequantized experts; tiled_gate_up: the codes are tile-major (True: a w13, False: a w2), else None."""
    from impbench.nvfp4 import dequantize

    codes, scale, scale2 = codes.get(), scale.get(), scale2.get()
    if tiled_gate_up is not None:
        from impbench.kernels.moe import untile_experts

        codes, scale = untile_experts(codes, scale, tiled_gate_up)
    return np.stack([dequantize(codes[e], scale[e], scale2[e]) for e in range(codes.shape[0])]).astype(np.float64)


def _host(tensor) -> np.ndarray:
    return tensor.float64() if isinstance(tensor, Nvfp4Linear) else tensor.get().astype(np.float64)


def _attention_reference(p, kind: str, a: AttentionWeights) -> dict:
    """The reference's names and layouts of an attention layer: qwen3_moe's fused wqkv, or qwen3_5_moe's
    q_proj (per head [q | gate]), k_proj and v_proj, or gemma4's q_proj, k_proj (and v_proj where the
    layer has one); q/k norms back to the stored convention, as every norm."""
    wqkv = _host(a.wqkv)
    ref = {"q_norm": _host(a.q_norm) - p.norm_weight_offset, "k_norm": _host(a.k_norm) - p.norm_weight_offset}
    heads, kv_heads, dim = p.attention_dims(kind)
    if p.architecture == "gemma4":
        q, kv = heads * dim, kv_heads * dim
        ref.update(q_proj=wqkv[:q], k_proj=wqkv[q : q + kv], o_proj=_host(a.wo))
        if p.has_v_proj(kind):
            ref["v_proj"] = wqkv[q + kv : q + 2 * kv]
        return ref
    if not p.attn_output_gate:
        return {**ref, "wqkv": wqkv, "wo": _host(a.wo)}
    q, kv = heads * dim, kv_heads * dim
    queries, gates = wqkv[:q].reshape(heads, dim, -1), wqkv[q + 2 * kv :].reshape(heads, dim, -1)
    q_proj = np.concatenate([queries, gates], axis=1).reshape(2 * q, -1)
    return {**ref, "q_proj": q_proj, "k_proj": wqkv[q : q + kv], "v_proj": wqkv[q + kv : q + 2 * kv], "o_proj": _host(a.wo)}


def _gemma4_reference(p, layer: LayerWeights) -> dict:
    """reference.gemma4's names for the norms, the dense MLP and the router scales of one layer."""
    n = layer.sandwich
    return {"input_norm": _host(layer.attn_norm), "post_attn_norm": _host(n.post_attn), "pre_mlp_norm": _host(n.pre_mlp),
            "post_mlp_norm": _host(n.post_mlp), "pre_moe_norm": _host(n.pre_moe), "post_moe_norm": _host(n.post_moe),
            "post_ffn_norm": _host(n.post_ffn), "router_scale": _host(n.router_prenorm) * p.hidden_size**0.5,
            "expert_scale": _host(n.expert_scale), "layer_scalar": np.array(n.layer_scalar),
            "mlp_gate_up": _host(layer.mlp.w13), "mlp_down": _host(layer.mlp.w2)}  # fmt: skip


def reference_weights(weights: ModelWeights, preset) -> dict:
    """The same weights as float64 NumPy arrays under the keys of the preset's reference module
    (impbench.reference.qwen3_moe, qwen3_5_moe or gemma4): experts dequantized, norms back to the stored
    convention (w where the model scales by 1 + w), q_proj back to its per-head layout, Gemma-4's router
    prenorm weight back to its learned scale."""
    from dataclasses import fields

    from impbench.kernels import moe

    offset = preset.norm_weight_offset

    def norm(tensor) -> np.ndarray:
        return _host(tensor) - offset

    ref = {"embed": _host(weights.embed), "final_norm": norm(weights.final_norm), "lm_head": _host(weights.lm_head)}
    tiled = moe.VARIANTS[weights.expert_variant].tiled
    inter, width = preset.moe_intermediate_size, expert_width(preset)
    for index, layer in enumerate(weights.layers):
        w13 = _experts_float64(layer.w13, layer.w13_scale, layer.w13_scale2, True if tiled else None)
        w2 = _experts_float64(layer.w2, layer.w2_scale, layer.w2_scale2, False if tiled else None)
        layer_ref = {"router": _host(layer.router),  # the padding (expert_width) cut off
                     "w13": np.concatenate([w13[:, :inter], w13[:, width : width + inter]], axis=1), "w2": w2[:, :, :inter]}  # fmt: skip
        if layer.sandwich is not None:
            layer_ref.update(_gemma4_reference(preset, layer))
        else:
            layer_ref.update(attn_norm=norm(layer.attn_norm), ffn_norm=norm(layer.ffn_norm))
        if layer.attention is not None:
            layer_ref.update(_attention_reference(preset, layer.kind, layer.attention))
        if layer.linear is not None:
            linear = {f.name: _host(getattr(layer.linear, f.name)) for f in fields(layer.linear)}
            qkvz = linear.pop("in_proj_qkvz")  # the reference reads the checkpoint's two matrices
            linear.update(in_proj_qkv=qkvz[: preset.linear_conv_dim], in_proj_z=qkvz[preset.linear_conv_dim :])
            layer_ref.update(linear)
        if layer.shared is not None:
            layer_ref.update(shared_w13=_host(layer.shared.w13), shared_w2=_host(layer.shared.w2))
            if layer.shared.gate is not None:
                layer_ref["shared_gate"] = _host(layer.shared.gate)
        ref.update({f"layers.{index}.{name}": value for name, value in layer_ref.items()})
    return ref
