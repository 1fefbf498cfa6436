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

LINEAR_STD = 0.02
LAYER_KEYS = ("attn_norm", "wqkv", "q_norm", "k_norm", "wo", "ffn_norm", "router", "w13", "w2")


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float, interleaved: bool = False) -> np.ndarray:
    """NeoX rotate-half rotary embedding of x [T, heads, D] at integer positions [T]: dims i and i + D/2
    form a pair. `interleaved` pairs 2i and 2i+1 instead (GPT-J's convention), a planted error."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-2.0 * np.arange(half) / x.shape[-1])
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return out
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, scale: float) -> np.ndarray:
    """Causal GQA attention of queries q [T, Hq, D] at positions start .. start+T-1 over keys and
    values k, v [S, Hkv, D] at positions 0 .. S-1 (S >= start + T); query head h uses KV head
    h // (Hq / Hkv). Returns [T, Hq, D]."""
    tokens, heads, _ = q.shape
    group = heads // k.shape[1]
    k = np.repeat(k, group, axis=1).transpose(1, 2, 0)  # [Hq, D, S]
    v = np.repeat(v, group, axis=1).transpose(1, 0, 2)  # [Hq, S, D]
    scores = (q.transpose(1, 0, 2) @ k) * scale  # [Hq, T, S]
    visible = np.arange(k.shape[-1])[None, :] <= start + np.arange(tokens)[:, None]
    scores = np.where(visible[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(1, 0, 2)


def route(logits: np.ndarray, top_k: int, renormalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Router softmax then top-k per token: (expert ids [T, k], weights [T, k]), best first,
    ties to the lower expert id; weights renormalised to sum to 1 if asked."""
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    ids = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    weights = np.take_along_axis(probs, ids, axis=-1)
    if renormalize:
        weights = weights / weights.sum(axis=-1, keepdims=True)
    return ids, weights


# Errors a test plants to show it can fail: each moves the last-token logits of a synthetic-weight
# model by only 3e-3 to 2e-2 (the embedding dominates the residual stream), but a sublayer by far more.
PLANTS = ("rope_interleaved", "qk_norm_after_rope", "swap_gate_up", "no_renormalize")


def moe(x: np.ndarray, ids: np.ndarray, weights: np.ndarray, w13: np.ndarray, w2: np.ndarray,
        swap_gate_up: bool = False) -> np.ndarray:  # fmt: skip
    """sum over a token's k experts of weight * w2[e] (silu(gate[e] x) * (up[e] x)); `swap_gate_up`
    takes the up rows as the gate (a planted error)."""
    inter = w2.shape[-1]
    out = np.zeros_like(x)
    for expert in range(w13.shape[0]):
        rows, slots = np.nonzero(ids == expert)
        if rows.size == 0:
            continue
        gate_up = x[rows] @ w13[expert].T
        gate, up = gate_up[:, :inter], gate_up[:, inter:]
        if swap_gate_up:
            gate, up = up, gate
        act = gate / (1.0 + np.exp(-gate)) * up
        out[rows] += weights[rows, slots][:, None] * (act @ w2[expert].T)
    return out


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
    rng = np.random.default_rng(seed)
    hidden, dim, inter, experts = p.hidden_size, p.head_dim, p.moe_intermediate_size, p.num_experts

    def linear(*shape):
        return rng.standard_normal(shape) * LINEAR_STD

    def norm(size):
        return 1.0 + 0.1 * rng.standard_normal(size)

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
    ids = np.asarray(token_ids, dtype=np.int64)
    tokens = ids.shape[0]
    k_cache = np.zeros((p.num_layers, tokens, p.num_kv_heads, p.head_dim))
    v_cache = np.zeros_like(k_cache)
    size = chunk_size if chunk_size > 0 else tokens
    records = []
    for start in range(0, tokens, size):
        x = weights["embed"][ids[start : start + size]]
        for i in range(p.num_layers):
            w = layer_weights(weights, i)
            attn = attention_sublayer(p, w, x, start, k_cache[i], v_cache[i], plants)
            h = x + attn
            logits = rms_norm(h, w["ffn_norm"], p.rms_norm_eps) @ w["router"].T
            out = moe_sublayer(p, w, h, logits, plants)
            records.append({"start": start, "layer": i, "x": x, "attn": attn, "h": h, "router_logits": logits, "moe": out})
            x = h + out
    return records


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


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
        worst["attention"] = max(worst["attention"], _rel_err(np.asarray(r["attn"], np.float64), attn))
        worst["moe"] = max(worst["moe"], _rel_err(np.asarray(r["moe"], np.float64), out))
    return worst
