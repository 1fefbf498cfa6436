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


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """NeoX rotate-half rotary embedding of x [T, heads, D] at integer positions [T]."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-2.0 * np.arange(half) / x.shape[-1])
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
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


def moe(x: np.ndarray, ids: np.ndarray, weights: np.ndarray, w13: np.ndarray, w2: np.ndarray) -> np.ndarray:
    """sum over a token's k experts of weight * w2[e] (silu(gate[e] x) * (up[e] x))."""
    inter = w2.shape[-1]
    out = np.zeros_like(x)
    for expert in range(w13.shape[0]):
        rows, slots = np.nonzero(ids == expert)
        if rows.size == 0:
            continue
        gate_up = x[rows] @ w13[expert].T
        gate, up = gate_up[:, :inter], gate_up[:, inter:]
        act = gate / (1.0 + np.exp(-gate)) * up
        out[rows] += weights[rows, slots][:, None] * (act @ w2[expert].T)
    return out


def reference_hidden(preset, weights: dict, token_ids, chunk_size: int = 0) -> np.ndarray:
    """Final-normed hidden states [T, H] of every prompt token, prefilled in chunks of `chunk_size`
    tokens through a KV cache (0: one chunk)."""
    p = preset
    ids = np.asarray(token_ids, dtype=np.int64)
    tokens = ids.shape[0]
    heads, kv_heads, dim = p.num_attention_heads, p.num_kv_heads, p.head_dim
    scale = 1.0 / np.sqrt(dim)
    k_cache = np.zeros((p.num_layers, tokens, kv_heads, dim))
    v_cache = np.zeros_like(k_cache)
    size = chunk_size if chunk_size > 0 else tokens
    hidden = []
    for start in range(0, tokens, size):
        end = min(start + size, tokens)
        positions = np.arange(start, end)
        x = weights["embed"][ids[start:end]]
        for i in range(p.num_layers):
            w = {name: weights[f"layers.{i}.{name}"] for name in LAYER_KEYS}
            qkv = rms_norm(x, w["attn_norm"], p.rms_norm_eps) @ w["wqkv"].T
            q = qkv[:, : heads * dim].reshape(-1, heads, dim)
            k = qkv[:, heads * dim : (heads + kv_heads) * dim].reshape(-1, kv_heads, dim)
            v = qkv[:, (heads + kv_heads) * dim :].reshape(-1, kv_heads, dim)
            if p.qk_norm:
                q = rms_norm(q, w["q_norm"], p.rms_norm_eps)
                k = rms_norm(k, w["k_norm"], p.rms_norm_eps)
            k_cache[i, start:end] = rope(k, positions, p.rope_theta)
            v_cache[i, start:end] = v
            attn = causal_attention(rope(q, positions, p.rope_theta), k_cache[i, :end], v_cache[i, :end], start, scale)
            x = x + attn.reshape(end - start, -1) @ w["wo"].T
            normed = rms_norm(x, w["ffn_norm"], p.rms_norm_eps)
            expert_ids, expert_weights = route(normed @ w["router"].T, p.experts_per_token, p.norm_topk_prob)
            x = x + moe(normed, expert_ids, expert_weights, w["w13"], w["w2"])
        hidden.append(rms_norm(x, weights["final_norm"], p.rms_norm_eps))
    return np.concatenate(hidden)


def reference_forward(preset, weights: dict, token_ids, chunk_size: int = 0) -> np.ndarray:
    """Logits float64 [V] of the last prompt token."""
    return weights["lm_head"] @ reference_hidden(preset, weights, token_ids, chunk_size)[-1]


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
