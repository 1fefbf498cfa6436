"""NumPy float64 forward of the Qwen3-MoE architecture: the oracle the engine is tested against.

Meant for tiny presets (a few layers, hidden a few hundred); nothing here is fast. The math, step by
step, is the engine's: RMSNorm; fused QKV projection; per-head q/k RMSNorm; NeoX rotate-half RoPE;
causal GQA attention over a KV cache (chunked prefill); O projection and residual; RMSNorm; router
softmax, top-k (ties to the lower expert id), optional renormalisation; SwiGLU experts combined with
the router weights; residual; final RMSNorm; lm_head.

Weights are a flat dict of float64 arrays (the contract with impbench.engine.weights):
  "embed" [V, H], "final_norm" [H], "lm_head" [V, H], and per layer i under "layers.{i}.":
  "attn_norm" [H], "wqkv" [(Hq + 2 Hkv) D, H] (q heads, then k heads, then v heads), "q_norm" [D],
  "k_norm" [D], "wo" [H, Hq D], "ffn_norm" [H], "router" [E, H],
  "w13" [E, 2I, H] (rows 0..I-1 gate, I..2I-1 up), "w2" [E, H, I].
"""

from __future__ import annotations

import numpy as np

from impbench.reference.blocks import (
    Draw,
    causal_attention,
    moe,
    prompt_chunks,
    rel_err,
    rms_norm,
    rope,
    route,
)

LAYER_KEYS = ("attn_norm", "wqkv", "q_norm", "k_norm", "wo", "ffn_norm", "router", "w13", "w2")


# Errors a test plants to show it can fail: each moves the last-token logits of a synthetic-weight
# model by only 3e-3 to 2e-2 (the embedding dominates the residual stream), but a sublayer by far more.
PLANTS = ("rope_interleaved", "qk_norm_after_rope", "swap_gate_up", "no_renormalize")


def layer_weights(weights: dict, index: int) -> dict:
    return {name: weights[f"layers.{index}.{name}"] for name in LAYER_KEYS}


