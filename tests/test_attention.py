"""Causal GQA flash attention (kernels_cu/attention.cu) against the float64 reference.

Error bound: inputs are FP16 and the reference sees exactly those FP16 values in float64, so the
only errors are the kernel's own roundings: P rounded to FP16 before P.V and the output rounded to
FP16, each at most half an ulp (2^-11 ~ 4.9e-4 relative), plus FP32 accumulation (~1e-6). Measured
as ||out - ref|| / ||ref|| that is a few 1e-4; the bound 2e-3 leaves a 4x margin over one FP16 ulp
and still fails on any real bug (a missed key, a wrong mask or head changes the result by > 1e-2).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from impbench.kernels.attention import (
    HEAD_DIMS,
    VARIANTS,
    attention_prefill,
    causal_flops,
    heads_per_block,
    prepare_variant,
    smem_bytes,
)
from impbench.reference import causal_attention

REL_ERR = 2e-3


def _inputs(tokens, heads, kv_heads, dim, pos, max_len, seed):
    """FP16 q and a cache whose rows 0 .. pos+T-1 are random and every later row is NaN."""
    rng = np.random.default_rng(seed)
    q = (2.0 * rng.standard_normal((tokens, heads, dim))).astype(np.float16)  # scores ~ N(0, 4): peaked softmax
    k = np.full((max_len, kv_heads, dim), np.nan, dtype=np.float16)
    v = np.full_like(k, np.nan)
    k[: pos + tokens] = rng.standard_normal((pos + tokens, kv_heads, dim))
    v[: pos + tokens] = rng.standard_normal((pos + tokens, kv_heads, dim))
    return q, k, v


def _reference(q, k, v, pos):
    end = pos + q.shape[0]
    f64 = np.float64
    return causal_attention(q.astype(f64), k[:end].astype(f64), v[:end].astype(f64), pos, 1.0 / math.sqrt(q.shape[-1]))


def _check(out, ref):
    assert np.isfinite(out).all(), f"{np.count_nonzero(~np.isfinite(out))} non-finite outputs (unwritten or leaked NaN)"
    rel_err = np.linalg.norm(out.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert rel_err <= REL_ERR, rel_err


def _require(variant):
    """Every variant runs on a Hopper device (the family is built for sm_90a there); elsewhere only mma."""
    from impbench.kernels.attention import default_variant

    if variant != "mma" and default_variant() != "wgmma":
        pytest.skip("the wgmma kernels need a compute-capability-9.0 device")


def _run(variant, q, k, v, pos, max_len=None):
    """Launch `variant` on fresh device copies, output poisoned with NaN; return it on the host."""
    import cupy

    out = cupy.full(q.shape, cupy.nan, dtype=cupy.float16)
    pos_d = cupy.array([pos], dtype=cupy.int32)
    scale = 1.0 / math.sqrt(q.shape[-1])
    prepare_variant(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), pos_d, out, scale, variant)()
    return out.get()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "tokens,heads,kv_heads,dim,pos",
    [
        (77, 8, 2, 64, 0),  # T not a multiple of the query tile
        (77, 8, 2, 128, 0),
        (77, 8, 2, 128, 150),  # a prefix, not a multiple of the key tile
        (64, 4, 4, 64, 64),  # MHA, exact tiles
        (1, 8, 1, 128, 300),  # one query, MQA
        (200, 16, 2, 128, 333),
        (77, 4, 2, 256, 50),
        (130, 8, 8, 64, 1000),
        (45, 9, 3, 128, 70),  # group of 3: 21 queries x 3 heads per wgmma block, 1 row unused
    ],
)
def test_matches_float64_reference(variant, tokens, heads, kv_heads, dim, pos):
    _require(variant)
    q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, max_len=pos + tokens + 37, seed=tokens + pos + dim)
    _check(_run(variant, q, k, v, pos), _reference(q, k, v, pos))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pos", [0, 512, 1536])
def test_engine_shape_matches_float64_reference(variant, pos):
    """Qwen3-Coder's chunk: T 512, 32 query heads over 4 KV heads, D 128, at the engine's prefixes."""
    _require(variant)
    q, k, v = _inputs(512, 32, 4, 128, pos, max_len=2048 + 64, seed=pos)
    _check(_run(variant, q, k, v, pos), _reference(q, k, v, pos))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_match_float64_reference(variant, seed):
    """Random T (ragged), prefix, GQA layout, head size and cache slack, fresh inputs per seed."""
    _require(variant)
    rng = np.random.default_rng(7000 + seed)
    heads, kv_heads = [(32, 4), (8, 8), (12, 4), (6, 2), (16, 1), (10, 5)][int(rng.integers(6))]
    dim = HEAD_DIMS[seed % len(HEAD_DIMS)]
    tokens, pos = int(rng.integers(1, 320)), int(rng.integers(0, 700))
    q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, max_len=pos + tokens + int(rng.integers(0, 70)), seed=seed)
    _check(_run(variant, q, k, v, pos), _reference(q, k, v, pos))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens,heads,kv_heads", [(96, 8, 2), (512, 32, 4)])
def test_one_global_mode_graph_serves_every_position(variant, tokens, heads, kv_heads):
    """Captured once in global mode, then replayed after only the device pos changes: each replay
    gives that pos's result."""
    import cupy
    from cupy.cuda import runtime

    from impbench.kernels import load_module

    _require(variant)
    dim, max_len = 128, 1024 + tokens
    load_module("attention")  # compile outside the capture, as the engine does
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        q_d = cupy.empty((tokens, heads, dim), dtype=cupy.float16)
        k_d = cupy.empty((max_len, kv_heads, dim), dtype=cupy.float16)
        v_d, out = cupy.empty_like(k_d), cupy.empty_like(q_d)
        pos_d = cupy.zeros(1, dtype=cupy.int32)
        launch = prepare_variant(q_d, k_d, v_d, pos_d, out, 1.0 / math.sqrt(dim), variant)
        stream.synchronize()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        launch()
        graph = stream.end_capture()
        for pos in (0, 200, 37, 512):
            q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, max_len, seed=pos)
            q_d.set(q, stream=stream)
            k_d.set(k, stream=stream)
            v_d.set(v, stream=stream)
            pos_d.fill(pos)
            out.fill(cupy.nan)
            graph.launch(stream=stream)
            stream.synchronize()
            _check(out.get(), _reference(q, k, v, pos))


