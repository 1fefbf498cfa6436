"""The float64 reference forward: chunked prefill equals one chunk, causality, routing, shapes, and the
building blocks against their textbook definitions."""

from types import SimpleNamespace

import numpy as np
import pytest

from impbench.reference import (
    LAYER_KEYS,
    causal_attention,
    random_weights,
    reference_forward,
    reference_hidden,
    rope,
    route,
)

TINY = SimpleNamespace(
    num_layers=2,
    hidden_size=64,
    num_attention_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=97,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    qk_norm=True,
    num_experts=8,
    experts_per_token=2,
    moe_intermediate_size=32,
    norm_topk_prob=True,
    tie_word_embeddings=False,
)
PROMPT = np.random.default_rng(7).integers(0, TINY.vocab_size, size=23)


@pytest.fixture(scope="module")
def weights():
    return random_weights(TINY, seed=3)


def test_shapes_and_keys(weights):
    p = TINY
    dim, inter = p.head_dim, p.moe_intermediate_size
    assert weights["embed"].shape == (p.vocab_size, p.hidden_size)
    assert weights["lm_head"].shape == (p.vocab_size, p.hidden_size)
    assert weights["final_norm"].shape == (p.hidden_size,)
    for i in range(p.num_layers):
        assert {k for k in weights if k.startswith(f"layers.{i}.")} == {f"layers.{i}.{n}" for n in LAYER_KEYS}
        assert weights[f"layers.{i}.wqkv"].shape == ((p.num_attention_heads + 2 * p.num_kv_heads) * dim, p.hidden_size)
        assert weights[f"layers.{i}.w13"].shape == (p.num_experts, 2 * inter, p.hidden_size)
        assert weights[f"layers.{i}.w2"].shape == (p.num_experts, p.hidden_size, inter)
    assert all(w.dtype == np.float64 for w in weights.values())
    logits = reference_forward(TINY, weights, PROMPT)
    assert logits.shape == (p.vocab_size,) and logits.dtype == np.float64 and np.isfinite(logits).all()
    assert reference_hidden(TINY, weights, PROMPT).shape == (PROMPT.size, p.hidden_size)


def test_tied_embeddings_share_the_array():
    tied = SimpleNamespace(**{**vars(TINY), "tie_word_embeddings": True})
    w = random_weights(tied, seed=0)
    assert w["lm_head"] is w["embed"]


@pytest.mark.parametrize("chunk", [1, 5, 8, 23, 64])  # 23 tokens: 5 and 8 leave a short last chunk
def test_chunked_prefill_equals_one_chunk(weights, chunk):
    whole = reference_hidden(TINY, weights, PROMPT)
    chunked = reference_hidden(TINY, weights, PROMPT, chunk_size=chunk)
    np.testing.assert_allclose(chunked, whole, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        reference_forward(TINY, weights, PROMPT, chunk_size=chunk), reference_forward(TINY, weights, PROMPT), rtol=1e-10
    )


def test_appending_tokens_leaves_earlier_hidden_states_unchanged(weights):
    full = reference_hidden(TINY, weights, PROMPT, chunk_size=8)
    prefix = reference_hidden(TINY, weights, PROMPT[:11], chunk_size=8)
    np.testing.assert_allclose(full[:11], prefix, rtol=1e-10, atol=1e-12)
    # and the last token does depend on what came before it
    changed = PROMPT.copy()
    changed[0] = (changed[0] + 1) % TINY.vocab_size
    assert not np.allclose(reference_hidden(TINY, weights, changed)[-1], full[-1])


def test_route_top_k_renormalised_and_ties_to_lower_id():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 8))
    ids, w = route(logits, 3, renormalize=True)
    np.testing.assert_allclose(w.sum(axis=-1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(ids, np.argsort(-logits, axis=-1)[:, :3])
    assert (np.diff(w, axis=-1) <= 0).all()  # best first
    _, raw = route(logits, 3, renormalize=False)
    assert (raw.sum(axis=-1) < 1).all()
    np.testing.assert_allclose(raw / raw.sum(axis=-1, keepdims=True), w, rtol=1e-12)
    tie_ids, tie_w = route(np.array([[0.0, 2.0, 1.0, 2.0, 2.0]]), 2, renormalize=True)
    np.testing.assert_array_equal(tie_ids, [[1, 3]])
    np.testing.assert_allclose(tie_w, [[0.5, 0.5]])


def test_rope_is_a_rotation_that_depends_only_on_relative_position():
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 1, 16)), rng.standard_normal((2, 1, 16))
    pos = np.array([3, 10])
    q_rot, k_rot = rope(q, pos, 10000.0), rope(k, pos, 10000.0)
    np.testing.assert_allclose(np.linalg.norm(q_rot, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(rope(q, np.zeros(2, dtype=int), 10000.0), q)
    shifted_q, shifted_k = rope(q, pos + 100, 10000.0), rope(k, pos + 100, 10000.0)
    np.testing.assert_allclose(q_rot[0] @ k_rot[1].T, shifted_q[0] @ shifted_k[1].T, rtol=1e-10)
    # NeoX layout: dimension i pairs with i + D/2 at frequency theta^(-2i/D)
    x = np.zeros((1, 1, 16))
    x[0, 0, 1] = 1.0
    angle = 5 * 10000.0 ** (-2.0 / 16)
    expected = np.zeros(16)
    expected[1], expected[9] = np.cos(angle), np.sin(angle)
    np.testing.assert_allclose(rope(x, np.array([5]), 10000.0)[0, 0], expected, atol=1e-15)


def test_causal_attention_matches_a_per_query_loop():
    rng = np.random.default_rng(2)
    start, tokens, heads, kv_heads, dim = 5, 4, 6, 2, 8
    q = rng.standard_normal((tokens, heads, dim))
    k, v = rng.standard_normal((2, start + tokens, kv_heads, dim))
    out = causal_attention(q, k, v, start, 0.3)
    for t in range(tokens):
        for h in range(heads):
            keys = k[: start + t + 1, h // (heads // kv_heads)]
            p = np.exp(0.3 * keys @ q[t, h])
            expected = (p / p.sum()) @ v[: start + t + 1, h // (heads // kv_heads)]
            np.testing.assert_allclose(out[t, h], expected, rtol=1e-12)


def test_a_planted_error_hides_in_the_logits_but_not_in_its_sublayer():
    """Why the engine is checked sublayer by sublayer (tests/test_engine.py): each error of PLANTS moves
    the last-token logits of a synthetic-weight model by about 2e-3 to 2e-2, inside FP16 noise, but
    the output of the sublayer where it is made by 0.09 to 2."""
    from impbench.presets import get_preset
    from impbench.reference import PLANTS, reference_trace, sublayer_errors

    preset = get_preset("tiny")
    weights = random_weights(preset, seed=5)
    ids = np.random.default_rng(1).integers(0, preset.vocab_size, 80)
    logits = reference_forward(preset, weights, ids, 32)
    trace = reference_trace(preset, weights, ids, 32)
    assert max(sublayer_errors(preset, weights, trace).values()) < 1e-12
    where = {"rope_interleaved": "attention", "qk_norm_after_rope": "attention", "swap_gate_up": "moe",
             "no_renormalize": "moe"}  # fmt: skip
    for plant in PLANTS:
        moved = reference_forward(preset, weights, ids, 32, plants=(plant,))
        assert np.linalg.norm(moved - logits) / np.linalg.norm(logits) < 2.5e-2, plant
        errors = sublayer_errors(preset, weights, trace, plants=(plant,))
        assert errors[where[plant]] > 0.09, (plant, errors)