def attention_sublayer(preset, w: dict, x: np.ndarray, start: int, k_cache: np.ndarray, v_cache: np.ndarray,
                       plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """The attention block of one layer for the chunk x [T, H] at positions start..: its output after the O
    projection (before the residual add). Writes the chunk's roped K and V into k_cache, v_cache [S, Hkv, D]."""
    p = preset
    heads, kv_heads, dim = p.num_attention_heads, p.num_kv_heads, p.head_dim
    end = start + x.shape[0]
    positions = np.arange(start, end)
    qkv = rms_norm(x, w["attn_norm"], p.rms_norm_eps) @ w["wqkv"].T
    q = qkv[:, : heads * dim].reshape(-1, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(-1, kv_heads, dim)
    v = qkv[:, (heads + kv_heads) * dim :].reshape(-1, kv_heads, dim)
    interleaved = "rope_interleaved" in plants
    norm_late = "qk_norm_after_rope" in plants
    if p.qk_norm and not norm_late:
        q, k = rms_norm(q, w["q_norm"], p.rms_norm_eps), rms_norm(k, w["k_norm"], p.rms_norm_eps)
    q, k = rope(q, positions, p.rope_theta, interleaved), rope(k, positions, p.rope_theta, interleaved)
    if p.qk_norm and norm_late:
        q, k = rms_norm(q, w["q_norm"], p.rms_norm_eps), rms_norm(k, w["k_norm"], p.rms_norm_eps)
    k_cache[start:end], v_cache[start:end] = k, v
    attn = causal_attention(q, k_cache[:end], v_cache[:end], start, 1.0 / np.sqrt(dim))
    return attn.reshape(x.shape[0], -1) @ w["wo"].T


def moe_sublayer(preset, w: dict, h: np.ndarray, router_logits: np.ndarray | None = None,
                 plants: frozenset = frozenset()) -> np.ndarray:  # fmt: skip
    """The MoE block of one layer for the residual h [T, H]: its output before the residual add. The
    routing comes from `router_logits` where given (another implementation's, so that near-ties route
    the same way), else from this block's own router."""
    p = preset
    normed = rms_norm(h, w["ffn_norm"], p.rms_norm_eps)
    logits = normed @ w["router"].T if router_logits is None else router_logits
    renormalize = p.norm_topk_prob and "no_renormalize" not in plants
    expert_ids, expert_weights = route(logits, p.experts_per_token, renormalize)
    return moe(normed, expert_ids, expert_weights, w["w13"], w["w2"], swap_gate_up="swap_gate_up" in plants)


def reference_hidden(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Final-normed hidden states [T, H] of every prompt token, prefilled in chunks of `chunk_size`
    tokens through a KV cache (0: one chunk); `plants` names PLANTS errors to build in."""
    last = [r for r in reference_trace(preset, weights, token_ids, chunk_size, plants) if r["layer"] == preset.num_layers - 1]
    return np.concatenate([rms_norm(r["h"] + r["moe"], weights["final_norm"], preset.rms_norm_eps) for r in last])


def reference_forward(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> np.ndarray:
    """Logits float64 [V] of the last prompt token."""
    return weights["lm_head"] @ reference_hidden(preset, weights, token_ids, chunk_size, plants)[-1]


def random_weights(preset, seed: int = 0) -> dict:
    """Random float64 weights with realistic scales: linears std 0.02, norms 1 + 0.1 N(0, 1),
    embedding std 1 (as impbench.engine.weights); lm_head is the embedding where the preset ties them."""
    p = preset
    draw = Draw(seed)
    rng, linear, norm = draw.rng, draw.linear, draw.norm
    hidden, dim, inter, experts = p.hidden_size, p.head_dim, p.moe_intermediate_size, p.num_experts

    weights = {"embed": rng.standard_normal((p.vocab_size, hidden))}
    for i in range(p.num_layers):
        prefix = f"layers.{i}."
        weights[prefix + "attn_norm"] = norm(hidden)
        weights[prefix + "wqkv"] = linear((p.num_attention_heads + 2 * p.num_kv_heads) * dim, hidden)
        weights[prefix + "q_norm"] = norm(dim)
        weights[prefix + "k_norm"] = norm(dim)
        weights[prefix + "wo"] = linear(hidden, p.num_attention_heads * dim)
        weights[prefix + "ffn_norm"] = norm(hidden)
        weights[prefix + "router"] = linear(experts, hidden)
        weights[prefix + "w13"] = linear(experts, 2 * inter, hidden)
        weights[prefix + "w2"] = linear(experts, hidden, inter)
    weights["final_norm"] = norm(hidden)
    weights["lm_head"] = weights["embed"] if p.tie_word_embeddings else linear(p.vocab_size, hidden)
    return weights


# ---- sublayer by sublayer ----------------------------------------------------------------------------
# A forward compared only at its logits hides errors: with synthetic weights the embedding dominates
# the residual stream. Comparing every sublayer's output, each computed here from the other side's
# own input to it (teacher forcing), shows an error where it is made, at full size.


def reference_trace(preset, weights: dict, token_ids, chunk_size: int = 0, plants=()) -> list[dict]:
    """Per chunk and layer, what a sublayer comparison reads: the layer's input x, the attention output
    attn, the residual h after it, the router logits, and the MoE output moe (all [T, ...] float64)."""
    p = preset
    plants = frozenset(plants)
    k_cache = np.zeros((p.num_layers, len(token_ids), p.num_kv_heads, p.head_dim))
    v_cache = np.zeros_like(k_cache)
    records = []
    for start, ids in prompt_chunks(token_ids, chunk_size):
        x = weights["embed"][ids]
        for i in range(p.num_layers):
            w = layer_weights(weights, i)
            attn = attention_sublayer(p, w, x, start, k_cache[i], v_cache[i], plants)
            h = x + attn
            logits = rms_norm(h, w["ffn_norm"], p.rms_norm_eps) @ w["router"].T
            out = moe_sublayer(p, w, h, logits, plants)
            records.append({"start": start, "layer": i, "x": x, "attn": attn, "h": h, "router_logits": logits, "moe": out})
            x = h + out
    return records


def sublayer_errors(preset, weights: dict, trace: list[dict], plants=()) -> dict[str, float]:
    """The largest relative error ||got - ref|| / ||ref|| of each sublayer kind ("attention", "moe") over a
    trace's chunks and layers, ref computed here (with `plants` built in) from the trace's own inputs."""
    p = preset
    plants = frozenset(plants)
    tokens = max(r["start"] + r["x"].shape[0] for r in trace)
    k_cache = np.zeros((p.num_layers, tokens, p.num_kv_heads, p.head_dim))
    v_cache = np.zeros_like(k_cache)
    worst = {"attention": 0.0, "moe": 0.0}
    for r in trace:
        w = layer_weights(weights, r["layer"])
        x, h = np.asarray(r["x"], np.float64), np.asarray(r["h"], np.float64)
        attn = attention_sublayer(p, w, x, r["start"], k_cache[r["layer"]], v_cache[r["layer"]], plants)
        out = moe_sublayer(p, w, h, np.asarray(r["router_logits"], np.float64), plants)
        worst["attention"] = max(worst["attention"], rel_err(np.asarray(r["attn"], np.float64), attn))
        worst["moe"] = max(worst["moe"], rel_err(np.asarray(r["moe"], np.float64), out))
    return worst