FIRST_LAUNCH_IN_CAPTURE = """
import cupy
from cupy.cuda import runtime
from impbench.kernels import load_module
from impbench.kernels.attention import attention_prefill
load_module("attention")
q = cupy.ones((70, 8, 128), dtype=cupy.float16)
kv = cupy.ones((100, 2, 128), dtype=cupy.float16)
out = cupy.full(q.shape, cupy.nan, dtype=cupy.float16)
pos = cupy.array([30], dtype=cupy.int32)
stream = cupy.cuda.Stream(non_blocking=True)
with stream:
    stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
    attention_prefill(q, kv, kv, pos, out, 0.1)
    graph = stream.end_capture()
    graph.launch(stream=stream)
    stream.synchronize()
assert bool((out == 1).all()), out
"""


@pytest.mark.gpu
def test_first_launch_inside_a_global_capture():
    """In a fresh process the kernel's first fetch (and its shared-memory opt-in) happens inside a
    global-mode capture, as in an engine whose first prefill is a graph capture."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": root}
    result = subprocess.run([sys.executable, "-c", FIRST_LAUNCH_IN_CAPTURE], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]


def test_rejects_host_arrays():
    q = np.zeros((4, 2, 64), dtype=np.float16)
    with pytest.raises(ValueError, match="q must be a cupy device array"):
        attention_prefill(q, q, q, np.zeros(1, np.int32), q, 0.125)


@pytest.mark.gpu
def test_rejects_bad_shapes_naming_them():
    import cupy

    def call(q_shape=(4, 4, 64), kv_shape=(16, 2, 64), pos_dtype=cupy.int32, out_shape=None):
        q = cupy.zeros(q_shape, dtype=cupy.float16)
        kv = cupy.zeros(kv_shape, dtype=cupy.float16)
        out = cupy.zeros(out_shape or q_shape, dtype=cupy.float16)
        attention_prefill(q, kv, kv, cupy.zeros(1, dtype=pos_dtype), out, 0.125)

    with pytest.raises(ValueError, match="head_dim must be one of"):
        call(q_shape=(4, 4, 96), kv_shape=(16, 2, 96))
    with pytest.raises(ValueError, match="multiple of k_cache heads"):
        call(kv_shape=(16, 3, 64))
    with pytest.raises(ValueError, match="k_cache head_dim"):
        call(kv_shape=(16, 2, 128))
    with pytest.raises(ValueError, match="pos must have dtype int32"):
        call(pos_dtype=cupy.int64)
    with pytest.raises(ValueError, match="out must have shape"):
        call(out_shape=(4, 4, 128))
    with pytest.raises(ValueError, match="fewer than the chunk"):
        call(q_shape=(32, 4, 64))


def test_causal_flops():
    # T = 2 at pos 3: contexts 4 and 5
    assert causal_flops(2, 3, heads=1, head_dim=1) == 4 * (4 + 5)
    assert causal_flops(512, 1536, 32, 128) == 4 * 512 * (1536 + 256.5) * 128 * 32


def test_wgmma_block_geometry():
    # all heads of a GQA group in one block where the group fits in its rows
    assert heads_per_block(32, 4) == 8  # Qwen3-Coder: 8 heads x 8 queries in 64 rows
    assert heads_per_block(32, 4, rows=128) == 8  # wgmma2: 8 heads x 16 queries
    assert heads_per_block(8, 8) == 1  # MHA: 64 queries of one head
    assert heads_per_block(12, 4) == 3  # 21 queries x 3 heads, one row unused
    assert heads_per_block(256, 1) == 64
    assert heads_per_block(256, 1, rows=128) == 128
    assert heads_per_block(5 * 67, 5) == 1  # prime group larger than the block: one head per block
    assert heads_per_block(5 * 67, 5, rows=128) == 67
    for dim in HEAD_DIMS:
        for variant in VARIANTS:
            assert smem_bytes(dim, variant) <= 227 * 1024, (dim, variant)
    # wgmma, D 128: Q 64 x 128 + 3 stages of 64-key K and V tiles + alignment; two blocks (each with
    # 1 KiB reserved by the driver) fill the SM's 228 KiB
    assert smem_bytes(128, "wgmma") == 64 * 256 + 3 * 2 * 64 * 256 + 1024
    assert 2 * (smem_bytes(128, "wgmma") + 1024) <= 228 * 1024
    with pytest.raises(ValueError, match="variant must be one of"):
        smem_bytes(128, "tma")
