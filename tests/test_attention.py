"""Causal GQA flash attention (kernels_cu/attention.cu) against the float64 reference.

Error bound: inputs are FP16 and the reference sees exactly those FP16 values in float64, so the
only errors are the kernel's own roundings: P rounded to FP16 before P.V and the output rounded to
FP16, each at most half an ulp (2^-11 ~ 4.9e-4 relative), plus FP32 accumulation (~1e-6; also the
sum of the two halves' partial scores at head dim 512). The Hopper kernels' probabilities reach 2^8
(a row's reference max lags its true max by up to 8 in log2 units), so a row's largest P is rounded
too, still within that half ulp. Measured as ||out - ref|| / ||ref|| that is a few 1e-4; the bound
2e-3 leaves a 4x margin over one FP16 ulp and still fails on any real bug (a missed key, a wrong
mask, window or head changes the result by > 1e-2).

Poison: outputs start as NaN, cache rows past the chunk are NaN, and with a sliding window so are
the rows of every key tile wholly below the window of the chunk's first query: a kernel that loads
such a tile instead of skipping it multiplies NaN V rows by zero probabilities and fails.
"""

import json
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
    supports,
    tiling,
)
from impbench.reference import causal_attention

REL_ERR = 2e-3
SKIP_TILE = 64  # the largest key tile of any kernel: rows below a multiple of it under the window are never loaded


def _scale(dim, kind="rsqrt"):
    """The softmax scale: 1 / sqrt(D) (Qwen) or 1.0 (Gemma-4)."""
    return 1.0 if kind == "one" else 1.0 / math.sqrt(dim)


def _inputs(tokens, heads, kv_heads, dim, pos, max_len, seed, scale=None, window=0):
    """FP16 q and a cache whose rows 0 .. pos+T-1 are random and every later row is NaN; with a window,
    the rows of key tiles wholly below the first query's window are NaN too. q is drawn so that the
    scores q.k * scale are ~ N(0, 4) (a peaked softmax) at either scale."""
    rng = np.random.default_rng(seed)
    scale = _scale(dim) if scale is None else scale
    q = (2.0 / (scale * math.sqrt(dim)) * rng.standard_normal((tokens, heads, dim))).astype(np.float16)
    k = np.full((max_len, kv_heads, dim), np.nan, dtype=np.float16)
    v = np.full_like(k, np.nan)
    k[: pos + tokens] = rng.standard_normal((pos + tokens, kv_heads, dim))
    v[: pos + tokens] = rng.standard_normal((pos + tokens, kv_heads, dim))
    if window:
        skipped = max(0, pos - window + 1) // SKIP_TILE * SKIP_TILE
        k[:skipped] = np.nan
        v[:skipped] = np.nan
    return q, k, v


def _reference(q, k, v, pos, scale=None, window=0):
    """float64 reference; rows it never sees (poisoned, outside every window) read as 0."""
    end = pos + q.shape[0]
    f64 = np.float64
    scale = _scale(q.shape[-1]) if scale is None else scale
    k64, v64 = np.nan_to_num(k[:end].astype(f64)), np.nan_to_num(v[:end].astype(f64))
    return causal_attention(q.astype(f64), k64, v64, pos, scale, window or None)


def _check(out, ref):
    """Within REL_ERR overall; on failure, say where: non-finite outputs, the worst (token, head) row."""
    bad = ~np.isfinite(out)
    if bad.any():
        t, h, _ = np.argwhere(bad)[0]
        rows = np.unique(np.argwhere(bad)[:, :2], axis=0)
        raise AssertionError(f"{bad.sum()} non-finite outputs (unwritten or leaked NaN) in {len(rows)} (token, head) "
                             f"rows of {out.shape[0]} x {out.shape[1]}; first at token {t}, head {h}")  # fmt: skip
    diff = out.astype(np.float64) - ref
    rel_err = np.linalg.norm(diff) / np.linalg.norm(ref)
    row_err = np.linalg.norm(diff, axis=-1) / np.maximum(np.linalg.norm(ref, axis=-1), 1e-30)
    t, h = np.unravel_index(np.argmax(row_err), row_err.shape)
    assert rel_err <= REL_ERR, (f"rel-err {rel_err:.3g} > {REL_ERR}; worst row token {t}, head {h}: rel-err "
                                f"{row_err[t, h]:.3g}, max |diff| {np.abs(diff).max():.3g}; "
                                f"{np.count_nonzero(row_err > REL_ERR)} rows over the bound")  # fmt: skip


