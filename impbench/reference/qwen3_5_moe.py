"""NumPy float64 forward of the Qwen3.5 / Qwen3.6 hybrid MoE (`qwen3_5_moe`), for tiny presets.

Layers follow the preset's layer_types: "linear" layers are Gated DeltaNet (impbench.reference.
gated_delta), "full" layers gated softmax attention. Every layer then runs the routed experts plus a
shared expert scaled by the sigmoid of an N=1 gate. Every RMSNorm scales by (1 + w), except the gated
norm of a linear layer, which scales by w.

A chunked prefill carries, per layer, the KV cache (full layers) or the conv state and the fp32
recurrent state (linear layers) from chunk to chunk, so it equals a prefill in one chunk.

Weights are a flat dict of float64 arrays: "embed" [V, H], "final_norm" [H], "lm_head" [V, H], and per
layer i under "layers.{i}.": "attn_norm", "ffn_norm" [H]; "router" [E, H], "w13" [E, 2I, H], "w2" [E, H, I],
"shared_w13" [2S, H], "shared_w2" [H, S], "shared_gate" [1, H]; linear layers "in_proj_qkv"
[2 Hk dk + Hv dv, H] (q | k | v), "in_proj_z" [Hv dv, H], "in_proj_b", "in_proj_a" [Hv, H], "conv"
[channels, K], "a_log", "dt_bias" [Hv], "gated_norm" [dv], "out_proj" [H, Hv dv]; full layers "q_proj"
[Hq 2D, H] (per head: D queries, then D gate channels), "k_proj", "v_proj" [Hkv D, H], "q_norm",
"k_norm" [D], "o_proj" [H, Hq D].
"""

from __future__ import annotations

import numpy as np

from impbench.reference.blocks import (
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
)
from impbench.reference.gated_delta import (
    causal_conv1d,
    decay_and_beta,
    draw_decay_parameters,
    gated_delta_chunked,
    gated_rmsnorm,
    l2norm,
)

# Errors a test plants to show the engine's sublayer comparison can fail (tests/test_reference_gated_delta.py
# shows that each moves its sublayer by far more than the engine's FP16 error).
PLANTS = ("rope_all_dims", "norm_without_offset", "no_attn_gate", "conv_state_dropped", "delta_state_dropped",
          "ungated_shared_expert")  # fmt: skip


def _norm(p, x: np.ndarray, weight: np.ndarray, plants: frozenset = frozenset()) -> np.ndarray:
    """The model's RMSNorm: scale by offset + w (offset 1: its weights are stored around 0)."""
    offset = 0.0 if "norm_without_offset" in plants else p.norm_weight_offset
    return rms_norm(x, offset + weight, p.rms_norm_eps)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def linear_sublayer(p, w: dict, x: np.ndarray, state: dict, plants: frozenset = frozenset()) -> np.ndarray:
    """The Gated DeltaNet block of one layer for the chunk x [T, H]: its output before the residual add.
    `state` holds "conv" [K - 1, channels] and "s" [Hv, dk, dv] (None at the prompt's start); updated."""
    tokens = x.shape[0]
    hk, hv, dk, dv = p.linear_num_key_heads, p.linear_num_value_heads, p.linear_key_head_dim, p.linear_value_head_dim
    if "conv_state_dropped" in plants:
        state.pop("conv", None)
    if "delta_state_dropped" in plants:
        state.pop("s", None)
    xn = _norm(p, x, w["attn_norm"], plants)
    mixed, state["conv"] = causal_conv1d(xn @ w["in_proj_qkv"].T, w["conv"], state.get("conv"))
    q = l2norm(mixed[:, : hk * dk].reshape(tokens, hk, dk)) / np.sqrt(dk)
    k = l2norm(mixed[:, hk * dk : 2 * hk * dk].reshape(tokens, hk, dk))
    v = mixed[:, 2 * hk * dk :].reshape(tokens, hv, dv)
    g, beta = decay_and_beta(xn @ w["in_proj_a"].T, xn @ w["in_proj_b"].T, w["a_log"], w["dt_bias"])
    o, state["s"] = gated_delta_chunked(q, k, v, g, beta, state.get("s"))
    z = (xn @ w["in_proj_z"].T).reshape(tokens, hv, dv)
    return gated_rmsnorm(o, z, w["gated_norm"], p.rms_norm_eps).reshape(tokens, -1) @ w["out_proj"].T


