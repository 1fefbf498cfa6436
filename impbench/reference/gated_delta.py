"""Gated DeltaNet (the linear-attention layers of Qwen3.5 / Qwen3.6) in float64: the gated delta rule in
its recurrent and its chunked (WY) form, the causal depthwise conv with carried state, the decay and
write-strength prep, and the gated RMSNorm.

The gated delta rule, per value head with state S [dk, dv] (key head = value head // group):
    S <- exp(g_t) S;   delta_t = beta_t (v_t - S^T k_t);   S <- S + k_t delta_t^T;   o_t = S^T q_t

The chunked form computes the same outputs C tokens at a time (the form a GPU kernel runs: matrix
products instead of a token-by-token recurrence). With S0 the state before the chunk and
gamma_i = g_1 + ... + g_i the cumulative log decay inside it, unrolling the recurrence gives
    S_i     = e^{gamma_i} S0 + sum_{j<=i} e^{gamma_i - gamma_j} k_j delta_j^T
    delta   = T (beta V) - T (beta e^gamma K) S0 = U - W S0,   T = (I + A)^{-1},
              A_ij = beta_i e^{gamma_i - gamma_j} k_i . k_j for j < i (strictly lower: a triangular solve)
    O       = e^gamma Q S0 + ((Q K^T) * Gamma, lower incl. diagonal) delta,   Gamma_ij = e^{gamma_i - gamma_j}
    S_C     = e^{gamma_C} S0 + (e^{gamma_C - gamma} K)^T delta
T, U and W are flash-linear-attention's WY factors; the loop over chunks carries only S.
"""

from __future__ import annotations

import numpy as np

from impbench.plan.cost import GDN_CHUNK as CHUNK  # the WY chunk the plan counts
from impbench.reference.blocks import rms_norm


def l2norm(x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """x / sqrt(sum(x^2) + eps) over the last axis (the q and k of a linear layer, per head)."""
    return x / np.sqrt(np.sum(x * x, axis=-1, keepdims=True) + eps)


def softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def draw_decay_parameters(rng: np.random.Generator, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """(A_log, dt_bias) [heads] as Gated DeltaNet layers initialise them (Mamba's rule): A ~ U(1, 16) and a step
    dt ~ log-uniform in [1e-3, 1e-1] stored through the inverse softplus, so that -exp(A_log) softplus(dt_bias)
    is -0.001 to -1.6 per token: a state that outlives a prefill chunk, as in a trained model."""
    dt = np.exp(rng.uniform(np.log(1e-3), np.log(1e-1), heads))
    return np.log(rng.uniform(1.0, 16.0, heads)), dt + np.log(-np.expm1(-dt))


def decay_and_beta(a: np.ndarray, b: np.ndarray, a_log: np.ndarray, dt_bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """g = -exp(A_log) * softplus(a + dt_bias) (log decay, <= 0) and beta = sigmoid(b), both [T, heads]."""
    return -np.exp(a_log) * softplus(a + dt_bias), 1.0 / (1.0 + np.exp(-b))


def causal_conv1d(x: np.ndarray, weight: np.ndarray, state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Depthwise causal conv over channels, no bias, then SiLU: out[t, c] = silu(sum_j w[c, j] x[t - K + 1 + j, c]).

    x [T, channels]; weight [channels, K]; `state` [K - 1, channels], the last inputs of the previous chunk
    (zeros at the prompt's start). Returns (out [T, channels], the new state: the last K - 1 inputs)."""
    kernel = weight.shape[1]
    state = np.zeros((kernel - 1, x.shape[1])) if state is None else state
    padded = np.concatenate([state, x])
    out = sum(weight[:, j] * padded[j : j + x.shape[0]] for j in range(kernel))
    return out / (1.0 + np.exp(-out)), padded[-(kernel - 1) :]


def gated_rmsnorm(o: np.ndarray, z: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """w * rmsnorm(o) * silu(z) over the last axis (per token and head; plain w, not 1 + w)."""
    return rms_norm(o, weight, eps) * z / (1.0 + np.exp(-z))


def _heads_of_values(k: np.ndarray, q: np.ndarray, value_heads: int) -> tuple[np.ndarray, np.ndarray]:
    group = value_heads // k.shape[1]
    return np.repeat(q, group, axis=1), np.repeat(k, group, axis=1)


def gated_delta_recurrent(q, k, v, g, beta, state=None) -> tuple[np.ndarray, np.ndarray]:
    """Token by token. q, k [T, Hk, dk] (normalised, q scaled); v [T, Hv, dv]; g, beta [T, Hv];
    state [Hv, dk, dv] (zeros where None). Returns (o [T, Hv, dv], final state)."""
    tokens, value_heads, dv = v.shape
    q, k = _heads_of_values(k, q, value_heads)
    s = np.zeros((value_heads, k.shape[2], dv)) if state is None else state.copy()
    out = np.empty_like(v)
    for t in range(tokens):
        s *= np.exp(g[t])[:, None, None]
        delta = beta[t][:, None] * (v[t] - np.einsum("hkv,hk->hv", s, k[t]))
        s += k[t][:, :, None] * delta[:, None, :]
        out[t] = np.einsum("hkv,hk->hv", s, q[t])
    return out, s


def gated_delta_chunked(q, k, v, g, beta, state=None, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """The same function in WY chunks of `chunk` tokens (the last one may be shorter; see the module
    docstring for the algebra). Same arguments and results as gated_delta_recurrent."""
    tokens, value_heads, dv = v.shape
    q, k = _heads_of_values(k, q, value_heads)
    s = np.zeros((value_heads, k.shape[2], dv)) if state is None else state.copy()
    out = np.empty_like(v)
    for start in range(0, tokens, chunk):
        end = min(start + chunk, tokens)
        for h in range(value_heads):
            qc, kc, vc, bc = q[start:end, h], k[start:end, h], v[start:end, h], beta[start:end, h]
            gamma = np.cumsum(g[start:end, h])
            # Gamma_ij for i >= j (gamma falls along the chunk, so these are <= 1); the clamp only keeps the
            # masked-out upper triangle finite
            decay = np.exp(np.minimum(gamma[:, None] - gamma[None, :], 0.0))
            lower = np.tril(np.ones((end - start, end - start)), -1)
            a = (bc[:, None] * (kc @ kc.T)) * decay * lower
            t_inv = np.linalg.inv(np.eye(end - start) + a)  # (I + A)^{-1}, lower triangular
            u = t_inv @ (bc[:, None] * vc)
            w = t_inv @ ((bc * np.exp(gamma))[:, None] * kc)
            delta = u - w @ s[h]
            scores = (qc @ kc.T) * decay * np.tril(np.ones_like(decay))
            out[start:end, h] = np.exp(gamma)[:, None] * (qc @ s[h]) + scores @ delta
            s[h] = np.exp(gamma[-1]) * s[h] + (np.exp(gamma[-1] - gamma)[:, None] * kc).T @ delta
    return out, s
