"""The float64 reference of the Gemma-4 MoE forward: a chunked prefill equals one chunk with the sliding
window crossing chunk boundaries; the window, the proportional RoPE and K = V behave as specified."""

import numpy as np
import pytest

from impbench.presets import get_preset
from impbench.reference import gemma4
from impbench.reference.blocks import causal_attention, rope


@pytest.fixture(scope="module")
def tiny():
    preset = get_preset("tiny-gemma4")
    return preset, gemma4.random_weights(preset, seed=1)


@pytest.mark.parametrize("chunk", [16, 32, 48])
def test_a_chunked_prefill_equals_one_chunk_with_the_window_across_chunks(tiny, chunk):
    preset, weights = tiny
    assert preset.sliding_window < 90 and chunk < 90  # the window reaches back across chunk boundaries
    ids = np.random.default_rng(2).integers(0, preset.vocab_size, 90)
    one = gemma4.reference_hidden(preset, weights, ids, 0)
    assert np.isfinite(one).all() and np.abs(one).max() > 0.1
    np.testing.assert_allclose(gemma4.reference_hidden(preset, weights, ids, chunk), one, atol=1e-10, rtol=1e-9)
    logits = gemma4.reference_forward(preset, weights, ids, chunk)
    assert np.abs(logits).max() < preset.final_logit_softcapping


def test_the_sliding_window_hides_keys_that_fell_out_of_it():
    rng = np.random.default_rng(3)
    q, k, v = rng.standard_normal((10, 2, 8)), rng.standard_normal((40, 1, 8)), rng.standard_normal((40, 1, 8))
    out = causal_attention(q, k, v, 30, 1.0, window=5)
    k2, v2 = k.copy(), v.copy()
    k2[:26], v2[:26] = 0.0, 9.0  # positions the window of query 30 (26..30) and later never reach back to
    np.testing.assert_array_equal(causal_attention(q, k2, v2, 30, 1.0, window=5), out)
    k2[26] = 1.0
    assert not np.array_equal(causal_attention(q, k2, v2, 30, 1.0, window=5)[0], out[0])


def test_proportional_rope_rotates_only_its_first_frequencies():
    x = np.random.default_rng(4).standard_normal((5, 2, 16))
    positions = np.arange(100, 105)
    out = rope(x, positions, 1e6, rotated_pairs=2)
    np.testing.assert_array_equal(out[..., 2:8], x[..., 2:8])  # pairs 2..7 have frequency 0
    np.testing.assert_array_equal(out[..., 10:], x[..., 10:])
    assert not np.allclose(out[..., :2], x[..., :2])
    np.testing.assert_allclose(rope(x, positions, 1e6), rope(x, positions, 1e6, rotated_pairs=8))


def test_full_layers_take_v_from_the_raw_k_projection(tiny):
    preset, weights = tiny
    assert not preset.has_v_proj("full") and preset.has_v_proj("sliding")
    full = preset.layer_types.index("full")
    assert f"layers.{full}.v_proj" not in weights and "layers.0.v_proj" in weights
    assert preset.softmax_scale("full") == 1.0 and preset.attention_dims("full") == (4, 1, 128)
