"""kernels.driver: a pre-packed launch writes exactly what the CuPy launch writes; programmatic
dependent launch is off inside no_pdl() and with IMPBENCH_PDL=0, and a chain of dependent PDL launches
reads each predecessor's finished output."""

import numpy as np
import pytest

from impbench.errors import InputError

from impbench.kernels import driver
from impbench.kernels.driver import packed


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


def test_pdl_is_off_inside_no_pdl_and_with_the_environment_switch(monkeypatch):
    monkeypatch.setattr(driver, "_device_has_pdl", lambda: True)  # as on an H100, without touching a GPU
    assert driver.pdl_enabled()
    with driver.no_pdl():
        assert not driver.pdl_enabled()
        with driver.no_pdl():
            assert not driver.pdl_enabled()
        assert not driver.pdl_enabled()
    assert driver.pdl_enabled()
    for off in ("0", "off", "false", "NO"):
        monkeypatch.setenv("IMPBENCH_PDL", off)
        assert not driver.pdl_enabled()
    monkeypatch.setenv("IMPBENCH_PDL", "flase")  # a typo is an input error, not a silent "on"
    with pytest.raises(InputError, match="IMPBENCH_PDL"):
        driver.pdl_enabled()


def test_the_dense_gemms_wait_for_their_predecessor_and_let_no_successor_start_early():
    """Every GEMM entry point (FP16 and NVFP4) begins with pdl_wait, no other kernel does: a GEMM that let its
    successor launch early cost Qwen3.6's graph arm 4% (docs/notes/engine.md)."""
    from impbench.kernels.modules import module_source

    for family in ("gemm_fp16", "nvfp4_gemm"):
        source = module_source(family)
        assert "pdl_wait();" in source and "pdl_entry();" not in source, family
    for family in ("ops", "routing", "attention", "gated_delta", "moe_nvfp4"):
        assert "pdl_wait();" not in module_source(family), family


@pytest.mark.gpu
def test_chain_of_programmatic_launches_reads_finished_outputs():
    # 40 dependent adds, each launched with programmatic serialization where the device has it: a kernel
    # that read its input before the previous one finished would lose increments
    import cupy

    from impbench.kernels import ops

    rng = np.random.default_rng()
    n = int(rng.integers(1 << 20, 1 << 21)) // 8 * 8
    start = (rng.integers(-64, 64, n) / 8).astype(np.float16).reshape(-1, 8)  # + 40 stays exact in FP16
    a = cupy.asarray(start)
    one = cupy.ones_like(a)
    b = cupy.full_like(a, cupy.nan)
    steps = [packed(ops.prepare(ops.add, *(a, one, b) if i % 2 == 0 else (b, one, a))) for i in range(40)]
    for step in steps:
        step()
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_array_equal(a.get(), start + np.float16(40))