def full_sublayer(p, w: dict, x: np.ndarray, start: int, k_cache: np.ndarray, v_cache: np.ndarray,
                  plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """The gated attention block of one full layer for the chunk x [T, H] at positions start..: its output
    before the residual add. Writes the chunk's K and V into k_cache, v_cache [S, Hkv, D]."""
    tokens, heads, kv_heads, dim = x.shape[0], p.num_attention_heads, p.num_kv_heads, p.head_dim
    end = start + tokens
    positions = np.arange(start, end)
    rotary = dim if "rope_all_dims" in plants else int(dim * p.partial_rotary_factor)
    xn = _norm(p, x, w["attn_norm"], plants)
    q_gate = (xn @ w["q_proj"].T).reshape(tokens, heads, 2 * dim)
    q, gate = q_gate[..., :dim], q_gate[..., dim:]
    q = _norm(p, q, w["q_norm"], plants)
    k = _norm(p, (xn @ w["k_proj"].T).reshape(tokens, kv_heads, dim), w["k_norm"], plants)
    v = (xn @ w["v_proj"].T).reshape(tokens, kv_heads, dim)
    q = np.concatenate([rope(q[..., :rotary], positions, p.rope_theta), q[..., rotary:]], axis=-1)
    k = np.concatenate([rope(k[..., :rotary], positions, p.rope_theta), k[..., rotary:]], axis=-1)
    k_cache[start:end], v_cache[start:end] = k, v
    attn = causal_attention(q, k_cache[:end], v_cache[:end], start, 1.0 / np.sqrt(dim))
    if "no_attn_gate" not in plants:
        attn = attn * _sigmoid(gate)
    return attn.reshape(tokens, -1) @ w["o_proj"].T


def moe_sublayer(p, w: dict, h: np.ndarray, router_logits: np.ndarray | None = None,
                 plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """Routed experts plus the shared expert scaled by sigmoid(gate), on RMSNorm(h): the block's output. The
    routing comes from `router_logits` where given (another implementation's, so near-ties route the same)."""
    hn = _norm(p, h, w["ffn_norm"], plants)
    logits = hn @ w["router"].T if router_logits is None else router_logits
    ids, weights = route(logits, p.experts_per_token, p.norm_topk_prob)
    routed = moe(hn, ids, weights, w["w13"], w["w2"])
    shared = gated_mlp(hn, w["shared_w13"], w["shared_w2"])
    gated = p.shared_expert_gate and "ungated_shared_expert" not in plants
    return routed + (_sigmoid(hn @ w["shared_gate"].T) if gated else 1.0) * shared


def reference_hidden(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Final-normed hidden states [T, H] of every prompt token, prefilled in chunks of `chunk_size` (0: one);
    `plants` names PLANTS errors to build in."""
    p = preset
    last = [r for r in reference_trace(p, weights, token_ids, chunk_size, plants) if r["layer"] == p.num_layers - 1]
    return np.concatenate([_norm(p, r["h"] + r["moe"], weights["final_norm"], frozenset(plants)) for r in last])


def reference_forward(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Logits float64 [V] of the last prompt token."""
    return weights["lm_head"] @ reference_hidden(preset, weights, token_ids, chunk_size, plants)[-1]


def random_weights(preset, seed: int = 0) -> dict:
    """Random float64 weights with realistic scales: linears std 0.02, (1 + w) norms with w ~ 0.1 N(0, 1),
    the gated norm's w near 1, embedding std 1, A_log and dt_bias as the layers initialise them
    (draw_decay_parameters)."""
    p = preset
    draw = Draw(seed)
    rng, linear = draw.rng, draw.linear
    h, e, inter, shared = p.hidden_size, p.num_experts, p.moe_intermediate_size, p.shared_expert_intermediate_size

    def norm(size):
        return draw.norm(size, center=0.0)

    weights = {"embed": rng.standard_normal((p.vocab_size, h)), "final_norm": norm(h), "lm_head": linear(p.vocab_size, h)}
    for i, kind in enumerate(p.layer_types):
        layer = {"attn_norm": norm(h), "ffn_norm": norm(h), "router": linear(e, h), "w13": linear(e, 2 * inter, h),
                 "w2": linear(e, h, inter), "shared_w13": linear(2 * shared, h), "shared_w2": linear(h, shared),
                 "shared_gate": linear(1, h)}  # fmt: skip
        if kind == "linear":
            hv, dv = p.linear_num_value_heads, p.linear_value_head_dim
            layer.update(in_proj_qkv=linear(p.linear_conv_dim, h), in_proj_z=linear(hv * dv, h), in_proj_b=linear(hv, h),
                         in_proj_a=linear(hv, h), conv=0.3 * rng.standard_normal((p.linear_conv_dim, p.linear_conv_kernel)),
                         **dict(zip(("a_log", "dt_bias"), draw_decay_parameters(rng, hv))),
                         gated_norm=draw.norm(dv), out_proj=linear(h, hv * dv))  # fmt: skip
        else:
            heads, kv, d = p.num_attention_heads, p.num_kv_heads, p.head_dim
            layer.update(q_proj=linear(heads * 2 * d, h), k_proj=linear(kv * d, h), v_proj=linear(kv * d, h), q_norm=norm(d),
                         k_norm=norm(d), o_proj=linear(h, heads * d))  # fmt: skip
        weights.update({f"layers.{i}.{name}": value for name, value in layer.items()})
    return weights


def sublayer_errors(preset, weights: dict, trace: list[dict], plants=()) -> dict[str, float]:
    """The largest relative error ||got - ref|| / ||ref|| of each sublayer kind ("linear", "full", "moe") over a
    trace's chunks and layers (impbench.engine.Engine.trace_layers), ref computed here (with `plants` built in)
    from the trace's own inputs: each layer's conv and recurrent state, or KV cache, is carried from the
    trace's earlier chunks through this reference, so a state the engine fails to carry shows."""
    p = preset
    plants = frozenset(plants)
    tokens = max(r["start"] + r["x"].shape[0] for r in trace)
    k_cache = np.zeros((p.num_layers, tokens, p.num_kv_heads, p.head_dim))
    v_cache = np.zeros_like(k_cache)
    states = [{} for _ in range(p.num_layers)]
    worst = {kind: 0.0 for kind in (*sorted(set(p.layer_types)), "moe")}
    for r in trace:
        i = r["layer"]
        w, kind = layer_weights(weights, i), p.layer_types[i]
        x, h = np.asarray(r["x"], np.float64), np.asarray(r["h"], np.float64)
        if kind == "linear":
            mixer = linear_sublayer(p, w, x, states[i], plants)
        else:
            mixer = full_sublayer(p, w, x, r["start"], k_cache[i], v_cache[i], plants)
        out = moe_sublayer(p, w, h, np.asarray(r["router_logits"], np.float64), plants)
        worst[kind] = max(worst[kind], rel_err(np.asarray(r["attn"], np.float64), mixer))
        worst["moe"] = max(worst["moe"], rel_err(np.asarray(r["moe"], np.float64), out))
    return worst


def reference_trace(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> list[dict]:
    """What Engine.trace_layers records, computed here: per chunk and layer x, attn, h, router_logits, moe."""
    p = preset
    plants = frozenset(plants)
    k_cache = np.zeros((p.num_layers, len(token_ids), p.num_kv_heads, p.head_dim))
    v_cache = np.zeros_like(k_cache)
    states = [{} for _ in range(p.num_layers)]
    records = []
    for start, ids in prompt_chunks(token_ids, chunk_size):
        x = weights["embed"][ids]
        for i, kind in enumerate(p.layer_types):
            w = layer_weights(weights, i)
            if kind == "linear":
                mixer = linear_sublayer(p, w, x, states[i], plants)
            else:
                mixer = full_sublayer(p, w, x, start, k_cache[i], v_cache[i], plants)
            h = x + mixer
            logits = _norm(p, h, w["ffn_norm"], plants) @ w["router"].T
            out = moe_sublayer(p, w, h, logits, plants)
            records.append({"start": start, "layer": i, "x": x, "attn": mixer, "h": h, "router_logits": logits, "moe": out})
            x = h + out
    return records
