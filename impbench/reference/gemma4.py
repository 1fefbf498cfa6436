"""NumPy float64 forward of the Gemma-4 MoE text model (`gemma4` with its MoE block), for tiny presets.

Layers follow the preset's layer_types: "sliding" layers attend within a window (key j visible to
query i iff i - window < j <= i) with RoPE over every dim; "full" layers use the wider head, fewer KV
heads, no v_proj (V is a weightless RMSNorm of the raw k projection, K = V) and "proportional" RoPE
(the first partial_rotary_factor of the frequencies, 0 for the rest). Both norm q and k per head and
V weightlessly, with attention scale 1.0. Sandwich norms around both blocks; the feed-forward runs a
dense GeGLU MLP and the routed experts side by side from the same residual, each with its own norms,
their sum normed once more, then a per-layer scalar. Embeddings are tied and scaled by sqrt(H); the
logits are soft-capped. Every RMSNorm scales by plain w.

Weights: "embed" [V, H], "final_norm" [H]; per layer i under "layers.{i}.": "input_norm", "post_attn_norm",
"pre_mlp_norm", "post_mlp_norm", "pre_moe_norm", "post_moe_norm", "post_ffn_norm" [H]; "q_proj" [Hq D, H],
"k_proj" [Hkv D, H], sliding layers "v_proj" [Hkv D, H]; "q_norm", "k_norm" [D]; "o_proj" [H, Hq D];
"mlp_gate_up" [2 F, H], "mlp_down" [H, F]; "router_scale" [H], "router" [E, H], "expert_scale" [E],
"w13" [E, 2 I, H], "w2" [E, H, I]; "layer_scalar" [] (one number).
"""

from __future__ import annotations

import numpy as np

from impbench.reference.blocks import (
    ACTIVATIONS,
    Draw,
    causal_attention,
    gated_mlp,
    layer_weights,
    moe,
    rms_norm,
    rope,
    route,
)


def _plain_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm(x, np.ones(x.shape[-1]), eps)


