"""NumPy float64 forward of the Gemma-4 MoE text model (`gemma4` with its MoE block), for tiny presets.

Layers follow the preset's layer_types: "sliding" layers attend within a window (key j visible to
query i iff i - window < j <= i) with RoPE over every dim; "full" layers use the wider head, fewer KV
heads, no v_proj (V is a weightless RMSNorm of the raw k projection, K = V) and "proportional" RoPE
(the first partial_rotary_factor of the frequencies, 0 for the rest). Both norm q and k per head and
V weightlessly, with attention scale 1.0. Sandwich norms around both blocks; the feed-forward runs a
dense GeGLU MLP and the routed experts side by side from the same residual, each with its own norms,
their sum normed once more, then a per-layer scalar. The router reads h through a weightless RMSNorm,
a learned per-channel scale and H^-1/2; each chosen expert's weight is then multiplied by that
expert's scale. Embeddings are tied and scaled by sqrt(H); the logits are soft-capped. Every RMSNorm
scales by plain w.

Weights: "embed" [V, H], "final_norm" [H]; per layer i under "layers.{i}.": "input_norm", "post_attn_norm",
"pre_mlp_norm", "post_mlp_norm", "pre_moe_norm", "post_moe_norm", "post_ffn_norm" [H]; "q_proj" [Hq D, H],
"k_proj" [Hkv D, H], sliding layers "v_proj" [Hkv D, H]; "q_norm", "k_norm" [D]; "o_proj" [H, Hq D];
"mlp_gate_up" [2 F, H], "mlp_down" [H, F]; "router_scale" [H], "router" [E, H], "expert_scale" [E],
"w13" [E, 2 I, H], "w2" [E, H, I]; "layer_scalar" [] (one number).

Sublayer by sublayer (reference_trace, sublayer_errors; the forward is the trace, so the two cannot
drift), one layer for a chunk is

    attn = attention_sublayer(x)           the attention block up to its post-attention norm
    h = x + attn
    router_logits = router_logits(h)
    moe = ffn_sublayer(h, router_logits)   post_ffn_norm(post_mlp_norm(dense) + post_moe_norm(routed))
    next layer's x = (h + moe) * layer_scalar

What an engine trace of gemma4 (Engine.trace_layers) must record, by the plan's op names
(impbench.plan.cost). In qwen3 and qwen3.6 each sublayer's output sits in a buffer before the op that
adds it: attn after "o_proj", moe as the expert rows when "combine" starts. In gemma4 the post-attention
norm is fused with its add into "ffn_norm", and the two branch post norms, their sum, the post-feedforward
norm, the add and the layer scalar into "post_ffn_norms"; neither the O projection's output nor the
summed expert rows is a sublayer's output here. Per chunk and layer:

- x: the residual stream when the layer's first op, "qkv_proj" (LAYER_FIRST_OPS), starts, as for qwen3;
- h and attn after "ffn_norm": h the residual stream, attn the normed O projection the op added, which
  the op must store (over its input attn_proj: one more [T, H] FP16 store);
- router_logits after "router", as for qwen3 (the router GEMM reads the prenormed, scaled h);
- moe after "post_ffn_norms" (plain or fused with the next layer's input norm): the block's output the
  op added before scaling, which it must store likewise (over the dense MLP's output, say).

Not attn = h - x nor moe = y / layer_scalar - h: the embedding times sqrt(H) dominates the stream (rms
53 against the sublayers' ~1 in gemma-4-26b-a4b with std-1 embeddings), and the difference would carry
h's FP16 rounding, 1.6e-2 of attn, next to the engine test's bound of 2e-2. The adds and the scalar between the records are
checked apart ("residual" in sublayer_errors), and so are the router logits ("router"): the recomputed
MoE routes as the engine's logits say (near-ties must route alike), so a router prenorm the engine drops
would show nowhere else.
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
    prompt_chunks,
    rel_err,
    rms_norm,
    rope,
    route,
    silu,
)

# Errors a test plants to show the sublayer comparison can fail, each with the kind it shows in: errors
# an engine could make that move the last-token logits by under 2.5e-2, inside what a logits check lets
# pass, but their sublayer by more than 0.09 (tests/test_reference_gemma4.py). Left out, and why:
# - gelu exact instead of tanh: the two differ by under 5e-4 anywhere, under FP16 noise in any sublayer
#   (a kernel test against blocks.gelu_tanh catches it); SiLU, the kernels' other epilogue, is a plant;
# - V as the raw k projection, without its weightless norm: the post-attention norm undoes most of a
#   per-token V scale, so it moves its sublayer by only 5e-2; V read from the K cache is a plant;
# - a softmax scale of 1/sqrt(D) on every layer, or a branch's missing post norm: they move the logits
#   by 3e-2 to 6e-2, where a logits check starts to see them; the scale on the full layers alone, and a
#   missing pre norm, are plants.
PLANTS = {
    "rope_all_dims": "full",  # full layers rotate every frequency, not the proportional first quarter
    "window_off_by_one": "sliding",  # key i - window visible too: window + 1 keys
    "v_from_k_cache": "full",  # V read from the K cache: k-normed and roped, not weightless-normed raw K
    "scale_rsqrt_d": "full",  # softmax scale 1/sqrt(D) instead of 1.0 in the full layers
    "silu_for_gelu": "moe",  # the dense MLP and the experts with SiLU instead of gelu_tanh
    "no_router_prenorm": "router",  # router on h * scale * H^-1/2, without the weightless RMSNorm
    "no_expert_scale": "moe",  # the chosen experts' weights not multiplied by their per-expert scale
    "no_pre_moe_norm": "moe",  # one sandwich norm missing: the experts read h itself
}

# The scaled embedding's rms (std * sqrt(H)) that random_weights gives every preset: gemma-4-26b-a4b's
# with std-1 embeddings (as impbench.engine.weights draws them), sqrt(2816).
EMBED_RMS = 2816**0.5


def _plain_norm(x: np.ndarray, eps: float) -> np.ndarray:
    return rms_norm(x, np.ones(x.shape[-1]), eps)


def attention_sublayer(p, w: dict, kind: str, x: np.ndarray, start: int, k_cache: np.ndarray,
                       v_cache: np.ndarray, plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """The attention block of one layer for the chunk x [T, H] at positions start..: its output after the O
    projection and the post-attention norm (the residual add's other operand). Writes the chunk's K and V
    into the layer's caches [S, Hkv, D]."""
    heads, kv_heads, dim = p.attention_dims(kind)
    tokens, end = x.shape[0], start + x.shape[0]
    positions = np.arange(start, end)
    xn = rms_norm(x, w["input_norm"], p.rms_norm_eps)
    q = rms_norm((xn @ w["q_proj"].T).reshape(tokens, heads, dim), w["q_norm"], p.rms_norm_eps)
    raw_k = (xn @ w["k_proj"].T).reshape(tokens, kv_heads, dim)
    k = rms_norm(raw_k, w["k_norm"], p.rms_norm_eps)
    v = _plain_norm(raw_k if not p.has_v_proj(kind) else (xn @ w["v_proj"].T).reshape(tokens, kv_heads, dim), p.rms_norm_eps)
    theta, pairs, scale, window = p.rope_theta, None, p.softmax_scale(kind), None
    if kind == "full":
        theta = p.full_rope_theta or p.rope_theta
        if "rope_all_dims" not in plants:
            pairs = int(dim // 2 * p.full_partial_rotary_factor)
        if "scale_rsqrt_d" in plants:
            scale = dim**-0.5
    else:
        window = p.sliding_window + ("window_off_by_one" in plants)
    q, k = rope(q, positions, theta, rotated_pairs=pairs), rope(k, positions, theta, rotated_pairs=pairs)
    if "v_from_k_cache" in plants and not p.has_v_proj(kind):
        v = k
    k_cache[start:end], v_cache[start:end] = k, v
    attn = causal_attention(q, k_cache[:end], v_cache[:end], start, scale, window)
    return rms_norm(attn.reshape(tokens, -1) @ w["o_proj"].T, w["post_attn_norm"], p.rms_norm_eps)


def router_logits(p, w: dict, h: np.ndarray, plants: frozenset = frozenset()) -> np.ndarray:
    """The router's logits [T, E] for the residual h [T, H]: a weightless RMSNorm, the learned per-channel
    scale and H^-1/2, then the router projection."""
    normed = h if "no_router_prenorm" in plants else _plain_norm(h, p.rms_norm_eps)
    return (normed * w["router_scale"] * p.hidden_size**-0.5) @ w["router"].T


def ffn_sublayer(p, w: dict, h: np.ndarray, logits: np.ndarray | None = None,
                 plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """The dense GeGLU MLP and the routed experts, both from h [T, H], each normed before and after, their
    sum normed: the block's output before the residual add. The routing comes from `logits` where given
    (another implementation's, so that near-ties route the same way), else from this block's router."""
    eps = p.rms_norm_eps
    act = silu if "silu_for_gelu" in plants else ACTIVATIONS[p.activation]
    dense = gated_mlp(rms_norm(h, w["pre_mlp_norm"], eps), w["mlp_gate_up"], w["mlp_down"], act)
    dense = rms_norm(dense, w["post_mlp_norm"], eps)
    logits = router_logits(p, w, h, plants) if logits is None else logits
    ids, weights = route(logits, p.experts_per_token, p.norm_topk_prob)
    if "no_expert_scale" not in plants:
        weights = weights * w["expert_scale"][ids]
    x_moe = h if "no_pre_moe_norm" in plants else rms_norm(h, w["pre_moe_norm"], eps)
    routed = rms_norm(moe(x_moe, ids, weights, w["w13"], w["w2"], act=act), w["post_moe_norm"], eps)
    return rms_norm(dense + routed, w["post_ffn_norm"], eps)


def _caches(p, tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (K, V) cache per layer, each with its layer kind's KV heads and head dim."""
    caches = []
    for kind in p.layer_types:
        _, kv_heads, dim = p.attention_dims(kind)
        caches.append((np.zeros((tokens, kv_heads, dim)), np.zeros((tokens, kv_heads, dim))))
    return caches


def reference_trace(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> list[dict]:
    """Per chunk (of `chunk_size` tokens, 0: one) and layer what a sublayer comparison reads: the layer's input
    x, the attention block's output attn, the residual h = x + attn, the router logits, and the feed-forward
    block's output moe (all float64 [T, ...]); `plants` names PLANTS errors to build in. Each layer keeps its
    own cache; sliding layers read only the window, which may reach back across a chunk boundary."""
    p = preset
    plants = frozenset(plants)
    caches = _caches(p, len(token_ids))
    records = []
    for start, ids in prompt_chunks(token_ids, chunk_size):
        x = weights["embed"][ids] * np.sqrt(p.hidden_size)
        for i, kind in enumerate(p.layer_types):
            w = layer_weights(weights, i)
            attn = attention_sublayer(p, w, kind, x, start, *caches[i], plants)
            h = x + attn
            logits = router_logits(p, w, h, plants)
            out = ffn_sublayer(p, w, h, logits, plants)
            records.append({"start": start, "layer": i, "x": x, "attn": attn, "h": h, "router_logits": logits, "moe": out})
            x = (h + out) * w["layer_scalar"]
    return records


def reference_hidden(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Final-normed hidden states [T, H] of every prompt token, prefilled in chunks of `chunk_size` (0: one);
    `plants` names PLANTS errors to build in."""
    p = preset
    scalar = weights[f"layers.{p.num_layers - 1}.layer_scalar"]
    last = [r for r in reference_trace(p, weights, token_ids, chunk_size, plants) if r["layer"] == p.num_layers - 1]
    return np.concatenate([rms_norm((r["h"] + r["moe"]) * scalar, weights["final_norm"], p.rms_norm_eps) for r in last])


def reference_forward(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Soft-capped logits float64 [V] of the last prompt token (tied embedding)."""
    logits = weights["embed"] @ reference_hidden(preset, weights, token_ids, chunk_size, plants)[-1]
    cap = preset.final_logit_softcapping
    return logits if not cap else cap * np.tanh(logits / cap)



def sublayer_errors(preset, weights: dict, trace: list[dict], plants=()) -> dict[str, float]:
    """The largest relative error ||got - ref|| / ||ref|| of each kind over a trace's chunks and layers (records
    as reference_trace makes them; the module docstring says where an engine takes them): "sliding" and
    "full" (the attention blocks), "router" (the logits) and "moe" (the feed-forward block, routed as the
    trace's logits say), ref computed here (with `plants` built in) from the trace's own x and h; and
    "residual", the trace against itself: h against x + attn, the next layer's x against (h + moe) *
    layer_scalar. Each layer's KV cache is carried from the trace's earlier chunks through this reference,
    so a cache the engine fails to carry, or a window that fails to reach back across a chunk, shows."""
    p = preset
    plants = frozenset(plants)
    caches = _caches(p, max(r["start"] + r["x"].shape[0] for r in trace))
    records = {(r["start"], r["layer"]): {k: np.asarray(v, np.float64) for k, v in r.items()} for r in trace}
    worst = {kind: 0.0 for kind in (*sorted(set(p.layer_types)), "router", "moe", "residual")}
    for (start, i), r in records.items():
        w, kind = layer_weights(weights, i), p.layer_types[i]
        pairs = [
            (kind, r["attn"], attention_sublayer(p, w, kind, r["x"], start, *caches[i], plants)),
            ("router", r["router_logits"], router_logits(p, w, r["h"], plants)),
            ("moe", r["moe"], ffn_sublayer(p, w, r["h"], r["router_logits"], plants)),
            ("residual", r["h"], r["x"] + r["attn"]),
        ]
        if (start, i + 1) in records:
            pairs.append(("residual", records[start, i + 1]["x"], (r["h"] + r["moe"]) * w["layer_scalar"]))
        for name, got, ref in pairs:
            worst[name] = max(worst[name], rel_err(got, ref))
    return worst


def random_weights(preset, seed: int = 0) -> dict:
    """Random float64 weights: linears std 0.02, norms 1 + 0.1 N(0, 1), the router scale likewise, per-layer
    scalars 1 + 0.1 N(0, 1); the embedding with std EMBED_RMS / sqrt(H), so that the residual stream starts
    as far above the sandwich-normed sublayers (rms ~1) as in the full-size model and an error in one
    sublayer moves the logits as little; per-expert scales exp(0.3 N(0, 1)), spread enough that a missing
    one shows (at 1 + 0.1 N(0, 1) it would move the MoE block by 5e-2 only)."""
    p = preset
    draw = Draw(seed)
    rng, linear, norm = draw.rng, draw.linear, draw.norm
    h, e, inter, f = p.hidden_size, p.num_experts, p.moe_intermediate_size, p.dense_intermediate_size

    weights = {"embed": rng.standard_normal((p.vocab_size, h)) * EMBED_RMS / np.sqrt(h), "final_norm": norm(h)}
    for i, kind in enumerate(p.layer_types):
        heads, kv_heads, dim = p.attention_dims(kind)
        layer = {name: norm(h) for name in ("input_norm", "post_attn_norm", "pre_mlp_norm", "post_mlp_norm",
                                            "pre_moe_norm", "post_moe_norm", "post_ffn_norm")}  # fmt: skip
        layer.update(q_proj=linear(heads * dim, h), k_proj=linear(kv_heads * dim, h), q_norm=norm(dim), k_norm=norm(dim),
                     o_proj=linear(h, heads * dim), mlp_gate_up=linear(2 * f, h), mlp_down=linear(h, f),
                     router_scale=norm(h), router=linear(e, h), expert_scale=np.exp(0.3 * rng.standard_normal(e)),
                     w13=linear(e, 2 * inter, h), w2=linear(e, h, inter),
                     layer_scalar=np.array(1.0 + 0.1 * rng.standard_normal()))  # fmt: skip
        if p.has_v_proj(kind):
            layer["v_proj"] = linear(kv_heads * dim, h)
        weights.update({f"layers.{i}.{name}": value for name, value in layer.items()})
    return weights
