"""Building blocks of the float64 references, shared by every architecture: RMSNorm, rotary
embedding, causal GQA attention over a KV cache, router top-k, the gated MLP and the experts made of it,
and the random weights."""

from __future__ import annotations

import numpy as np

LINEAR_STD = 0.02  # of every random linear weight, as impbench.engine.weights draws them


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


ACTIVATIONS = {"silu": silu, "gelu_tanh": gelu_tanh}  # a preset's `activation`


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float, interleaved: bool = False,
         rotated_pairs: int | None = None) -> np.ndarray:  # fmt: skip
    """NeoX rotate-half rotary embedding of x [T, heads, D] at integer positions [T]: dims i and i + D/2
    form a pair, rotated at frequency theta^(-2i/D). `rotated_pairs` < D/2 keeps those frequencies for the
    first pairs and 0 for the rest (Gemma-4's "proportional" RoPE). `interleaved` pairs 2i and 2i+1
    instead (GPT-J's convention), a planted error."""
    half = x.shape[-1] // 2
    inv_freq = theta ** (-2.0 * np.arange(half) / x.shape[-1])
    if rotated_pairs is not None:
        inv_freq[rotated_pairs:] = 0.0
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return out
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, start: int, scale: float,
                     window: int | None = None) -> np.ndarray:  # fmt: skip
    """Causal GQA attention of queries q [T, Hq, D] at positions start .. start+T-1 over keys and
    values k, v [S, Hkv, D] at positions 0 .. S-1 (S >= start + T); query head h uses KV head
    h // (Hq / Hkv). With a sliding `window`, key j is visible to query i iff i - window < j <= i.
    Returns [T, Hq, D]."""
    tokens, heads, _ = q.shape
    group = heads // k.shape[1]
    k = np.repeat(k, group, axis=1).transpose(1, 2, 0)  # [Hq, D, S]
    v = np.repeat(v, group, axis=1).transpose(1, 0, 2)  # [Hq, S, D]
    scores = (q.transpose(1, 0, 2) @ k) * scale  # [Hq, T, S]
    keys, queries = np.arange(k.shape[-1])[None, :], start + np.arange(tokens)[:, None]
    visible = keys <= queries
    if window is not None:
        visible &= keys > queries - window
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


def gated_mlp(x: np.ndarray, w13: np.ndarray, w2: np.ndarray, act=silu, swap_gate_up: bool = False) -> np.ndarray:
    """w2 (act(gate x) * (up x)), w13 [2I, H] holding the gate rows then the up rows; `swap_gate_up`
    takes the up rows as the gate (a planted error)."""
    inter = w2.shape[-1]
    gate_up = x @ w13.T
    gate, up = gate_up[:, :inter], gate_up[:, inter:]
    if swap_gate_up:
        gate, up = up, gate
    return (act(gate) * up) @ w2.T


def moe(x: np.ndarray, ids: np.ndarray, weights: np.ndarray, w13: np.ndarray, w2: np.ndarray,
        swap_gate_up: bool = False, act=silu) -> np.ndarray:  # fmt: skip
    """sum over a token's k experts of weight * gated_mlp(x, w13[e], w2[e])."""
    out = np.zeros_like(x)
    for expert in range(w13.shape[0]):
        rows, slots = np.nonzero(ids == expert)
        if rows.size:
            out[rows] += weights[rows, slots][:, None] * gated_mlp(x[rows], w13[expert], w2[expert], act, swap_gate_up)
    return out


def prompt_chunks(token_ids, chunk_size: int) -> list[tuple[int, np.ndarray]]:
    """(start, token ids) of each chunk of `chunk_size` tokens of a prompt (0: the whole prompt as one)."""
    ids = np.asarray(token_ids, dtype=np.int64)
    size = chunk_size if chunk_size > 0 else ids.shape[0]
    return [(start, ids[start : start + size]) for start in range(0, ids.shape[0], size)]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """||got - ref|| / ||ref||, the measure of every sublayer comparison."""
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref))


def layer_weights(weights: dict, index: int) -> dict:
    """Layer `index`'s weights of a flat dict, without their "layers.{index}." prefix."""
    prefix = f"layers.{index}."
    return {name[len(prefix) :]: value for name, value in weights.items() if name.startswith(prefix)}


class Draw:
    """Random float64 weights with realistic scales, for every reference's random_weights: linears
    N(0, std^2), norm weights center + 0.1 N(0, 1) (center 1 for x * w norms, 0 for x * (1 + w))."""

    def __init__(self, seed: int, std: float = LINEAR_STD):
        self.rng, self.std = np.random.default_rng(seed), std

    def linear(self, *shape) -> np.ndarray:
        return self.rng.standard_normal(shape) * self.std

    def norm(self, size, center: float = 1.0) -> np.ndarray:
        return center + 0.1 * self.rng.standard_normal(size)