def attention_sublayer(p, w: dict, kind: str, x: np.ndarray, start: int, k_cache: np.ndarray,
                       v_cache: np.ndarray) -> np.ndarray:  # fmt: skip
    """The attention block of one layer for the chunk x [T, H]: its output after the O projection and
    the post-attention norm (the residual add's other operand). Writes K and V into the caches."""
    heads, kv_heads, dim = p.attention_dims(kind)
    tokens, end = x.shape[0], start + x.shape[0]
    positions = np.arange(start, end)
    xn = rms_norm(x, w["input_norm"], p.rms_norm_eps)
    q = rms_norm((xn @ w["q_proj"].T).reshape(tokens, heads, dim), w["q_norm"], p.rms_norm_eps)
    raw_k = (xn @ w["k_proj"].T).reshape(tokens, kv_heads, dim)
    k = rms_norm(raw_k, w["k_norm"], p.rms_norm_eps)
    v = _plain_norm(raw_k if not p.has_v_proj(kind) else (xn @ w["v_proj"].T).reshape(tokens, kv_heads, dim), p.rms_norm_eps)
    if kind == "full":
        theta, pairs = p.full_rope_theta or p.rope_theta, int(dim // 2 * p.full_partial_rotary_factor)
    else:
        theta, pairs = p.rope_theta, None
    q, k = rope(q, positions, theta, rotated_pairs=pairs), rope(k, positions, theta, rotated_pairs=pairs)
    k_cache[start:end], v_cache[start:end] = k, v
    window = p.sliding_window if kind == "sliding" else None
    attn = causal_attention(q, k_cache[:end], v_cache[:end], start, p.softmax_scale(kind), window)
    return rms_norm(attn.reshape(tokens, -1) @ w["o_proj"].T, w["post_attn_norm"], p.rms_norm_eps)


def ffn_sublayer(p, w: dict, h: np.ndarray) -> np.ndarray:
    """The dense GeGLU MLP and the routed experts, both from h, each normed before and after, their sum
    normed: the block's output before the residual add."""
    eps, act = p.rms_norm_eps, ACTIVATIONS[p.activation]
    dense = rms_norm(gated_mlp(rms_norm(h, w["pre_mlp_norm"], eps), w["mlp_gate_up"], w["mlp_down"], act), w["post_mlp_norm"], eps)
    logits = (_plain_norm(h, eps) * w["router_scale"] * p.hidden_size**-0.5) @ w["router"].T
    ids, weights = route(logits, p.experts_per_token, p.norm_topk_prob)
    weights = weights * w["expert_scale"][ids]
    routed = moe(rms_norm(h, w["pre_moe_norm"], eps), ids, weights, w["w13"], w["w2"], act=act)
    moe_out = rms_norm(routed, w["post_moe_norm"], eps)
    return rms_norm(dense + moe_out, w["post_ffn_norm"], eps)


def reference_hidden(preset, weights: dict, token_ids, chunk_size: int = 0) -> np.ndarray:
    """Final-normed hidden states [T, H] of every prompt token, prefilled in chunks of `chunk_size` (0: one).
    Each layer keeps its own cache (its own KV head count and head dim); sliding layers read only the
    window, which may reach back across a chunk boundary."""
    p = preset
    ids = np.asarray(token_ids, dtype=np.int64)
    tokens = ids.shape[0]
    caches = []
    for kind in p.layer_types:
        _, kv_heads, dim = p.attention_dims(kind)
        caches.append((np.zeros((tokens, kv_heads, dim)), np.zeros((tokens, kv_heads, dim))))
    size = chunk_size or tokens
    hidden = []
    for start in range(0, tokens, size):
        x = weights["embed"][ids[start : start + size]] * np.sqrt(p.hidden_size)
        for i, kind in enumerate(p.layer_types):
            w = layer_weights(weights, i)
            h = x + attention_sublayer(p, w, kind, x, start, *caches[i])
            x = (h + ffn_sublayer(p, w, h)) * w["layer_scalar"]
        hidden.append(rms_norm(x, weights["final_norm"], p.rms_norm_eps))
    return np.concatenate(hidden)


def reference_forward(preset, weights: dict, token_ids, chunk_size: int = 0) -> np.ndarray:
    """Soft-capped logits float64 [V] of the last prompt token (tied embedding)."""
    logits = weights["embed"] @ reference_hidden(preset, weights, token_ids, chunk_size)[-1]
    cap = preset.final_logit_softcapping
    return logits if not cap else cap * np.tanh(logits / cap)


def random_weights(preset, seed: int = 0) -> dict:
    """Random float64 weights with realistic scales: linears std 0.02, norms 1 + 0.1 N(0, 1), router and
    expert scales near 1, per-layer scalars near 1, embedding std 0.05 (it is scaled by sqrt(H))."""
    p = preset
    draw = Draw(seed)
    rng, linear, norm = draw.rng, draw.linear, draw.norm
    h, e, inter, f = p.hidden_size, p.num_experts, p.moe_intermediate_size, p.dense_intermediate_size

    weights = {"embed": 0.05 * rng.standard_normal((p.vocab_size, h)), "final_norm": norm(h)}
    for i, kind in enumerate(p.layer_types):
        heads, kv_heads, dim = p.attention_dims(kind)
        layer = {name: norm(h) for name in ("input_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm",
                                            "pre_moe_norm", "post_moe_norm", "post_ffn_norm")}  # fmt: skip
        layer.update(q_proj=linear(heads * dim, h), k_proj=linear(kv_heads * dim, h), q_norm=norm(dim), k_norm=norm(dim),
                     o_proj=linear(h, heads * dim), mlp_gate_up=linear(2 * f, h), mlp_down=linear(h, f),
                     router_scale=norm(h), router=linear(e, h), expert_scale=norm(e), w13=linear(e, 2 * inter, h),
                     w2=linear(e, h, inter), layer_scalar=np.array(1.0 + 0.1 * rng.standard_normal()))  # fmt: skip
        if p.has_v_proj(kind):
            layer["v_proj"] = linear(kv_heads * dim, h)
        weights.update({f"layers.{i}.{name}": value for name, value in layer.items()})
    return weights