def _require(variant, dim=128):
    """Every variant runs on a Hopper device (the family is built for sm_90a there); elsewhere only mma.
    A candidate variant may cover only some head dims."""
    from impbench.kernels.attention import default_variant

    if not supports(dim, variant):
        pytest.skip(f"{variant} has no head_dim {dim} kernel")
    if variant != "mma" and default_variant() != "wgmma":
        pytest.skip("the wgmma kernels need a compute-capability-9.0 device")


def _run(variant, q, k, v, pos, scale=None, window=0):
    """Launch `variant` on fresh device copies, output poisoned with NaN; return it on the host."""
    import cupy

    out = cupy.full(q.shape, cupy.nan, dtype=cupy.float16)
    pos_d = cupy.array([pos], dtype=cupy.int32)
    scale = _scale(q.shape[-1]) if scale is None else scale
    prepare_variant(cupy.asarray(q), cupy.asarray(k), cupy.asarray(v), pos_d, out, scale, variant, window)()
    return out.get()


def _case(variant, tokens, heads, kv_heads, dim, pos, window=0, scale_kind="rsqrt", slack=37, seed=None):
    """Fresh inputs, the kernel and the reference for one shape; asserts within REL_ERR."""
    _require(variant, dim)
    scale = _scale(dim, scale_kind)
    seed = tokens + pos + dim + window if seed is None else seed
    q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, pos + tokens + slack, seed, scale, window)
    _check(_run(variant, q, k, v, pos, scale, window), _reference(q, k, v, pos, scale, window))


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
    _case(variant, tokens, heads, kv_heads, dim, pos)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "tokens,heads,kv_heads,dim,pos,window,scale_kind",
    [
        (300, 16, 8, 256, 0, 100, "one"),  # Gemma-4 sliding heads (group 2), window < prompt, scale 1.0
        (300, 16, 2, 256, 0, 64, "rsqrt"),  # group 8, window of exactly one 64-key tile
        (200, 16, 8, 256, 150, 100, "one"),  # window crosses the chunk boundary into the cached prefix
        (77, 16, 8, 256, 1500, 1024, "one"),  # Gemma-4's window 1024, prefix 1500: first 7 tiles skipped
        (130, 16, 2, 256, 700, 200, "rsqrt"),  # prefix longer than the window: early tiles skipped
        (96, 4, 2, 256, 40, 1, "one"),  # window 1: each query sees only itself
        (150, 32, 4, 128, 300, 200, "rsqrt"),  # D 128 (Q in registers, 64-key tiles, 8 heads a block)
        (130, 8, 8, 64, 500, 70, "one"),  # D 64, MHA
        (100, 16, 2, 512, 120, 90, "one"),  # D 512 takes a window too
        (45, 9, 3, 256, 70, 33, "rsqrt"),  # group 3: a row of the wgmma block unused
    ],
)
def test_sliding_window_matches_float64_reference(variant, tokens, heads, kv_heads, dim, pos, window, scale_kind):
    """Key j visible to query i iff i - window < j <= i; tiles wholly below the window never loaded."""
    _case(variant, tokens, heads, kv_heads, dim, pos, window, scale_kind)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(
    "tokens,heads,kv_heads,pos,scale_kind",
    [
        (200, 16, 2, 0, "one"),  # Gemma-4 full layers: 16 heads over 2 KV heads (group 8), scale 1.0
        (130, 16, 8, 0, "rsqrt"),  # group 2
        (150, 16, 2, 333, "rsqrt"),  # a prefix in the cache
        (77, 16, 8, 1000, "one"),
        (1, 16, 2, 50, "one"),  # one query
        (64, 12, 4, 64, "one"),  # group 3: 21 queries x 3 heads per wgmma block, one row unused
        (33, 2, 2, 17, "rsqrt"),  # MHA, ragged
    ],
)
def test_head_dim_512_matches_float64_reference(variant, tokens, heads, kv_heads, pos, scale_kind):
    """Head dim 512: two warpgroups (wgmma) or two warps (mma) split each row's output columns."""
    _case(variant, tokens, heads, kv_heads, 512, pos, scale_kind=scale_kind)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("kind,pos", [("sliding", 0), ("sliding", 512), ("sliding", 1536), ("full", 0), ("full", 512)])
