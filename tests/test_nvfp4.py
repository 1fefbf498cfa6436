"""NVFP4 codec (CPU): e4m3 and e2m1 rounding, nibble order, exact round trip on representable values,
error bound on random data, scale range and saturation, single-block and empty tensors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impbench import nvfp4

FINITE_E4M3 = np.array([c for c in range(256) if c not in (0x7F, 0xFF)], dtype=np.uint8)


# ---- e4m3 -------------------------------------------------------------------------------------


def test_e4m3_table_landmarks():
    d = nvfp4.e4m3_decode
    assert d(0x7E) == 448.0 and d(0xFE) == -448.0
    assert d(0x01) == 2.0**-9  # smallest subnormal
    assert d(0x07) == 7 * 2.0**-9 and d(0x08) == 2.0**-6  # largest subnormal, smallest normal
    assert d(0x38) == 1.0 and d(0x00) == 0.0
    assert np.isnan(d(0x7F)) and np.isnan(d(0xFF))


def test_e4m3_round_trip_every_finite_code():
    values = nvfp4.e4m3_decode(FINITE_E4M3)
    codes = nvfp4.e4m3_encode(values)
    # -0 encodes as +0; every other finite code comes back as itself
    expected = np.where(FINITE_E4M3 == 0x80, 0, FINITE_E4M3)
    np.testing.assert_array_equal(codes, expected)


def test_e4m3_saturates_and_rounds_to_nearest_even():
    enc = nvfp4.e4m3_encode
    assert enc(1e6) == 0x7E and enc(464.0) == 0x7E and enc(-1e6) == 0xFE  # saturate, never NaN
    assert enc(2.0**-10) == 0x00  # tie between 0 and 2^-9 -> even code 0
    assert enc(3 * 2.0**-10) == 0x02  # tie between codes 1 and 2 -> 2
    assert enc(1.0625) == 0x38  # tie between 1.0 (0x38) and 1.125 (0x39) -> 0x38
    assert enc(1.1875) == 0x3A  # tie between 1.125 (0x39) and 1.25 (0x3A) -> 0x3A
    with pytest.raises(ValueError):
        enc(np.nan)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0.0, max_value=448.0, allow_nan=False, width=32))
def test_e4m3_encode_is_nearest(value):
    code = int(nvfp4.e4m3_encode(value))
    got = float(nvfp4.e4m3_decode(code))
    positives = nvfp4.e4m3_decode(np.arange(0x7F, dtype=np.uint8)).astype(np.float64)
    assert abs(got - value) <= np.abs(positives - value).min()


# ---- e2m1 and nibbles -------------------------------------------------------------------------


def test_e2m1_values_and_ties():
    grid = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=np.float32)
    np.testing.assert_array_equal(nvfp4.e2m1_encode(grid), np.arange(8))
    np.testing.assert_array_equal(nvfp4.e2m1_encode(-grid[1:]), np.arange(9, 16))
    ties = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=np.float32)
    np.testing.assert_array_equal(nvfp4.e2m1_decode(nvfp4.e2m1_encode(ties)), [0, 1, 1, 2, 2, 4, 4])
    assert nvfp4.e2m1_encode(100.0) == 7 and nvfp4.e2m1_encode(-100.0) == 15  # saturate at +-6
    assert nvfp4.e2m1_encode(-0.1) == 0  # rounds to zero: no negative zero code


def test_nibble_order_low_nibble_is_even_element():
    # ModelOpt: packed = (q[..., 1::2] << 4) | q[..., 0::2]
    codes = np.array([[1, 2, 15, 8]], dtype=np.uint8)  # 0.5, 1.0, -6.0, -0.0
    packed = nvfp4.pack(codes)
    np.testing.assert_array_equal(packed, [[0x21, 0x8F]])
    np.testing.assert_array_equal(nvfp4.unpack(packed), codes)
    # one 16-value block with scale 1.0 and scale2 1.0: the values come back in element order
    block = np.array([[0.5, 1.0, -6.0, 0.0] + [0.0] * 12], dtype=np.float32)
    packed, scale, scale2 = nvfp4.pack(nvfp4.e2m1_encode(block)), np.array([[0x38]], np.uint8), np.float32(1.0)
    np.testing.assert_array_equal(nvfp4.dequantize(packed, scale, scale2), block)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 15), min_size=2, max_size=64).filter(lambda v: len(v) % 2 == 0))
def test_pack_unpack_round_trip(codes):
    c = np.array(codes, dtype=np.uint8)
    np.testing.assert_array_equal(nvfp4.unpack(nvfp4.pack(c)), c)


# ---- tensors ----------------------------------------------------------------------------------


def _representable(rng, n, k, scale2_exp):
    """A tensor quantize must reproduce exactly: per block one +-6 code (so block amax = 6 * scale),
    block scales any finite positive e4m3, one block at scale 448 (so amax = 6 * 448 * scale2)."""
    blocks = k // 16
    codes = rng.integers(0, 16, size=(n, blocks, 16), dtype=np.uint8)
    codes[..., 0] = rng.choice([7, 15], size=(n, blocks))
    scale = rng.choice(np.arange(1, 0x7F, dtype=np.uint8), size=(n, blocks))
    scale.flat[rng.integers(scale.size)] = 0x7E
    scale2 = np.float32(2.0**scale2_exp)
    return nvfp4.dequantize(nvfp4.pack(codes.reshape(n, k)), scale, scale2), codes.reshape(n, k), scale, scale2


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), blocks=st.integers(1, 6), scale2_exp=st.integers(-20, 4), seed=st.integers(0, 2**32 - 1))
def test_exact_round_trip_on_representable_values(n, blocks, scale2_exp, seed):
    w, codes, scale, scale2 = _representable(np.random.default_rng(seed), n, 16 * blocks, scale2_exp)
    packed, scale_q, scale2_q = nvfp4.quantize(w)
    assert scale2_q == scale2
    np.testing.assert_array_equal(scale_q, scale)
    got = nvfp4.unpack(packed)
    np.testing.assert_array_equal(np.where(codes == 8, 0, codes), got)  # -0 comes back as +0
    np.testing.assert_array_equal(nvfp4.dequantize(packed, scale_q, scale2_q), w)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), blocks=st.integers(1, 8), log_std=st.floats(-12, 3), seed=st.integers(0, 2**32 - 1))
def test_error_bound_on_random_data(n, blocks, log_std, seed):
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((n, 16 * blocks)) * 2.0**log_std).astype(np.float32)
    w[rng.random(w.shape) < 0.05] *= 8  # outliers
    packed, scale, scale2 = nvfp4.quantize(w)
    deq = nvfp4.dequantize(packed, scale, scale2)
    block_amax = np.abs(w.reshape(n, blocks, 16)).max(axis=-1, keepdims=True)
    # <= one E2M1 half-step at the top (1 unit of scale) with the e4m3 scale rounded up to 1/16 down,
    # plus a subnormal-scale term for blocks far below the tensor's amax
    bound = block_amax * (17.0 / 96.0) + 2.0**-7 * scale2
    err = np.abs(deq - w).reshape(n, blocks, 16)
    assert (err <= bound * (1 + 1e-6)).all(), float((err / bound).max())
    assert np.linalg.norm(deq - w) <= 0.2 * np.linalg.norm(w)


def test_gaussian_relative_error_is_nvfp4_like():
    w = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32) * 0.02
    deq = nvfp4.dequantize(*nvfp4.quantize(w))
    rel = np.linalg.norm(deq - w) / np.linalg.norm(w)
    assert 0.05 < rel < 0.15, rel


def test_scale_range_and_saturation():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[0, :16] = 0.0  # an all-zero block gets scale 1.0
    w[1, 16:32] = 1e-9  # a tiny block is clamped to the smallest subnormal scale, 2^-9
    packed, scale, scale2 = nvfp4.quantize(w)
    values = nvfp4.e4m3_decode(scale)
    assert np.isfinite(values).all() and values.min() > 0 and values.max() <= 448.0
    assert values[0, 0] == 1.0 and values[1, 1] == 2.0**-9
    assert values.max() == 448.0  # the block holding the tensor's amax uses the top of the range
    assert scale2 == np.float32(np.abs(w).max() / (6 * 448))
    assert (nvfp4.unpack(packed)[0, :16] == 0).all()


def test_single_block_and_empty_tensors():
    one = np.linspace(-1, 1, 16, dtype=np.float32)[None]
    packed, scale, scale2 = nvfp4.quantize(one)
    assert packed.shape == (1, 8) and scale.shape == (1, 1)
    deq = nvfp4.dequantize(packed, scale, scale2)
    assert deq.shape == (1, 16) and deq[0, 0] == -1.0 and deq[0, -1] == 1.0
    for shape in [(0, 32), (4, 0)]:
        packed, scale, scale2 = nvfp4.quantize(np.zeros(shape, np.float32))
        assert packed.shape == (shape[0], shape[1] // 2) and scale.shape == (shape[0], shape[1] // 16)
        assert scale2 == 1.0
        assert nvfp4.dequantize(packed, scale, scale2).shape == shape
    zeros = nvfp4.quantize(np.zeros((2, 32), np.float32))
    assert zeros[2] == 1.0 and (nvfp4.dequantize(*zeros) == 0).all()


def test_bad_shapes_are_value_errors():
    with pytest.raises(ValueError, match="multiple of 16"):
        nvfp4.quantize(np.zeros((2, 24), np.float32))
    with pytest.raises(ValueError, match="does not match"):
        nvfp4.dequantize(np.zeros((2, 16), np.uint8), np.zeros((2, 3), np.uint8), 1.0)
    with pytest.raises(ValueError, match="finite"):
        nvfp4.quantize(np.full((1, 16), np.inf, np.float32))


def test_stacked_experts_dequantize_with_per_expert_scale2():
    rng = np.random.default_rng(2)
    parts = [nvfp4.quantize(rng.standard_normal((4, 32)).astype(np.float32) * (e + 1)) for e in range(3)]
    stacked = nvfp4.dequantize(np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.array([p[2] for p in parts]))
    for e, part in enumerate(parts):
        np.testing.assert_array_equal(stacked[e], nvfp4.dequantize(*part))


def test_expert_scale2_matches_generator_contract():
    s2 = nvfp4.expert_scale2(128, seed=3, std=0.02)
    assert s2.shape == (128,) and s2.dtype == np.float32
    sigma = s2 * 448.0
    assert (sigma > 0.017).all() and (sigma < 0.023).all()
    np.testing.assert_array_equal(s2, nvfp4.expert_scale2(128, seed=3, std=0.02))
