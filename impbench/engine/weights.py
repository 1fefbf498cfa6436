"""Synthetic model weights on the GPU, with the exact shapes of a preset.

Dense tensors are FP16 (nn.Linear layout [N, K]); expert weights are NVFP4 in the ModelOpt layout
(impbench.nvfp4). Values are random with realistic scales (std 0.02 linears, norms near 1) so
activations stay in FP16 range through every layer, as in a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LINEAR_STD = 0.02


@dataclass
class Nvfp4Linear:
    """A dense projection stored as NVFP4: one "expert" in the grouped layout of kernels/moe.py."""

    codes: object  # uint8 [1, N, K/2]
    scale: object  # uint8 e4m3 [1, N, K/16]
    scale2: object  # fp32 [1]

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scale.nbytes + self.scale2.nbytes)

    def float64(self) -> np.ndarray:
        return _experts_float64(self.codes, self.scale, self.scale2)[0]


@dataclass
class LayerWeights:
    attn_norm: object  # fp16 [H]
    wqkv: object  # fp16 [(Hq + 2 Hkv) D, H]: q heads, then k heads, then v heads (or Nvfp4Linear)
    q_norm: object  # fp16 [D]
    k_norm: object  # fp16 [D]
    wo: object  # fp16 [H, Hq D] (or Nvfp4Linear)
    ffn_norm: object  # fp16 [H]
    router: object  # fp16 [E, H]
    w13: object  # NVFP4 codes uint8 [E, 2I, H/2]: gate rows, then up rows
    w13_scale: object  # e4m3 bits uint8 [E, 2I, H/16]
    w13_scale2: object  # fp32 [E]
    w2: object  # uint8 [E, H, I/2]
    w2_scale: object  # uint8 [E, H, I/16]
    w2_scale2: object  # fp32 [E]


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
    import cupy

    return (1.0 + 0.1 * rng.standard_normal((size,), dtype=cupy.float32)).astype(cupy.float16)


def _linear(rng, n: int, k: int, nvfp4: bool, seed: int):
    """A dense [N, K] projection: FP16, or NVFP4 where the preset quantizes its group."""
    from impbench.nvfp4 import generate_experts_gpu

    if nvfp4:
        return Nvfp4Linear(*generate_experts_gpu(1, n, k, seed=seed, std=LINEAR_STD))
    return _normal_fp16(rng, (n, k), LINEAR_STD)


def generate_weights(preset, seed: int = 0) -> ModelWeights:
    """Every weight of `preset` (all of its layers) allocated and filled on the current device."""
    import cupy

    from impbench.kernels import moe
    from impbench.nvfp4 import generate_experts_gpu

    rng = cupy.random.default_rng(seed)
    hidden, dim = preset.hidden_size, preset.head_dim
    q_rows, kv_rows = preset.num_attention_heads * dim, preset.num_kv_heads * dim
    experts, inter = preset.num_experts, preset.moe_intermediate_size
    attn_nvfp4 = "attention" in preset.nvfp4_tensors
    # the engine can store the expert weights and write x in whichever layout the chosen variant reads
    expert_variant = moe.choose_variant(hidden, inter, tiled=True, kperm=True)
    tiled = moe.VARIANTS[expert_variant].tiled
    layers = []
    for index in range(preset.num_layers):
        w13, w13_scale, w13_scale2 = generate_experts_gpu(experts, 2 * inter, hidden, seed=seed * 1000 + 2 * index)
        w2, w2_scale, w2_scale2 = generate_experts_gpu(experts, hidden, inter, seed=seed * 1000 + 2 * index + 1)
        if tiled:
            w13, w13_scale = moe.tile_experts(w13, w13_scale, gate_up=True)
            w2, w2_scale = moe.tile_experts(w2, w2_scale, gate_up=False)
        attn_seed = 7919 + seed * 1000 + 2 * index
        layers.append(
            LayerWeights(
                attn_norm=_norm_fp16(rng, hidden),
                wqkv=_linear(rng, q_rows + 2 * kv_rows, hidden, attn_nvfp4, attn_seed),
                q_norm=_norm_fp16(rng, dim),
                k_norm=_norm_fp16(rng, dim),
                wo=_linear(rng, hidden, q_rows, attn_nvfp4, attn_seed + 1),
                ffn_norm=_norm_fp16(rng, hidden),
                router=_normal_fp16(rng, (experts, hidden), LINEAR_STD),
                w13=w13,
                w13_scale=w13_scale,
                w13_scale2=w13_scale2,
                w2=w2,
                w2_scale=w2_scale,
                w2_scale2=w2_scale2,
            )
        )
    embed = _normal_fp16(rng, (preset.vocab_size, hidden), 1.0)
    lm_head = embed if preset.tie_word_embeddings else _normal_fp16(rng, (preset.vocab_size, hidden), LINEAR_STD)
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


def reference_weights(weights: ModelWeights) -> dict:
    """The same weights as float64 NumPy arrays under impbench.reference's keys (experts dequantized)."""
    from impbench.kernels import moe

    ref = {
        "embed": weights.embed.get().astype(np.float64),
        "final_norm": weights.final_norm.get().astype(np.float64),
        "lm_head": weights.lm_head.get().astype(np.float64),
    }
    tiled = moe.VARIANTS[weights.expert_variant].tiled
    for index, layer in enumerate(weights.layers):
        prefix = f"layers.{index}."
        for name in ("attn_norm", "wqkv", "q_norm", "k_norm", "wo", "ffn_norm", "router"):
            tensor = getattr(layer, name)
            ref[prefix + name] = tensor.float64() if isinstance(tensor, Nvfp4Linear) else tensor.get().astype(np.float64)
        ref[prefix + "w13"] = _experts_float64(layer.w13, layer.w13_scale, layer.w13_scale2, True if tiled else None)
        ref[prefix + "w2"] = _experts_float64(layer.w2, layer.w2_scale, layer.w2_scale2, False if tiled else None)
    return ref