def test_gemma4_shapes_match_float64_reference(variant, kind, pos):
    """Gemma-4's chunk of 512: sliding layers (16 / 8 heads, D 256, window 1024), full layers (16 / 2
    heads, D 512), scale 1.0, at prefixes where the window is whole, crosses the chunk and skips tiles."""
    heads, kv_heads, dim, window = (16, 8, 256, 1024) if kind == "sliding" else (16, 2, 512, 0)
    _case(variant, 512, heads, kv_heads, dim, pos, window, "one", slack=64)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dim,heads,kv_heads", [(256, 16, 8), (512, 16, 2)])
@pytest.mark.parametrize("tokens,pos", [(1, 0), (1, 32), (2, 63), (33, 31), (65, 64), (130, 97)])
def test_key_tile_counts_match_float64_reference(variant, dim, heads, kv_heads, tokens, pos):
    """Blocks that sweep 1, 2, 3 ... key tiles of 32 or 64, ending inside a tile or on its edge: each
    parity of the two-slot K/V rings (wgmma at D 256 and 512) ends the sweep, and the last, partial
    tile reads zeros, not the NaN rows past the chunk."""
    _case(variant, tokens, heads, kv_heads, dim, pos, scale_kind="one", slack=70)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dim", HEAD_DIMS)
@pytest.mark.parametrize("step,window", [(0.05, 0), (0.5, 0), (0.5, 150)])
def test_rising_scores_move_the_reference_max(variant, dim, step, window):
    """Scores that rise along the keys (by `step` a key, scale 1.0): each tile's row max exceeds the
    last, by less than the kernels' slack of 2^8 on some tiles (probabilities grow past 1 before the
    reference moves) and by more on others (O and l rescaled, the warp's rescale not skipped)."""
    _require(variant, dim)
    tokens, heads, kv_heads, pos = 96, 4, 2, 300
    q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, pos + tokens + 5, seed=dim + int(100 * step), scale=1.0,
                      window=window)  # fmt: skip
    q[:, :, 0] = 1.0  # score of key j = q . k_random + step * j
    k[: pos + tokens, :, 0] = (step * np.arange(pos + tokens))[:, None]
    _check(_run(variant, q, k, v, pos, 1.0, window), _reference(q, k, v, pos, 1.0, window))


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("pos", [0, 512, 1536])
def test_engine_shape_matches_float64_reference(variant, pos):
    """Qwen3-Coder's chunk: T 512, 32 query heads over 4 KV heads, D 128, at the engine's prefixes."""
    _case(variant, 512, 32, 4, 128, pos, slack=2048 + 64 - 512 - pos, seed=pos)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("seed", range(8))
def test_random_shapes_match_float64_reference(variant, seed):
    """Random T (ragged), prefix, GQA layout, head size, cache slack, scale and window (none half the
    time), fresh inputs per seed."""
    rng = np.random.default_rng(7000 + seed)
    heads, kv_heads = [(32, 4), (8, 8), (12, 4), (6, 2), (16, 1), (10, 5)][int(rng.integers(6))]
    dim = HEAD_DIMS[seed % len(HEAD_DIMS)]
    tokens, pos = int(rng.integers(1, 320)), int(rng.integers(0, 700))
    window = int(rng.integers(1, 400)) if rng.random() < 0.5 else 0
    scale_kind = "one" if rng.random() < 0.5 else "rsqrt"
    _case(variant, tokens, heads, kv_heads, dim, pos, window, scale_kind, slack=int(rng.integers(0, 70)), seed=seed)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tokens,heads,kv_heads,dim,window,scale_kind",
                         [(96, 8, 2, 128, 0, "rsqrt"), (512, 32, 4, 128, 0, "rsqrt"),
                          (256, 16, 8, 256, 300, "one"), (128, 16, 2, 512, 0, "one")])  # fmt: skip
