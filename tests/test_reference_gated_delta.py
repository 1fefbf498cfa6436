"""The float64 references of Gated DeltaNet and of the qwen3_5_moe forward: the chunked (WY) gated delta
rule equals the recurrence, whole and split across prefill chunks at any token; the conv carries its
state; a chunked prefill of the tiny hybrid model equals one chunk, and it is causal."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impbench.presets import get_preset
from impbench.reference import qwen3_5_moe
from impbench.reference.gated_delta import (causal_conv1d, decay_and_beta, gated_delta_chunked, gated_delta_recurrent,
                                            gated_rmsnorm, l2norm)  # fmt: skip


def _inputs(seed, tokens, key_heads=2, value_heads=4, dk=16, dv=8):
    rng = np.random.default_rng(seed)
    q = l2norm(rng.standard_normal((tokens, key_heads, dk))) / np.sqrt(dk)
    k = l2norm(rng.standard_normal((tokens, key_heads, dk)))
    v = rng.standard_normal((tokens, value_heads, dv))
    g, beta = decay_and_beta(rng.standard_normal((tokens, value_heads)), rng.standard_normal((tokens, value_heads)),
                             np.log(rng.uniform(1, 16, value_heads)), rng.standard_normal(value_heads))  # fmt: skip
    return q, k, v, g, beta


def test_decay_and_write_strength():
    g, beta = decay_and_beta(np.array([[-30.0, 0.0, 30.0]]), np.array([[-30.0, 0.0, 30.0]]), np.zeros(3), np.zeros(3))
    assert np.all(g <= 0) and g[0, 2] == pytest.approx(-30.0) and g[0, 1] == pytest.approx(-np.log(2))
    assert beta[0, 1] == 0.5 and 0 < beta[0, 0] < 1e-12 and 1 - beta[0, 2] < 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 200), st.integers(1, 70), st.integers(0, 10_000))
def test_chunked_equals_the_recurrence_and_splits_anywhere(tokens, chunk, seed):
    q, k, v, g, beta = _inputs(seed, tokens)
    o_ref, s_ref = gated_delta_recurrent(q, k, v, g, beta)
    o, s = gated_delta_chunked(q, k, v, g, beta, chunk=chunk)
    np.testing.assert_allclose(o, o_ref, atol=1e-12, rtol=1e-9)
    np.testing.assert_allclose(s, s_ref, atol=1e-12, rtol=1e-9)
    split = seed % tokens  # a prefill chunk boundary anywhere, the state carried across it
    o1, s1 = gated_delta_chunked(q[:split], k[:split], v[:split], g[:split], beta[:split])
    o2, s2 = gated_delta_chunked(q[split:], k[split:], v[split:], g[split:], beta[split:], state=s1)
    np.testing.assert_allclose(np.concatenate([o1, o2]), o_ref, atol=1e-12, rtol=1e-9)
    np.testing.assert_allclose(s2, s_ref, atol=1e-12, rtol=1e-9)


def test_the_rule_is_the_delta_rule():
    """One token from a known state: S <- e^g S; delta = beta (v - S^T k); S += k delta^T; o = S^T q."""
    q, k, v, g, beta = _inputs(3, 1, key_heads=1, value_heads=1)
    s0 = np.random.default_rng(4).standard_normal((1, 16, 8))
    o, s = gated_delta_recurrent(q, k, v, g, beta, state=s0)
    decayed = np.exp(g[0, 0]) * s0[0]
    delta = beta[0, 0] * (v[0, 0] - decayed.T @ k[0, 0])
    expected = decayed + np.outer(k[0, 0], delta)
    np.testing.assert_allclose(s[0], expected, rtol=1e-12)
    np.testing.assert_allclose(o[0, 0], expected.T @ q[0, 0], rtol=1e-12)


def test_conv_carries_its_state_across_chunks():
    rng = np.random.default_rng(5)
    x, weight = rng.standard_normal((37, 12)), rng.standard_normal((12, 4))
    whole, state = causal_conv1d(x, weight)
    first, carried = causal_conv1d(x[:10], weight)
    second, state2 = causal_conv1d(x[10:], weight, carried)
    np.testing.assert_allclose(np.concatenate([first, second]), whole, rtol=1e-13)
    np.testing.assert_array_equal(state, state2)
    pre = weight[:, 3] * x[0]  # the first token sees only itself (zeros before the prompt)
    np.testing.assert_allclose(whole[0], pre / (1 + np.exp(-pre)), rtol=1e-13)


def test_gated_norm():
    rng = np.random.default_rng(6)
    o, z, w = rng.standard_normal((3, 2, 8)), rng.standard_normal((3, 2, 8)), rng.standard_normal(8)
    out = gated_rmsnorm(o, z, w, 1e-6)
    rms = np.sqrt((o**2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(out, o / rms * w * z / (1 + np.exp(-z)), rtol=1e-13)


@pytest.fixture(scope="module")
def hybrid():
    preset = get_preset("tiny-qwen3.6")
    return preset, qwen3_5_moe.random_weights(preset, seed=1)


@pytest.mark.parametrize("chunk", [32, 48, 16])
def test_a_chunked_prefill_of_the_hybrid_model_equals_one_chunk(hybrid, chunk):
    preset, weights = hybrid
    ids = np.random.default_rng(2).integers(0, preset.vocab_size, 150)
    one = qwen3_5_moe.reference_hidden(preset, weights, ids, 0)
    assert np.isfinite(one).all() and np.abs(one).max() > 0.1
    np.testing.assert_allclose(qwen3_5_moe.reference_hidden(preset, weights, ids, chunk), one, atol=1e-11, rtol=1e-9)


def test_the_hybrid_model_is_causal(hybrid):
    preset, weights = hybrid
    ids = np.random.default_rng(3).integers(0, preset.vocab_size, 70)
    changed = ids.copy()
    changed[50] = (changed[50] + 1) % preset.vocab_size
    a, b = (qwen3_5_moe.reference_hidden(preset, weights, x, 32) for x in (ids, changed))
    np.testing.assert_allclose(a[:50], b[:50], atol=1e-12)  # equal up to rounding of the chunk's matrix products
    assert np.abs(a[50:] - b[50:]).max() > 1e-3


def test_each_plant_shows_in_its_sublayer(hybrid):
    """What the engine's sublayer comparison (tests/test_engine.py) reads: the trace recomputed from its own
    inputs has no error, and each planted error moves the sublayer it lives in by far more than FP16 noise."""
    preset, weights = hybrid
    ids = np.random.default_rng(3).integers(0, preset.vocab_size, 80)
    trace = qwen3_5_moe.reference_trace(preset, weights, ids, 32)
    assert max(qwen3_5_moe.sublayer_errors(preset, weights, trace).values()) < 1e-12
    where = {"rope_all_dims": "full", "no_attn_gate": "full", "conv_state_dropped": "linear",
             "delta_state_dropped": "linear", "ungated_shared_expert": "moe", "norm_without_offset": "moe"}  # fmt: skip
    assert set(where) == set(qwen3_5_moe.PLANTS)
    for plant, kind in where.items():
        errors = qwen3_5_moe.sublayer_errors(preset, weights, trace, plants=(plant,))
        assert errors[kind] > 0.09, (plant, errors)
