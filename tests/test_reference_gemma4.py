"""The float64 reference of the Gemma-4 MoE forward: a chunked prefill equals one chunk with the sliding
window crossing chunk boundaries; the window, the proportional RoPE and K = V behave as specified; the
sublayer-by-sublayer comparison recomputes its own trace exactly and sees every planted error."""

import numpy as np
import pytest

from impbench.presets import get_preset
from impbench.reference import gemma4
from impbench.reference.blocks import causal_attention, rope


@pytest.fixture(scope="module")
def tiny():
    preset = get_preset("tiny-gemma4")
    return preset, gemma4.random_weights(preset, seed=1)


PROMPT = np.random.default_rng(2).integers(0, 512, 90)  # tiny-gemma4's vocabulary is 512


@pytest.mark.parametrize("chunk", [16, 32, 48])
def test_a_chunked_prefill_equals_one_chunk_with_the_window_across_chunks(tiny, chunk):
    preset, weights = tiny
    assert preset.sliding_window < 90 and chunk < 90  # the window reaches back across chunk boundaries
    one = gemma4.reference_hidden(preset, weights, PROMPT, 0)
    assert np.isfinite(one).all() and np.abs(one).max() > 0.1
    np.testing.assert_allclose(gemma4.reference_hidden(preset, weights, PROMPT, chunk), one, atol=1e-10, rtol=1e-9)
    logits = gemma4.reference_forward(preset, weights, PROMPT, chunk)
    assert np.isfinite(logits).all() and np.abs(logits).max() <= preset.final_logit_softcapping


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


@pytest.mark.parametrize("chunk", [0, 32])
def test_the_trace_recomputes_to_zero_error(tiny, chunk):
    preset, weights = tiny
    trace = gemma4.reference_trace(preset, weights, PROMPT, chunk)
    assert [r["x"].shape[0] for r in trace if r["layer"] == 0] == ([32, 32, 26] if chunk else [90])
    assert [r["layer"] for r in trace] == list(range(preset.num_layers)) * (3 if chunk else 1)
    errors = gemma4.sublayer_errors(preset, weights, trace)
    assert set(errors) == {"sliding", "full", "router", "moe", "residual"}
    assert max(errors.values()) < 1e-12, errors


def test_a_planted_error_hides_in_the_logits_but_not_in_its_sublayer(tiny):
    """Each error of PLANTS moves the last-token logits by under 2.5e-2 (the embedding times sqrt(H) dominates
    the residual stream, as in the full-size model) but its own sublayer, in three chunks of which two reach
    back across a boundary through the window and the KV cache, by more than 0.09, and no other kind."""
    preset, weights = tiny
    assert set(gemma4.PLANTS.values()) == {"sliding", "full", "router", "moe"}
    logits = gemma4.reference_forward(preset, weights, PROMPT, 32)
    trace = gemma4.reference_trace(preset, weights, PROMPT, 32)
    for plant, kind in gemma4.PLANTS.items():
        moved = gemma4.reference_forward(preset, weights, PROMPT, 32, plants=(plant,))
        assert np.linalg.norm(moved - logits) / np.linalg.norm(logits) < 2.5e-2, plant
        errors = gemma4.sublayer_errors(preset, weights, trace, plants=(plant,))
        assert errors[kind] > 0.09, (plant, errors)
        assert all(v < 1e-12 for k, v in errors.items() if k != kind), (plant, errors)


def test_the_residual_check_sees_a_missing_layer_scalar(tiny):
    """The adds and the per-layer scalar sit between a trace's records, outside every sublayer: a trace made
    without the scalar is right sublayer by sublayer (each recomputed from its own inputs) and wrong only
    in "residual"."""
    preset, weights = tiny
    unscaled = {name: np.array(1.0) if name.endswith(".layer_scalar") else w for name, w in weights.items()}
    errors = gemma4.sublayer_errors(preset, weights, gemma4.reference_trace(preset, unscaled, PROMPT, 32))
    assert errors["residual"] > 0.09 and max(v for k, v in errors.items() if k != "residual") < 1e-12, errors