def test_one_global_mode_graph_serves_every_position(variant, tokens, heads, kv_heads, dim, window, scale_kind):
    """Captured once in global mode, then replayed after only the device pos changes: each replay
    gives that pos's result (with a window: the skipped tiles move with pos)."""
    import cupy
    from cupy.cuda import runtime

    from impbench.kernels import load_module

    _require(variant, dim)
    max_len, scale = 1024 + tokens, _scale(dim, scale_kind)
    load_module("attention")  # compile outside the capture, as the engine does
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        q_d = cupy.empty((tokens, heads, dim), dtype=cupy.float16)
        k_d = cupy.empty((max_len, kv_heads, dim), dtype=cupy.float16)
        v_d, out = cupy.empty_like(k_d), cupy.empty_like(q_d)
        pos_d = cupy.zeros(1, dtype=cupy.int32)
        launch = prepare_variant(q_d, k_d, v_d, pos_d, out, scale, variant, window)
        stream.synchronize()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        launch()
        graph = stream.end_capture()
        for pos in (0, 200, 37, 512, 1024):
            q, k, v = _inputs(tokens, heads, kv_heads, dim, pos, max_len, seed=pos, scale=scale, window=window)
            q_d.set(q, stream=stream)
            k_d.set(k, stream=stream)
            v_d.set(v, stream=stream)
            pos_d.fill(pos)
            out.fill(cupy.nan)
            graph.launch(stream=stream)
            stream.synchronize()
            _check(out.get(), _reference(q, k, v, pos, scale, window))


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
    result = subprocess.run([sys.executable, "-c", FIRST_LAUNCH_IN_CAPTURE], capture_output=True, text=True, env=env,
                            check=False)
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
    q, kv = cupy.zeros((4, 4, 128), dtype=cupy.float16), cupy.zeros((16, 2, 128), dtype=cupy.float16)
    pos = cupy.zeros(1, dtype=cupy.int32)
    for window in (-1, True, 2.5):
        with pytest.raises(ValueError, match="window must be a whole number"):
            prepare_variant(q, kv, kv, pos, q.copy(), 1.0, "mma", window)


def test_causal_flops():
    # T = 2 at pos 3: contexts 4 and 5
    assert causal_flops(2, 3, heads=1, head_dim=1) == 4 * (4 + 5)
    assert causal_flops(512, 1536, 32, 128) == 4 * 512 * (1536 + 256.5) * 128 * 32
    # window 4, T = 3 at pos 2: queries 2, 3, 4 see 3, 4, 4 keys
    assert causal_flops(3, 2, heads=1, head_dim=1, window=4) == 4 * (3 + 4 + 4)
    assert causal_flops(512, 1536, 16, 256, window=1024) == 4 * 512 * 1024 * 256 * 16
    assert causal_flops(100, 0, 2, 64, window=1000) == causal_flops(100, 0, 2, 64)


# A candidate variant with a kernel at head dim 256 only, as the Gemma-4 candidates were.
D256_ONLY = {256: VARIANTS["wgmma"][256]}


