"""kernels/ops: float64 NumPy oracles (reused by the reference forward), wrapper checks, and on the GPU
every kernel against its oracle, fully written outputs, bit-exact reruns and global-mode capture."""

import numpy as np
import pytest

from capture_util import capture_global
from impbench.kernels import ops

REL_ERR_FP16 = 2e-3


# -- float64 oracles -------------------------------------------------------------------------


def embed_ref(token_ids, table):
    return np.asarray(table, dtype=np.float64)[np.asarray(token_ids)]


def rmsnorm_ref(x, weight, eps):
    """Qwen3 RMSNorm over the last axis: x * rsqrt(mean(x^2) + eps) * weight."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(weight, dtype=np.float64)


def add_rmsnorm_ref(x, residual, weight, eps):
    """(new residual as stored, fp16; its RMSNorm in float64)."""
    new_residual = (np.asarray(x, np.float64) + np.asarray(residual, np.float64)).astype(np.float16)
    return new_residual, rmsnorm_ref(new_residual, weight, eps)


def rope_ref(x, positions, theta):
    """NeoX RoPE (rotate-half) on [..., T, heads, D] with inv_freq = theta^(-2i/D)."""
    x = np.asarray(x, dtype=np.float64)
    dim = x.shape[-1]
    half = dim // 2
    inv_freq = float(theta) ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angles = np.asarray(positions, dtype=np.float64)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def qkv_post_ref(qkv, q_norm_w, k_norm_w, eps, theta, pos, q_heads, kv_heads, head_dim, qk_norm=True):
    """(q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, D]) in float64 for a chunk starting at position pos."""
    tokens = qkv.shape[0]
    x = np.asarray(qkv, dtype=np.float64).reshape(tokens, q_heads + 2 * kv_heads, head_dim)
    q, k, v = x[:, :q_heads], x[:, q_heads : q_heads + kv_heads], x[:, q_heads + kv_heads :]
    if qk_norm:
        q, k = rmsnorm_ref(q, q_norm_w, eps), rmsnorm_ref(k, k_norm_w, eps)
    positions = pos + np.arange(tokens)
    return rope_ref(q, positions, theta), rope_ref(k, positions, theta), v


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


# -- CPU: oracles and wrapper checks ---------------------------------------------------------


def test_rope_ref_is_a_rotation_and_identity_at_position_zero():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 64))
    rotated = rope_ref(x, np.arange(5) + 7, 1e6)
    np.testing.assert_allclose(np.linalg.norm(rotated, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-12)
    np.testing.assert_allclose(rope_ref(x[:1], [0], 1e6), x[:1], rtol=0, atol=0)
    # pair i rotates by pos * theta^(-2i/D): check one pair by hand
    pos, i, dim = 9, 3, 64
    angle = pos * 1e6 ** (-2 * i / dim)
    one = np.zeros((1, 1, dim))
    one[0, 0, i] = 1.0
    out = rope_ref(one, [pos], 1e6)[0, 0]
    assert np.isclose(out[i], np.cos(angle)) and np.isclose(out[i + dim // 2], np.sin(angle))


def test_rmsnorm_ref_unit_rms():
    rng = np.random.default_rng(1)
    out = rmsnorm_ref(rng.standard_normal((4, 32)) * 5, np.ones(32), 0.0)
    np.testing.assert_allclose(np.sqrt(np.mean(out**2, axis=-1)), 1.0, rtol=1e-12)


def test_qkv_post_ref_splits_columns_q_k_v():
    tokens, hq, hkv, dim = 2, 4, 2, 8
    qkv = np.arange(tokens * (hq + 2 * hkv) * dim, dtype=np.float64).reshape(tokens, -1)
    q, k, v = qkv_post_ref(qkv, None, None, 1e-6, 1e4, 0, hq, hkv, dim, qk_norm=False)
    np.testing.assert_array_equal(q[0], qkv[0, : hq * dim].reshape(hq, dim))  # position 0: no rotation
    np.testing.assert_array_equal(k[0], qkv[0, hq * dim : (hq + hkv) * dim].reshape(hkv, dim))
    np.testing.assert_array_equal(v, qkv[:, (hq + hkv) * dim :].reshape(tokens, hkv, dim))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ops.embed(np.zeros(4, np.int32), np.zeros((16, 8), np.float16), np.zeros((4, 8), np.float16)),
        lambda: ops.rmsnorm(np.zeros((4, 8), np.float16), np.zeros(8, np.float16), 1e-6, np.zeros((4, 8), np.float16)),
        lambda: ops.add_rmsnorm(
            np.zeros((4, 8), np.float16), np.zeros((4, 8), np.float16), np.zeros(8, np.float16), 1e-6, np.zeros((4, 8), np.float16)
        ),
        lambda: ops.add(np.zeros(8, np.float16), np.zeros(8, np.float16), np.zeros(8, np.float16)),
    ],
    ids=["embed", "rmsnorm", "add_rmsnorm", "add"],
)
def test_host_arrays_are_rejected_with_value_error(call):
    with pytest.raises(ValueError, match="cupy device array"):
        call()


# -- GPU -------------------------------------------------------------------------------------


def _cp():
    import cupy

    return cupy


def _nan_f16(shape):
    cp = _cp()
    return cp.full(shape, cp.nan, dtype=cp.float16)


def _rand_f16(rng, shape, scale=1.0):
    return _cp().asarray((rng.standard_normal(shape) * scale).astype(np.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,hidden", [(1, 2048), (37, 2048), (64, 256), (5, 8192), (3, 24)])
def test_embed_matches_gather(tokens, hidden):
    cp, rng = _cp(), np.random.default_rng(tokens)
    vocab = 1000
    table = _rand_f16(rng, (vocab, hidden))
    ids_h = rng.integers(0, vocab, tokens).astype(np.int32)
    out = _nan_f16((tokens, hidden))
    ops.embed(cp.asarray(ids_h), table, out)
    np.testing.assert_array_equal(out.get(), table.get()[ids_h])  # a gather is exact


@pytest.mark.gpu
def test_embed_out_of_range_id_gives_zero_row():
    cp = _cp()
    table = _rand_f16(np.random.default_rng(2), (10, 64))
    out = _nan_f16((3, 64))
    ops.embed(cp.asarray([1, 10, -1], dtype=cp.int32), table, out)
    host = out.get()
    np.testing.assert_array_equal(host[0], table.get()[1])
    assert not host[1:].any()


@pytest.mark.gpu
@pytest.mark.parametrize("threads", [None, 256])
@pytest.mark.parametrize("tokens,hidden", [(1, 2048), (333, 2048), (16, 256), (4, 8192), (7, 40)])
def test_rmsnorm_matches_float64(tokens, hidden, threads):
    rng = np.random.default_rng(hidden + tokens)
    x, weight = _rand_f16(rng, (tokens, hidden), 3.0), _rand_f16(rng, (hidden,))
    out = _nan_f16((tokens, hidden))
    ops.prepare(ops.rmsnorm, x, weight, 1e-6, out, threads=threads)()
    got = out.get()
    assert np.isfinite(got).all()
    assert rel_err(got, rmsnorm_ref(x.get(), weight.get(), 1e-6)) <= REL_ERR_FP16


@pytest.mark.gpu
def test_rmsnorm_on_a_row_slice_writes_only_that_output():
    # the engine's final norm runs on resid[T-1:T]
    cp, rng = _cp(), np.random.default_rng(3)
    x, weight = _rand_f16(rng, (9, 512)), _rand_f16(rng, (512,))
    out = _nan_f16((1, 512))
    ops.rmsnorm(x[8:9], weight, 1e-6, out)
    assert rel_err(out.get(), rmsnorm_ref(x.get()[8:9], weight.get(), 1e-6)) <= REL_ERR_FP16
    with pytest.raises(ValueError, match="shape"):
        ops.rmsnorm(x, weight, 1e-6, cp.empty((8, 512), cp.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("threads", [None, 256, 32])
@pytest.mark.parametrize("tokens,hidden", [(1, 2048), (300, 2048), (16, 256), (3, 8192), (5, 40)])
def test_add_rmsnorm_updates_residual_and_normalizes(tokens, hidden, threads):
    rng = np.random.default_rng(tokens)
    x, residual, weight = _rand_f16(rng, (tokens, hidden)), _rand_f16(rng, (tokens, hidden), 4.0), _rand_f16(rng, (hidden,))
    x_h, residual_h = x.get(), residual.get()
    out = _nan_f16((tokens, hidden))
    if threads == 32 and hidden > 32 * 8 * ops.ROW_CHUNKS[-1]:  # a row too long for one warp: refused up front
        with pytest.raises(ValueError, match="chunks a thread"):
            ops.prepare(ops.add_rmsnorm, x, residual, weight, 1e-6, out, threads=threads)
        return
    ops.prepare(ops.add_rmsnorm, x, residual, weight, 1e-6, out, threads=threads)()
    new_residual, ref = add_rmsnorm_ref(x_h, residual_h, weight.get(), 1e-6)
    # one FP32 add rounded once to FP16 is the correctly rounded sum: exact
    np.testing.assert_array_equal(residual.get(), new_residual)
    assert rel_err(out.get(), ref) <= REL_ERR_FP16


@pytest.mark.gpu
def test_add_matches_and_may_alias():
    rng = np.random.default_rng(4)
    a, b = _rand_f16(rng, (33, 64)), _rand_f16(rng, (33, 64))
    expected = (a.get().astype(np.float64) + b.get()).astype(np.float16)
    out = _nan_f16((33, 64))
    ops.add(a, b, out)
    np.testing.assert_array_equal(out.get(), expected)
    ops.add(a, b, a)
    np.testing.assert_array_equal(a.get(), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("threads", [None, 32])
@pytest.mark.parametrize("tokens,hidden", [(3, 128), (40, 2048)])
def test_add_rmsnorm_also_writes_its_output_in_kperm_order(tokens, hidden, threads):
    from impbench.kernels import moe

    rng = np.random.default_rng(tokens * hidden)
    x, residual = _rand_f16(rng, (tokens, hidden)), _rand_f16(rng, (tokens, hidden))
    weight = _rand_f16(rng, (hidden,))
    out, out_kp = _nan_f16((tokens, hidden)), _nan_f16((tokens, hidden))
    ops.prepare(ops.add_rmsnorm, x, residual, weight, 1e-6, out, threads=threads, out_kperm=out_kp)()
    assert np.isfinite(out.get()).all()
    np.testing.assert_array_equal(out_kp.get(), moe.to_kperm(out.get()))


def _qkv_case(rng, tokens, q_heads, kv_heads, head_dim, max_len):
    qkv = _rand_f16(rng, (tokens, (q_heads + 2 * kv_heads) * head_dim), 2.0)
    q_norm_w = _cp().asarray((1.0 + 0.2 * rng.standard_normal(head_dim)).astype(np.float16))
    k_norm_w = _cp().asarray((1.0 + 0.2 * rng.standard_normal(head_dim)).astype(np.float16))
    q_out = _nan_f16((tokens, q_heads, head_dim))
    k_cache, v_cache = _nan_f16((max_len, kv_heads, head_dim)), _nan_f16((max_len, kv_heads, head_dim))
    return qkv, q_norm_w, k_norm_w, q_out, k_cache, v_cache


def _check_qkv_post(qkv, q_norm_w, k_norm_w, pos, q_out, k_cache, v_cache, theta, qk_norm=True, eps=1e-6):
    tokens, q_heads, head_dim = q_out.shape
    max_len, kv_heads = k_cache.shape[:2]
    q_ref, k_ref, v_ref = qkv_post_ref(
        qkv.get(), q_norm_w.get(), k_norm_w.get(), eps, theta, pos, q_heads, kv_heads, head_dim, qk_norm
    )
    assert rel_err(q_out.get(), q_ref) <= REL_ERR_FP16
    rows = np.arange(pos, pos + tokens)
    kept = rows < max_len
    k_host, v_host = k_cache.get(), v_cache.get()
    assert rel_err(k_host[rows[kept]], k_ref[kept]) <= REL_ERR_FP16
    np.testing.assert_array_equal(v_host[rows[kept]], v_ref[kept].astype(np.float16))  # v is copied
    untouched = np.ones(max_len, bool)
    untouched[rows[kept]] = False
    assert np.isnan(k_host[untouched]).all() and np.isnan(v_host[untouched]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("form,steps", [("auto", 4), ("wide", 2), ("wide", 8), ("narrow", 4)])
@pytest.mark.parametrize(
    "tokens,q_heads,kv_heads,head_dim,pos",
    [(1, 32, 4, 128, 0), (77, 32, 4, 128, 300), (16, 4, 2, 64, 5), (9, 4, 2, 32, 3), (12, 8, 2, 256, 4000),
     (5, 6, 1, 16, 2), (7, 3, 1, 64, 9)],
)  # fmt: skip
def test_qkv_post_norm_rope_and_cache_rows(tokens, q_heads, kv_heads, head_dim, pos, form, steps):
    cp, rng = _cp(), np.random.default_rng(pos + head_dim)
    max_len, theta = pos + tokens + 11, 1e6
    qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(rng, tokens, q_heads, kv_heads, head_dim, max_len)
    ops.qkv_post(qkv, qn, kn, 1e-6, theta, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, form=form, steps=steps)
    _check_qkv_post(qkv, qn, kn, pos, q_out, k_cache, v_cache, theta)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,q_heads,kv_heads,head_dim,pos", [(6, 4, 2, 48, 3), (5, 4, 2, 512, 70)])
def test_qkv_post_head_dims_only_the_narrow_form_takes(tokens, q_heads, kv_heads, head_dim, pos):
    cp, rng = _cp(), np.random.default_rng(head_dim)
    qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(rng, tokens, q_heads, kv_heads, head_dim, pos + tokens)
    assert ops.qkv_wide_lanes(head_dim, (qkv,)) is None
    ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache)
    _check_qkv_post(qkv, qn, kn, pos, q_out, k_cache, v_cache, 1e4)
    with pytest.raises(ValueError, match="16-byte form"):
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, form="wide")


@pytest.mark.gpu
@pytest.mark.parametrize("qk_norm", [True, False])
def test_qkv_post_wide_and_narrow_forms_agree(qk_norm):
    # same cos/sin bits; the q/k sum of squares (and FMA contraction) may differ: within an FP16 ulp or two
    cp = _cp()
    tokens, pos = 64, 70000
    outs = {}
    for form in ("wide", "narrow"):
        qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(np.random.default_rng(16), tokens, 32, 4, 128, pos + tokens)
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e6, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, qk_norm=qk_norm, form=form)
        outs[form] = [a.get() for a in (q_out, k_cache[pos:], v_cache[pos:])]
    for wide, narrow in zip(outs["wide"], outs["narrow"]):
        np.testing.assert_allclose(wide.astype(np.float64), narrow, rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(outs["wide"][2].view(np.uint16), outs["narrow"][2].view(np.uint16))  # v copied


@pytest.mark.gpu
def test_qkv_post_without_qk_norm_and_at_long_positions():
    cp, rng = _cp(), np.random.default_rng(5)
    tokens, pos, theta = 20, 131000, 1e6  # angles ~1.3e5 rad: precision of the angle matters
    qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(rng, tokens, 8, 2, 128, pos + tokens)
    ops.qkv_post(qkv, None, None, 1e-6, theta, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, qk_norm=False)
    _check_qkv_post(qkv, qn, kn, pos, q_out, k_cache, v_cache, theta, qk_norm=False)


@pytest.mark.gpu
def test_qkv_post_past_the_cache_end_writes_q_but_no_cache_row():
    cp, rng = _cp(), np.random.default_rng(6)
    tokens, pos = 10, 25
    qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(rng, tokens, 4, 2, 64, 30)  # rows 25..29 fit, 30..34 do not
    ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache)
    _check_qkv_post(qkv, qn, kn, pos, q_out, k_cache, v_cache, 1e4)


@pytest.mark.gpu
def test_qkv_post_rejects_bad_shapes():
    cp, rng = _cp(), np.random.default_rng(7)
    qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(rng, 4, 4, 2, 64, 16)
    pos = cp.zeros(1, cp.int32)
    with pytest.raises(ValueError, match="qkv"):
        ops.qkv_post(qkv[:, :-64], qn, kn, 1e-6, 1e4, pos, q_out, k_cache, v_cache)
    with pytest.raises(ValueError, match="pos"):
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, cp.zeros(1, cp.int64), q_out, k_cache, v_cache)
    with pytest.raises(ValueError, match="head_dim"):
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, pos, q_out, k_cache[:, :, :32].copy(), v_cache)
    with pytest.raises(ValueError, match="C-contiguous"):
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, pos, q_out, k_cache, v_cache[::-1])


@pytest.mark.gpu
def test_reruns_are_bit_identical():
    cp, rng = _cp(), np.random.default_rng(8)
    x, residual, weight = _rand_f16(rng, (64, 2048)), _rand_f16(rng, (64, 2048)), _rand_f16(rng, (2048,))
    outs = []
    for _ in range(2):
        r, out = residual.copy(), _nan_f16((64, 2048))
        ops.add_rmsnorm(x, r, weight, 1e-6, out)
        qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(np.random.default_rng(9), 64, 32, 4, 128, 128)
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e6, cp.asarray([17], cp.int32), q_out, k_cache, v_cache)
        outs.append([a.get().view(np.uint16) for a in (r, out, q_out, k_cache, v_cache)])
    for first, second in zip(*outs):
        np.testing.assert_array_equal(first, second)


@pytest.mark.gpu
@pytest.mark.parametrize("prepared", [False, True])
def test_global_capture_replays_with_new_ids_and_position(prepared):
    cp = _cp()

    rng = np.random.default_rng(10)
    tokens, hidden, q_heads, kv_heads, head_dim, max_len, vocab = 24, 256, 4, 2, 64, 96, 500
    eps, theta = 1e-6, 1e6
    table, w_attn, w_ffn = _rand_f16(rng, (vocab, hidden)), _rand_f16(rng, (hidden,)), _rand_f16(rng, (hidden,))
    ids, pos = cp.zeros(tokens, cp.int32), cp.zeros(1, cp.int32)
    resid, attn_normed, normed = (cp.empty((tokens, hidden), cp.float16) for _ in range(3))
    qkv = cp.empty((tokens, (q_heads + 2 * kv_heads) * head_dim), cp.float16)
    q_norm_w, k_norm_w = _rand_f16(rng, (head_dim,)), _rand_f16(rng, (head_dim,))
    q_out = cp.empty((tokens, q_heads, head_dim), cp.float16)
    k_cache, v_cache = _nan_f16((max_len, kv_heads, head_dim)), _nan_f16((max_len, kv_heads, head_dim))
    attn_out = _rand_f16(rng, (tokens, hidden))
    calls = [
        (ops.embed, (ids, table, resid)),
        (ops.rmsnorm, (resid, w_attn, eps, attn_normed)),
        (ops.qkv_post, (qkv, q_norm_w, k_norm_w, eps, theta, pos, q_out, k_cache, v_cache)),
        (ops.add_rmsnorm, (attn_out, resid, w_ffn, eps, normed)),
    ]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        graph = capture_global(stream, calls, ops.prepare if prepared else None)
        for chunk_pos in (0, tokens, 2 * tokens):
            ids_h = rng.integers(0, vocab, tokens).astype(np.int32)
            ids.set(ids_h, stream=stream)
            pos.fill(chunk_pos)
            qkv.set((rng.standard_normal(qkv.shape) * 2).astype(np.float16), stream=stream)
            attn_normed.fill(cp.nan)
            normed.fill(cp.nan)
            q_out.fill(cp.nan)
            graph.launch(stream=stream)
            stream.synchronize()
            embedded = table.get()[ids_h]
            assert rel_err(attn_normed.get(), rmsnorm_ref(embedded, w_attn.get(), eps)) <= REL_ERR_FP16
            new_resid, ref = add_rmsnorm_ref(attn_out.get(), embedded, w_ffn.get(), eps)
            np.testing.assert_array_equal(resid.get(), new_resid)
            assert rel_err(normed.get(), ref) <= REL_ERR_FP16
            q_ref, k_ref, v_ref = qkv_post_ref(
                qkv.get(), q_norm_w.get(), k_norm_w.get(), eps, theta, chunk_pos, q_heads, kv_heads, head_dim
            )
            assert rel_err(q_out.get(), q_ref) <= REL_ERR_FP16
            rows = slice(chunk_pos, chunk_pos + tokens)
            assert rel_err(k_cache.get()[rows], k_ref) <= REL_ERR_FP16
            np.testing.assert_array_equal(v_cache.get()[rows], v_ref.astype(np.float16))
            assert np.isnan(k_cache.get()[chunk_pos + tokens :]).all()
