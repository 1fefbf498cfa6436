"""kernels._launch.packed: a pre-packed launch writes exactly what the CuPy launch writes."""

import numpy as np
import pytest

from impbench.kernels._launch import packed


def test_non_kernel_launchers_are_returned_unchanged():
    def noop():
        return None

    assert packed(noop) is noop


@pytest.mark.gpu
def test_packed_launch_matches_cupy_launch_bit_for_bit():
    import cupy

    from impbench.kernels import attention, ops

    rng = np.random.default_rng()
    tokens, hidden = int(rng.integers(3, 70)), 256
    x = cupy.asarray(rng.standard_normal((tokens, hidden)).astype(np.float16))
    weight = cupy.asarray((1 + 0.1 * rng.standard_normal(hidden)).astype(np.float16))
    expected, got = cupy.full((tokens, hidden), cupy.nan, cupy.float16), cupy.full((tokens, hidden), cupy.nan, cupy.float16)
    ops.rmsnorm(x, weight, 1e-6, expected)
    packed(ops.prepare(ops.rmsnorm, x, weight, 1e-6, got))()
    cupy.testing.assert_array_equal(expected, got)
    assert bool(cupy.isfinite(got).all())
    # a kernel with dynamic shared memory and a device-side position
    heads, kv_heads, dim, max_len = 4, 2, 128, 128
    q = cupy.asarray(rng.standard_normal((tokens, heads, dim)).astype(np.float16))
    k, v = (cupy.asarray(rng.standard_normal((max_len, kv_heads, dim)).astype(np.float16)) for _ in range(2))
    pos = cupy.asarray([int(rng.integers(0, max_len - tokens))], cupy.int32)
    a, b = (cupy.full(q.shape, cupy.nan, cupy.float16) for _ in range(2))
    attention.attention_prefill(q, k, v, pos, a, 0.088)
    packed(attention.prepare(q, k, v, pos, b, 0.088))()
    cupy.testing.assert_array_equal(a, b)
    assert bool(cupy.isfinite(b).all())