def test_wgmma_block_geometry(monkeypatch):
    # all heads of a GQA group in one block where the group fits in its rows
    assert heads_per_block(32, 4) == 8  # Qwen3-Coder: 8 heads x 8 queries in 64 rows
    assert heads_per_block(32, 4, rows=128) == 8  # a 128-row block: 8 heads x 16 queries
    assert heads_per_block(16, 8, rows=128) == 2  # Gemma-4 sliding (wgmma, D 256): 2 heads x 64 queries
    assert heads_per_block(8, 8) == 1  # MHA: 64 queries of one head
    assert heads_per_block(12, 4) == 3  # 21 queries x 3 heads, one row unused
    assert heads_per_block(256, 1) == 64
    assert heads_per_block(256, 1, rows=128) == 128
    assert heads_per_block(5 * 67, 5) == 1  # prime group larger than the block: one head per block
    assert heads_per_block(5 * 67, 5, rows=128) == 67
    for dim in HEAD_DIMS:
        for variant in VARIANTS:
            if supports(dim, variant):
                assert smem_bytes(dim, variant) <= 227 * 1024, (dim, variant)
        assert smem_bytes(dim, "mma") <= 99 * 1024, dim  # the portable kernel fits sm_89 / sm_120 too
    assert all(supports(d, v) for d in HEAD_DIMS for v in VARIANTS)
    monkeypatch.setitem(VARIANTS, "d256only", D256_ONLY)
    assert supports(256, "d256only") and not supports(128, "d256only")
    with pytest.raises(ValueError, match="'d256only' has no head_dim 128 kernel; use one of wgmma, mma"):
        smem_bytes(128, "d256only")
    # wgmma, D 512: per warpgroup a 64 x 256 Q half, two K and two V 32 x 256 half tiles and two
    # 64 x 32 FP32 partial-S tiles, + alignment: within the 227 KiB a block may have
    assert smem_bytes(512, "wgmma") == 2 * (64 * 256 * 2 + 4 * 32 * 256 * 2 + 2 * 64 * 32 * 4) + 1024 <= 227 * 1024
    # wgmma, D 128: Q 64 x 128 + 3 stages of 64-key K and V tiles + alignment; two blocks (each with
    # 1 KiB reserved by the driver) fill the SM's 228 KiB
    assert smem_bytes(128, "wgmma") == 64 * 256 + 3 * 2 * 64 * 256 + 1024
    assert 2 * (smem_bytes(128, "wgmma") + 1024) <= 228 * 1024
    # wgmma, D 256: 128 rows, K in three and V in two 64-key slots by TMA (one box: the head's four
    # column blocks), one block per SM
    ring = tiling(256, "wgmma")
    assert (ring.kernel, ring.threads, ring.tma, ring.cluster, ring.tma_column_blocks) == (
        "attention_prefill_wgpp_d256", 256, True, 1, 4)
    assert smem_bytes(256, "wgmma") == 128 * 512 + 5 * 64 * 512 + 1024 <= 227 * 1024
    # every kernel of the family is one entry point; a variant's geometry names it
    assert tiling(512, "wgmma").kernel == "attention_prefill_wgtc_d512" and tiling(512, "wgmma").threads == 256
    # D 512: K/V by TMA in 2-CTA clusters (tensor maps instead of the cache pointers)
    assert (tiling(512, "wgmma").tma, tiling(512, "wgmma").cluster) == (True, 2)
    assert tiling(512, "wgmma").tma_column_blocks == 4  # a warpgroup's half of the head
    with pytest.raises(ValueError, match="variant must be one of"):
        smem_bytes(128, "tma")


# ---- `impbench attn` -----------------------------------------------------------------------------------


@pytest.mark.parametrize("args,needle", [(["--pp", "x"], "--pp takes comma-separated"), (["--pp", "0"], "--pp must be between"),
                                         (["--prefix", "half"], "--prefix takes comma-separated"),
                                         (["--prefix", ""], "--prefix takes comma-separated"),
                                         (["--prefix", "99999999"], "--prefix must be at most"),
                                         (["--reps", "0"], "--reps must be"),
                                         (["--variant", "tma"], "unknown variant 'tma'"),
                                         (["--model", "qwen3-coder", "--variant", "d256only"],
                                          "variant d256only has no head_dim 128 kernel"),
                                         (["--model", "nope"], "unknown model 'nope'"),
                                         (["--layer", "local"], "--layer takes comma-separated attention layer kinds"),
                                         (["--layer", " , "], "--layer takes comma-separated attention layer kinds"),
                                         (["--model", "qwen3-coder", "--layer", "sliding"],
                                          "--layer sliding: the model has no sliding attention layers; it has full"),
                                         (["--layer", "sliding,full", "--variant", "d256only"],
                                          "variant d256only has no head_dim 512 kernel"),
                                         (["--out", "t.json"], "gets its JSON beside it, at this very path")])  # fmt: skip
def test_attn_bench_bad_input_is_exit_2_in_one_line(capsys, monkeypatch, args, needle):
    """Every input error ends before any GPU work: exit 2, one line on stderr, nothing on stdout."""
    from cli_util import run_cli

    monkeypatch.setitem(VARIANTS, "d256only", D256_ONLY)

    code, out, err = run_cli(capsys, "attn", *args)
    assert code == 2 and not out and needle in err and err.count("\n") == 1, (code, out, err)


def test_attn_bench_layer_kinds_prefixes_and_floor():
    from impbench.bench.attention import (
        layer_kinds,
        parse_prefixes,
        plan_floor,
        prefix_tokens,
        select_kinds,
    )
    from impbench.gpus import GPUS
    from impbench.presets import get_preset

    gemma = get_preset("gemma-4")
    sliding, full = layer_kinds(gemma)
    assert (sliding.kind, sliding.heads, sliding.kv_heads, sliding.head_dim, sliding.window, sliding.scale) == (
        "sliding", 16, 8, 256, 1024, 1.0)
    assert (full.kind, full.heads, full.kv_heads, full.head_dim, full.window, full.scale) == ("full", 16, 2, 512, 0, 1.0)
    assert sliding.label == "sliding D256 W1024 16/8" and full.label == "full D512 16/2"
    [qwen] = layer_kinds(get_preset("qwen3-coder"))
    assert (qwen.kind, qwen.head_dim, qwen.window) == ("full", 128, 0) and qwen.scale == pytest.approx(128**-0.5)
    # --layer: a subset of the preset's kinds, in the preset's order
    assert select_kinds([sliding, full], None) == [sliding, full]
    assert select_kinds([sliding, full], "full, Sliding") == [sliding, full]
    assert select_kinds([sliding, full], "full") == [full]
    assert parse_prefixes("0, chunk,512,0") == [0, "chunk", 512]
    assert prefix_tokens("chunk", 2048) == 2048 and prefix_tokens(300, 2048) == 300
    # the plan's attention op: at T 4096 after nothing, the sliding layer's pairs are those of causal_flops
    h100 = GPUS["h100"]
    floor, bound, flops, _ = plan_floor(gemma, sliding, 0, 4096, h100)
    assert flops == causal_flops(4096, 0, 16, 256, window=1024) and bound == "compute"
    assert floor == pytest.approx(flops / h100.fp16_flops_per_s * 1e6)
    _, _, flops, _ = plan_floor(gemma, full, 4096, 4096, h100)
    assert flops == causal_flops(4096, 4096, 16, 512)


@pytest.mark.gpu
def test_attn_bench_times_both_gemma4_layer_kinds(capsys, tmp_path):
    from cli_util import run_cli

    code, out, err = run_cli(capsys, "attn", "--model", "gemma-4", "--pp", "128", "--prefix", "0,chunk", "--reps", "3",
                             "--out", str(tmp_path / "a.md"))  # fmt: skip
    assert code == 0, err
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert [(r["kind"], r["tokens"], r["prefix"]) for r in rows] == [
        ("sliding", 128, 0), ("sliding", 128, 128), ("full", 128, 0), ("full", 128, 128)]
    for r in rows:
        assert r["ours_us"] > 0 and r["ours_graph_us"] > 0 and r["floor_us"] > 0
        # SDPA runs where torch imports; then ours matches it to FP16 rounding
        assert r["sdpa_us"] is None or (r["sdpa_us"] > 0 and r["sdpa_backend"] and r["rel_err"] < 5e-3), r
    assert "SDPA" in out and "floor: the plan's attention op" in out


@pytest.mark.gpu
def test_attn_bench_one_layer_kind_with_a_partial_variant(capsys, monkeypatch, tmp_path):
    """--layer sliding times only the sliding layers, so a variant with no head-dim-512 kernel may run."""
    from cli_util import run_cli

    monkeypatch.setitem(VARIANTS, "d256only", D256_ONLY)
    code, out, err = run_cli(capsys, "attn", "--model", "gemma-4", "--layer", "sliding", "--variant", "d256only",
                             "--pp", "128", "--prefix", "chunk", "--reps", "3", "--out", str(tmp_path / "s.md"))  # fmt: skip
    assert code == 0, err
    report = json.loads((tmp_path / "s.json").read_text())
    assert [(r["kind"], r["variant"], r["prefix"]) for r in report["rows"]] == [("sliding", "d256only", 128)]
    assert report["rows"][0]["ours_us"] > 0
