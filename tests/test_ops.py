"""kernels/ops: float64 NumPy oracles (reused by the reference forward), wrapper checks, and on the GPU
every kernel against its oracle, fully written outputs, bit-exact reruns and global-mode capture. The
Qwen3.5/3.6 hybrid's ops (conv1d prep and conv state, gated norm, partial-rotary qkv_post on a column
slice, output gate, gated activation) and Gemma-4's (qkv_post with V norm, K = V and proportional RoPE,
the post-attention norms, the scaled embedding, the logit soft-cap) are checked against
impbench.reference at both the real and the tiny model's shapes."""

from types import SimpleNamespace

import numpy as np
import pytest
from capture_util import capture_global

from impbench.kernels import ops
from impbench.presets import get_preset
from impbench.reference import blocks, gated_delta

REL_ERR_FP16 = 2e-3
# Hybrid ops: max |out - ref| over max |ref|. One FP16 rounding is 2^-11 = 4.9e-4 of a value; the FP32
# math (approximate exp2 and reciprocal in the activations: ~1e-6) adds nothing visible.
MAX_ERR_FP16 = 2e-3
HYBRID_MODELS = ("qwen3.6", "tiny-qwen3.6")  # the real shapes and the tiny preset the engine tests run
GEMMA_MODELS = ("gemma-4-26b-a4b", "tiny-gemma4")


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


def assert_close(name, out, ref, bound=MAX_ERR_FP16):
    """max |out - ref| <= bound * max |ref|, every value finite; a failure names the worst element."""
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert out.shape == ref.shape, f"{name}: shape {out.shape}, reference {ref.shape}"
    bad = np.argwhere(~np.isfinite(out))
    assert not bad.size, f"{name}: {len(bad)} non-finite values (unwritten?), first at {tuple(bad[0])}"
    err = np.abs(out - ref)
    where = np.unravel_index(np.argmax(err), err.shape)
    scale = float(np.abs(ref).max())
    assert err[where] <= bound * scale, (
        f"{name}: max error {err[where]:.3g} = {err[where] / scale:.3g} of max |ref| {scale:.3g} (bound {bound}) at "
        f"{tuple(int(i) for i in where)}: got {out[where]:.6g}, want {ref[where]:.6g}"
    )


def assert_within_ulp(name, out, want, slack=0.0):
    """FP16 out within one FP16 ulp of FP16 want (the same value but for a last-bit rounding tie), plus `slack`
    (an absolute bound, array or scalar: an operand's FP32 error where a sum cancels) everywhere."""
    out, want = np.asarray(out, np.float16), np.asarray(want, np.float16)
    err = np.abs(out.astype(np.float64) - want)
    ulp = np.spacing(np.abs(want)).astype(np.float64) + slack
    bad = np.argwhere(~(err <= ulp))
    assert not bad.size, f"{name}: {len(bad)} values off by more than an FP16 ulp, first at {tuple(bad[0])}"


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


class DeviceLike:
    """What the wrappers' checks read of a cupy array (dtype, shape, strides, contiguity, address), over a
    NumPy array: argument errors are tested on a machine without a GPU. Slicing keeps the offset."""

    __module__ = "cupy.test_fake"  # check_array tells device arrays by their type's module

    def __init__(self, host, base=None, ptr0=0x100000):
        self._host, self._base, self._ptr0 = host, host if base is None else base, ptr0
        self.shape, self.dtype, self.strides, self.ndim, self.size = host.shape, host.dtype, host.strides, host.ndim, host.size
        self.flags = SimpleNamespace(c_contiguous=host.flags.c_contiguous)
        offset = host.__array_interface__["data"][0] - self._base.__array_interface__["data"][0]
        self.data = SimpleNamespace(ptr=ptr0 + offset)

    def __getitem__(self, key):
        return DeviceLike(self._host[key], self._base, self._ptr0)


def fake(shape, dtype=np.float16, ptr=0x100000):
    return DeviceLike(np.zeros(shape, dtype), ptr0=ptr)


def fakes(*shapes, dtype=np.float16):
    """Fakes at distinct addresses (1 MiB apart), for the checks that tell buffers apart by address."""
    return [fake(shape, dtype, 0x100000 * (i + 1)) for i, shape in enumerate(shapes)]


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
        lambda: ops.conv_prep(**{name: np.zeros(arr.shape, arr.dtype) for name, arr in _conv_args().items()}),
        lambda: ops.gated_rmsnorm(np.zeros((4, 2, 32), np.float16), np.zeros((4, 64), np.float16), np.zeros(32, np.float16),
                                  1e-6, np.zeros((4, 64), np.float16)),
        lambda: ops.attn_gate(np.zeros((4, 2, 32), np.float16), np.zeros((4, 64), np.float16), np.zeros((4, 64), np.float16)),
        lambda: ops.gated_act(np.zeros((4, 64), np.float16), np.zeros((4, 32), np.float16)),
        lambda: ops.post_attn_norms(np.zeros((4, 8), np.float16), np.zeros((4, 8), np.float16),
                                    [np.zeros(8, np.float16)] * 2, 1e-6, [np.zeros((4, 8), np.float16)]),
        lambda: ops.softcap(np.zeros((1, 64), np.float16), 30.0, np.zeros((1, 64), np.float16)),
    ],
    ids=["embed", "rmsnorm", "add_rmsnorm", "add", "conv_prep", "gated_rmsnorm", "attn_gate", "gated_act",
         "post_attn_norms", "softcap"],
)
def test_host_arrays_are_rejected_with_value_error(call):
    with pytest.raises(ValueError, match="cupy device array"):
        call()


# -- CPU: the hybrid ops' argument checks (DeviceLike stands in for device arrays) -------------------


def _conv_args(tokens=5, hk=2, hv=4, dk=32, dv=32, **over):
    """conv_prep's arguments at the tiny shapes, at distinct addresses, any of them replaced by keyword."""
    channels = 2 * hk * dk + hv * dv
    shapes = {"mixed": (tokens, channels), "conv_weight": (channels, 4), "conv_state": (3, channels), "a": (tokens, hv),
              "b": (tokens, hv), "a_log": (hv,), "dt_bias": (hv,), "q": (tokens, hk, dk), "k": (tokens, hk, dk),
              "v": (tokens, hv, dv), "g": (tokens, hv), "beta": (tokens, hv)}  # fmt: skip
    f32 = {"a_log", "dt_bias", "g", "beta"}
    args = {name: fake(shape, np.float32 if name in f32 else np.float16, 0x100000 * (i + 1))
            for i, (name, shape) in enumerate(shapes.items())}
    args.update(over)
    return args


def _one_line_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "over,match",
    [
        ({"conv_weight": fake((256, 3))}, r"conv_weight must have shape \(256, 4\)"),
        ({"mixed": fake((5, 264))}, r"mixed must have shape \(5, 256\)"),
        ({"mixed": fake((5, 260))[:, :256]}, "mixed must have 16-byte aligned rows"),
        ({"mixed": fake((5, 512))[:, ::2]}, "mixed must have contiguous columns"),
        ({"conv_state": fake((4, 256))}, r"conv_state must have shape \(3, 256\)"),
        ({"conv_state": fake((3, 256), ptr=0x100000 + 512)}, "conv_state must not overlap mixed"),
        ({"conv_state": fake((3, 256), ptr=0x200000 + 512)}, "conv_state must not overlap conv_weight"),
        ({"conv_state": fake((3, 256), ptr=0xB00000 - 512)}, "conv_state must not overlap g"),
        ({"g": fake((5, 4))}, "g must have dtype float32"),
        ({"beta": fake((5, 3), np.float32)}, "beta must have shape"),
        ({"a_log": fake((4,))}, "a_log must have dtype float32"),
        ({"b": fake((5, 5))}, r"b must have shape \(5, 4\)"),
        ({"q": fake((5, 2, 48)), "k": fake((5, 2, 48))}, "key head dim"),
        ({"v": fake((6, 4, 32))}, "disagree on tokens"),
        ({"k": fake((5, 2, 16))}, "k must have shape"),
        ({"q": fake((5, 2, 32)).__getitem__(slice(None, None, -1))}, "q must be C-contiguous"),
    ],
)  # fmt: skip
def test_conv_prep_rejects_bad_arguments_in_one_line(over, match):
    _one_line_error(lambda: ops.conv_prep(**_conv_args(**over)), match)


def test_conv_prep_takes_column_slices_for_mixed_a_and_b(monkeypatch):
    # mixed from a wider qkvz buffer, a and b from one [T, 2 Hv] buffer: the checks pass, the strides go to the kernel
    monkeypatch.setattr(ops, "_kernel", lambda name: name)
    ba = fake((5, 8))
    args = _conv_args(mixed=fake((5, 256 + 128))[:, :256], b=ba[:, :4], a=ba[:, 4:])
    name, grid, block, kargs = ops._plan_conv_prep(**args)
    assert name == "conv_prep_k4" and grid == (1, 1) and block == (32,)
    assert (int(kargs[1]), int(kargs[5]), int(kargs[7])) == (384, 8, 8)  # mixed, a, b row strides in halves
    assert kargs[4].data.ptr == kargs[6].data.ptr + 8  # a starts 4 halves after b


def test_gated_rmsnorm_attn_gate_and_gated_act_reject_bad_arguments_in_one_line():
    _one_line_error(lambda: ops.gated_rmsnorm(fake((4, 2, 48)), fake((4, 96)), fake((48,)), 1e-6, fake((4, 96))), "head dim")
    _one_line_error(lambda: ops.gated_rmsnorm(fake((4, 2, 32)), fake((4, 32)), fake((32,)), 1e-6, fake((4, 64))),
                    r"z must have shape \(4, 64\)")  # fmt: skip
    _one_line_error(lambda: ops.gated_rmsnorm(fake((4, 2, 32)), fake((4, 64)), fake((64,)), 1e-6, fake((4, 64))),
                    r"weight must have shape \(32,\)")  # fmt: skip
    _one_line_error(lambda: ops.attn_gate(fake((4, 2, 32)), fake((4, 128))[:, ::2], fake((4, 64))), "gate must have contiguous columns")
    _one_line_error(lambda: ops.attn_gate(fake((4, 2, 32)), fake((4, 64)), fake((4, 2, 32))), r"out must have shape \(4, 64\)")
    _one_line_error(lambda: ops.gated_act(fake((4, 64)), fake((4, 32)), "relu"), "activation must be one of")
    _one_line_error(lambda: ops.gated_act(fake((4, 60)), fake((4, 32))), r"gate_up must have shape \(4, 64\)")
    _one_line_error(lambda: ops.gated_act(fake((4, 64)), fake((4, 32), np.float32)), "out must have dtype float16")
    overlapping = DeviceLike(np.lib.stride_tricks.as_strided(np.zeros(4096, np.float16), (4, 64), (32, 2)))
    _one_line_error(lambda: ops.gated_act(overlapping, fake((4, 32))), "gate_up rows must not overlap")


def test_qkv_post_rotary_dim_checks_in_one_line():
    tokens, hq, hkv, dim = 3, 4, 1, 64
    qkv = fake((tokens, (2 * hq + 2 * hkv) * dim))[:, : (hq + 2 * hkv) * dim]  # a column slice: accepted
    args = (qkv, fake((dim,)), fake((dim,)), 1e-6, 1e7, fake((1,), np.int32), fake((tokens, hq, dim)),
            fake((16, hkv, dim)), fake((16, hkv, dim)))  # fmt: skip
    _one_line_error(lambda: ops.qkv_post(*args, rotary_dim=15), "rotary_dim must be even")
    _one_line_error(lambda: ops.qkv_post(*args, rotary_dim=66), "rotary_dim must be even and in")
    _one_line_error(lambda: ops.qkv_post(*args, rotary_dim=8), "needs the 16-byte form")
    _one_line_error(lambda: ops.qkv_post(*args, rotary_dim=16, form="narrow"), "needs the 16-byte form")
    _one_line_error(lambda: ops.qkv_post(*args, rotary_dim=48, form="wide"), "16-byte form needs")
    _one_line_error(lambda: ops.qkv_post(fake((tokens, (hq + 2 * hkv) * dim - 64)), *args[1:]), "qkv must have shape")
    cols = (hq + 2 * hkv) * 128  # the narrow form at D = 128 reads pairs: an odd row stride is refused
    wide_args = (fake((128,)), fake((128,)), 1e-6, 1e7, fake((1,), np.int32), fake((tokens, hq, 128)), fake((16, hkv, 128)),
                 fake((16, hkv, 128)))  # fmt: skip
    _one_line_error(lambda: ops.qkv_post(fake((tokens, cols + 1))[:, :cols], *wide_args), "row stride")


def _gemma_qkv_args(model, kind, tokens=3, max_len=16, k_eq_v=None):
    """qkv_post's positional arguments at a Gemma-4 preset's shapes (fakes at distinct addresses), and its kwargs."""
    p = get_preset(model)
    heads, kv_heads, dim = p.attention_dims(kind)
    k_eq_v = not p.has_v_proj(kind) if k_eq_v is None else k_eq_v
    cols = (heads + (1 if k_eq_v else 2) * kv_heads) * dim
    qkv, qn, kn, pos, q_out, k_cache, v_cache = fakes((tokens, cols), (dim,), (dim,), (8,), (tokens, heads, dim),
                                                     (max_len, kv_heads, dim), (max_len, kv_heads, dim))  # fmt: skip
    pos = fake((1,), np.int32, 0x4000000)
    kwargs = {"v_norm": True, "k_eq_v": k_eq_v}
    if kind == "full":
        kwargs["rope_pairs"] = int(dim // 2 * p.full_partial_rotary_factor)
    theta = p.full_rope_theta if kind == "full" else p.rope_theta
    return (qkv, qn, kn, p.rms_norm_eps, theta, pos, q_out, k_cache, v_cache), kwargs


@pytest.mark.parametrize("head_dim", [66, 192, 320, 384, 448, 576])
def test_qkv_post_rejects_head_dims_it_has_no_kernel_for_in_one_line(head_dim):
    tokens, heads, kv_heads, max_len = 3, 4, 2, 16
    qkv, qn, kn, q_out, k_cache, v_cache = fakes((tokens, (heads + 2 * kv_heads) * head_dim), (head_dim,), (head_dim,),
                                                 (tokens, heads, head_dim), (max_len, kv_heads, head_dim),
                                                 (max_len, kv_heads, head_dim))  # fmt: skip
    pos = fake((1,), np.int32, 0x4000000)
    _one_line_error(lambda: ops._plan_qkv_post(qkv, qn, kn, 1e-6, 1e4, pos, q_out, k_cache, v_cache),
                    "head_dim must be even and <= 64, or one of 128, 256, 512")


def test_qkv_post_gemma_options_check_in_one_line(monkeypatch):
    monkeypatch.setattr(ops, "_kernel", lambda name: name)
    args, kw = _gemma_qkv_args("tiny-gemma4", "full")  # D 128, 4 q heads, 1 kv head, K = V
    _one_line_error(lambda: ops.qkv_post(*args, **kw, rotary_dim=64), "cannot be combined with rotary_dim 64")
    _one_line_error(lambda: ops.qkv_post(*args, **dict(kw, rope_pairs=65)), r"rope_pairs must be an integer in \[0, head_dim/2=64\]")
    _one_line_error(lambda: ops.qkv_post(*args, **dict(kw, rope_pairs=-1)), "rope_pairs must be an integer")
    _one_line_error(lambda: ops.qkv_post(*args, **dict(kw, rope_pairs=16.0)), "rope_pairs must be an integer")
    # K = V: qkv holds q and k heads only; with v heads too it is the wrong shape, and the other way round
    _one_line_error(lambda: ops.qkv_post(fake((3, 6 * 128)), *args[1:], **kw), r"qkv must have shape \(3, 640\)")
    _one_line_error(lambda: ops.qkv_post(*args, **dict(kw, k_eq_v=False)), r"qkv must have shape \(3, 768\)")
    many = (fake((3, (120 + 5) * 64)), fake((64,)), fake((64,)), 1e-6, 1e4, fake((1,), np.int32), fake((3, 120, 64)),
            fake((8, 5, 64)), fake((8, 5, 64)))  # fmt: skip
    ops._plan_qkv_post(*many, k_eq_v=True)  # 125 heads without v heads fit one block
    _one_line_error(lambda: ops.qkv_post(fake((3, 130 * 64)), *many[1:]), r"at most 128 q \+ k \+ v heads, got 120 \+ 5 \+ 5")


def test_plans_take_the_gemma4_shapes(monkeypatch):
    # the kernel each Gemma-4 layer kind gets, without a GPU: sliding D 256 (16 + 8 + 8 heads) in the 16-byte form,
    # full D 512 with K = V (16 + 2 heads) in the narrow one (16-byte loads there too), and the tiny preset's
    monkeypatch.setattr(ops, "_kernel", lambda name: name)
    want = {("gemma-4-26b-a4b", "sliding"): ("qkv_post_l32_s4", 256, 128, ops.V_NORM),
            ("gemma-4-26b-a4b", "full"): ("qkv_post_vp8", 160, 64, ops.V_FROM_K),
            ("tiny-gemma4", "sliding"): ("qkv_post_l8_s4", 32, 32, ops.V_NORM),
            ("tiny-gemma4", "full"): ("qkv_post_l16_s4", 32, 16, ops.V_FROM_K)}  # fmt: skip
    for (model, kind), (name, threads, pairs, v_mode) in want.items():
        args, kw = _gemma_qkv_args(model, kind, tokens=5)
        kernel, grid, block, kargs = ops._plan_qkv_post(*args, **kw)
        assert (kernel, grid, block) == (name, (5,), (threads,)), (model, kind)
        assert (int(kargs[-2]), int(kargs[-1])) == (pairs, v_mode), (model, kind)
        for form in ("narrow", "wide") if kind == "sliding" else ("narrow",):
            assert ops._plan_qkv_post(*args, **kw, form=form)[0].startswith("qkv_post_"), (model, kind, form)
    args, kw = _gemma_qkv_args("gemma-4-26b-a4b", "full")
    _one_line_error(lambda: ops._plan_qkv_post(*args, **kw, form="wide"), "16-byte form needs head_dim in")
    # the defaults keep a plain copy of v and every pair rotating
    args, _ = _gemma_qkv_args("gemma-4-26b-a4b", "sliding")
    kargs = ops._plan_qkv_post(*args)[3]
    assert (int(kargs[-2]), int(kargs[-1])) == (128, ops.V_COPY)
    for model, chunks, threads in (("gemma-4-26b-a4b", 4, 128), ("tiny-gemma4", 1, 32)):
        hidden, tokens = get_preset(model).hidden_size, 7
        x, resid, o1, o2, o3, w0, w1, w2, w3 = fakes(*[(tokens, hidden)] * 5, *[(hidden,)] * 4)
        kernel, grid, block, kargs = ops._plan_post_attn_norms(x, resid, (w0, w1, w2, w3), 1e-6, (o1, o2, o3))
        assert (kernel, grid, block) == (f"post_attn_norms_f16_c{chunks}", (tokens,), (threads,)), model
        assert int(kargs[10]) == 3 and kargs[2] is w0 and kargs[6] is o1 and kargs[8] is o3 and int(kargs[9]) == 0
        kargs = ops._plan_post_attn_norms(x, resid, (w0, w1), 1e-6, (o1,))[3]
        assert int(kargs[10]) == 1 and int(kargs[4]) == int(kargs[5]) == int(kargs[7]) == int(kargs[8]) == int(kargs[9]) == 0  # null: unread
        kp = fake((tokens, hidden), np.float16, 0x100000 * 20)  # the pre-MoE out (outs[1]) in kperm order too
        assert ops._plan_post_attn_norms(x, resid, (w0, w1, w2, w3), 1e-6, (o1, o2, o3), out_kperm=kp)[3][9] is kp
        _one_line_error(lambda: ops._plan_post_attn_norms(x, resid, (w0, w1), 1e-6, (o1,), out_kperm=kp),
                        r"out_kperm copies outs\[1\]: needs two outs")
        table, out = fakes((512, hidden), (tokens, hidden))
        kernel, grid, block, kargs = ops._plan_embed(fake((tokens,), np.int32, 0x4000000), table, out, hidden**0.5)
        assert (kernel, grid, block) == ("embed_f16", (tokens,), (threads,)) and float(kargs[-1]) == np.float32(hidden**0.5)
    logits = fake((1, 262144))
    assert ops._plan_softcap(logits, 30.0, logits)[:3] == ("softcap_f16", (128,), (256,))  # in place


def test_post_attn_norms_softcap_and_embed_scale_check_in_one_line():
    t, h = 4, 64
    x, resid, o1, o2, o3, w0, w1, w2, w3 = fakes(*[(t, h)] * 5, *[(h,)] * 4)
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0,), 1e-6, ()), "need 2 to 4 weights and one out per weight")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1, w2), 1e-6, (o1,)), "got 3 weights, 1 outs")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1, w2, w3, w3), 1e-6, (o1, o2, o3, o3)), "need 2 to 4 weights")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, fake((32,))), 1e-6, (o1,)), r"weights\[1\] must have shape \(64,\)")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1, w2), 1e-6, (o1, fake((t, 32)))), r"outs\[1\] must have shape")
    _one_line_error(lambda: ops.post_attn_norms(x, fake((t + 1, h)), (w0, w1), 1e-6, (o1,)), r"residual must have shape \(4, 64\)")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1), 1e-6, (x,)), r"outs\[0\] and x are the same buffer")
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1, w2), 1e-6, (o1, o1)), r"outs\[1\] and outs\[0\] are the same")
    _one_line_error(lambda: ops.post_attn_norms(fake((t, 12)), fake((t, 12)), (fake((12,)),) * 2, 1e-6, (fake((t, 12)),)),
                    "hidden size must be a multiple of 8")  # fmt: skip
    _one_line_error(lambda: ops.post_attn_norms(x, resid, (w0, w1), 1e-6, (fake((t, h), np.float32),)),
                    r"outs\[0\] must have dtype float16")  # fmt: skip
    _one_line_error(lambda: ops.softcap(x, 0.0, x), "cap must be finite and > 0")
    _one_line_error(lambda: ops.softcap(x, float("inf"), x), "cap must be finite and > 0")
    _one_line_error(lambda: ops.softcap(x, 30.0, o1[:2]), r"out must have shape \(4, 64\)")
    _one_line_error(lambda: ops.softcap(fake((1, 12)), 30.0, fake((1, 12))), "positive multiple of 8")
    _one_line_error(lambda: ops.softcap(x, 30.0, fake((t, h), np.float32)), "out must have dtype float16")
    ids, table = fake((t,), np.int32, 0x4000000), fake((16, h))
    _one_line_error(lambda: ops.embed(ids, table, o1, float("nan")), "scale must be finite")


def test_rotating_chunks_of_the_16_byte_form():
    assert ops._rot_chunks(256, 64) == 8 and ops._rot_chunks(64, 16) == 2 and ops._rot_chunks(128, 128) == 16
    assert ops._rot_chunks(64, 8) is None and ops._rot_chunks(64, 24) is None and ops._rot_chunks(256, 96) is None


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


# -- GPU: the Qwen3.5/3.6 hybrid's ops ---------------------------------------------------------------


# conv_prep shapes no preset has, by name, with the presets' linear_* fields
LINEAR_SHAPES = {
    # C = 2 * 1 * 8 + 3 * 8 = 40 channels: 5 chunks, so 27 of the one warp's lanes hold none
    "idle-lanes": SimpleNamespace(linear_num_key_heads=1, linear_num_value_heads=3, linear_key_head_dim=8,
                                  linear_value_head_dim=8, linear_conv_kernel=4),
}


def _linear_preset(model):
    return LINEAR_SHAPES[model] if model in LINEAR_SHAPES else get_preset(model)


def _linear_dims(model):
    p = _linear_preset(model)
    return p.linear_num_key_heads, p.linear_num_value_heads, p.linear_key_head_dim, p.linear_value_head_dim


def _conv_case(rng, model, tokens, strided=False):
    """Fresh inputs of conv_prep (host float16/float32 copies in `h`) and poisoned outputs. `strided`: mixed is
    the first C columns of a wider [T, C + Hv dv] qkvz buffer and b, a the two halves of one [T, 2 Hv] buffer."""
    cp = _cp()
    hk, hv, dk, dv = _linear_dims(model)
    channels, taps = 2 * hk * dk + hv * dv, _linear_preset(model).linear_conv_kernel
    h = {"mixed": rng.standard_normal((tokens, channels)).astype(np.float16),
         "conv_weight": (0.3 * rng.standard_normal((channels, taps))).astype(np.float16),
         "conv_state": rng.standard_normal((taps - 1, channels)).astype(np.float16),
         "a": (2 * rng.standard_normal((tokens, hv))).astype(np.float16),
         "b": (2 * rng.standard_normal((tokens, hv))).astype(np.float16),
         "a_log": np.log(rng.uniform(1.0, 16.0, hv)).astype(np.float32), "dt_bias": rng.standard_normal(hv).astype(np.float32)}  # fmt: skip
    d = {name: cp.asarray(value) for name, value in h.items()}
    if strided:
        wide = cp.asarray(rng.standard_normal((tokens, channels + hv * dv)).astype(np.float16))
        wide[:, :channels] = d["mixed"]
        ba = cp.empty((tokens, 2 * hv), cp.float16)
        ba[:, :hv], ba[:, hv:] = d["b"], d["a"]
        d.update(mixed=wide[:, :channels], b=ba[:, :hv], a=ba[:, hv:])
    out = {"q": _nan_f16((tokens, hk, dk)), "k": _nan_f16((tokens, hk, dk)), "v": _nan_f16((tokens, hv, dv)),
           "g": cp.full((tokens, hv), cp.nan, cp.float32), "beta": cp.full((tokens, hv), cp.nan, cp.float32)}  # fmt: skip
    return h, d, out


def _conv_prep(d, out, state=None, rows=slice(None)):
    ops.conv_prep(d["mixed"][rows], d["conv_weight"], d["conv_state"] if state is None else state, d["a"][rows], d["b"][rows],
                  d["a_log"], d["dt_bias"], out["q"], out["k"], out["v"], out["g"], out["beta"], 1e-6)  # fmt: skip


def _conv_prep_ref(h, model, state=None):
    """(q, k, v, g, beta, new state) in float64 from impbench.reference.gated_delta."""
    hk, hv, dk, dv = _linear_dims(model)
    f64 = {name: np.asarray(value, np.float64) for name, value in h.items()}
    tokens = f64["mixed"].shape[0]
    x, new_state = gated_delta.causal_conv1d(f64["mixed"], f64["conv_weight"], f64["conv_state"] if state is None else state)
    q = gated_delta.l2norm(x[:, : hk * dk].reshape(tokens, hk, dk)) / np.sqrt(dk)
    k = gated_delta.l2norm(x[:, hk * dk : 2 * hk * dk].reshape(tokens, hk, dk))
    v = x[:, 2 * hk * dk :].reshape(tokens, hv, dv)
    g, beta = gated_delta.decay_and_beta(f64["a"], f64["b"], f64["a_log"], f64["dt_bias"])
    return q, k, v, g, beta, new_state


def _assert_conv_outputs(out, ref, what=""):
    q, k, v, g, beta, _ = ref
    for name, want in (("q", q), ("k", k), ("v", v)):
        assert_close(f"{what}{name}", out[name].get(), want)
    # g and beta are stored in FP32: a few FP32 ulp of the accurate expf / log1pf
    np.testing.assert_allclose(out["g"].get(), g, rtol=1e-5, atol=1e-7, err_msg=f"{what}g")
    np.testing.assert_allclose(out["beta"].get(), beta, rtol=1e-5, atol=1e-7, err_msg=f"{what}beta")


@pytest.mark.gpu
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("tokens", [1, 2, 3, 5, 64, 300])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_conv_prep_matches_the_float64_reference_and_carries_the_state(model, tokens, strided):
    _check_conv_prep_and_carry(model, tokens, strided)


@pytest.mark.gpu
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("tokens", [1, 2, 3, 11])
def test_conv_prep_with_idle_lanes_matches_the_float64_reference_and_carries_the_state(tokens, strided):
    # 40 channels: lanes 5-31 of the warp have no chunk (yet shuffle in group_sum); T 11 is two token tiles
    _check_conv_prep_and_carry("idle-lanes", tokens, strided)


def _check_conv_prep_and_carry(model, tokens, strided):
    cp, rng = _cp(), np.random.default_rng(tokens + 7 * strided + len(model))
    h, d, out = _conv_case(rng, model, tokens, strided)
    state = d["conv_state"].copy()  # the state before the launch, for the prepared call below
    _conv_prep(d, out)
    _assert_conv_outputs(out, _conv_prep_ref(h, model))
    # the state now holds the last 3 raw rows of concat(state, mixed), bit for bit: also when T < 3, where
    # part of it is the old state shifted in place
    want = np.concatenate([h["conv_state"], h["mixed"]])[-3:]
    np.testing.assert_array_equal(d["conv_state"].get().view(np.uint16), want.view(np.uint16))
    # prepared == direct, bit for bit, from the same state
    again = {name: cp.full_like(arr, cp.nan) for name, arr in out.items()}
    ops.prepare(ops.conv_prep, d["mixed"], d["conv_weight"], state, d["a"], d["b"], d["a_log"], d["dt_bias"],
                again["q"], again["k"], again["v"], again["g"], again["beta"], 1e-6)()  # fmt: skip
    for name in out:
        np.testing.assert_array_equal(again[name].get(), out[name].get(), err_msg=name)
    np.testing.assert_array_equal(state.get(), d["conv_state"].get())


@pytest.mark.gpu
@pytest.mark.parametrize("split", [1, 2, 3, 37])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_conv_prep_in_two_chunks_equals_one_chunk(model, split):
    cp, tokens = _cp(), 45
    h, d, whole = _conv_case(np.random.default_rng(split), model, tokens)
    state = d["conv_state"].copy()  # the chunked run's own state, from the same start
    _conv_prep(d, whole)
    _assert_conv_outputs(whole, _conv_prep_ref(h, model), "one chunk: ")
    parts = []
    for rows in (slice(0, split), slice(split, tokens)):
        n = rows.stop - rows.start
        out = {"q": _nan_f16((n,) + whole["q"].shape[1:]), "k": _nan_f16((n,) + whole["k"].shape[1:]),
               "v": _nan_f16((n,) + whole["v"].shape[1:]), "g": cp.full((n, whole["g"].shape[1]), cp.nan, cp.float32),
               "beta": cp.full((n, whole["g"].shape[1]), cp.nan, cp.float32)}  # fmt: skip
        _conv_prep(d, out, state, rows)
        parts.append(out)
    for name in whole:  # the same per-token math on the same FP16 rows: the same bits
        chunked = np.concatenate([part[name].get() for part in parts])
        np.testing.assert_array_equal(chunked, whole[name].get(), err_msg=f"{name}, chunks of {split} and {tokens - split}")
    want = np.concatenate([h["conv_state"], h["mixed"]])[-3:]
    np.testing.assert_array_equal(state.get().view(np.uint16), want.view(np.uint16))
    np.testing.assert_array_equal(d["conv_state"].get().view(np.uint16), want.view(np.uint16))  # the one-chunk run's


@pytest.mark.gpu
@pytest.mark.parametrize("prepared", [False, True])
def test_global_capture_of_the_conv_prologue_carries_the_state_across_chunks(prepared):
    cp, model, tokens, chunks = _cp(), "tiny-qwen3.6", 24, 3
    rng = np.random.default_rng(30)
    h, d, out = _conv_case(rng, model, tokens)
    d["conv_state"].fill(0)  # the prompt's start
    calls = [(ops.conv_prep, (d["mixed"], d["conv_weight"], d["conv_state"], d["a"], d["b"], d["a_log"], d["dt_bias"],
                              out["q"], out["k"], out["v"], out["g"], out["beta"], 1e-6))]  # fmt: skip
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        graph = capture_global(stream, calls, ops.prepare if prepared else None)
        state = np.zeros_like(h["conv_state"], np.float64)
        for chunk in range(chunks):
            fresh = dict(h, mixed=rng.standard_normal(h["mixed"].shape).astype(np.float16),
                         a=rng.standard_normal(h["a"].shape).astype(np.float16), b=rng.standard_normal(h["b"].shape).astype(np.float16))  # fmt: skip
            for name in ("mixed", "a", "b"):
                d[name].set(fresh[name], stream=stream)
            for arr in out.values():
                arr.fill(cp.nan)
            graph.launch(stream=stream)
            stream.synchronize()
            ref = _conv_prep_ref(fresh, model, state)
            _assert_conv_outputs(out, ref, f"chunk {chunk}: ")
            state = ref[-1]
            np.testing.assert_array_equal(d["conv_state"].get(), state.astype(np.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_gated_rmsnorm_matches_the_float64_reference(model, tokens, in_place):
    cp, rng = _cp(), np.random.default_rng(tokens + 3 * in_place)
    _, hv, _, dv = _linear_dims(model)
    o_h = rng.standard_normal((tokens, hv, dv)).astype(np.float16)
    z_wide = rng.standard_normal((tokens, 2 * hv * dv)).astype(np.float16)  # z: a column slice, as of a fused qkvz output
    w_h = (1.0 + 0.1 * rng.standard_normal(dv)).astype(np.float16)
    o, z = cp.asarray(o_h), cp.asarray(z_wide)[:, hv * dv :]
    out = o.reshape(tokens, hv * dv) if in_place else _nan_f16((tokens, hv * dv))
    ops.prepare(ops.gated_rmsnorm, o, z, cp.asarray(w_h), 1e-6, out)()
    ref = gated_delta.gated_rmsnorm(o_h.astype(np.float64), z_wide[:, hv * dv :].astype(np.float64).reshape(tokens, hv, dv),
                                    w_h.astype(np.float64), 1e-6)  # fmt: skip
    assert_close("gated_rmsnorm", out.get(), ref.reshape(tokens, -1))


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("tokens", [1, 9, 300])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_attn_gate_matches_the_float64_reference(model, tokens, in_place):
    cp, rng = _cp(), np.random.default_rng(tokens + 5 * in_place)
    heads, kv_heads, dim = get_preset(model).attention_dims("full")
    attn_h = rng.standard_normal((tokens, heads, dim)).astype(np.float16)
    proj = rng.standard_normal((tokens, (2 * heads + 2 * kv_heads) * dim)).astype(np.float16)  # [q | k | v | gate]
    gate = cp.asarray(proj)[:, (heads + 2 * kv_heads) * dim :]
    attn = cp.asarray(attn_h)
    out = attn.reshape(tokens, -1) if in_place else _nan_f16((tokens, heads * dim))
    ops.prepare(ops.attn_gate, attn, gate, out)()
    ref = attn_h.astype(np.float64).reshape(tokens, -1) * sigmoid(proj[:, (heads + 2 * kv_heads) * dim :])
    assert_close("attn_gate", out.get(), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ops.ACTIVATIONS)
@pytest.mark.parametrize("tokens", [1, 33, 300])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_gated_act_matches_the_float64_reference(model, tokens, activation):
    cp, rng = _cp(), np.random.default_rng(tokens + len(activation))
    inter = get_preset(model).shared_expert_intermediate_size
    gate_up_h = (2 * rng.standard_normal((tokens, 2 * inter))).astype(np.float16)
    out = _nan_f16((tokens, inter))
    ops.prepare(ops.gated_act, cp.asarray(gate_up_h), out, activation)()
    x = gate_up_h.astype(np.float64)
    ref = blocks.ACTIVATIONS[activation](x[:, :inter]) * x[:, inter:]
    assert_close(f"gated_act {activation}", out.get(), ref)
    wide = cp.asarray(np.concatenate([gate_up_h, gate_up_h[:, :8]], axis=1))  # rows spaced wider: same bits
    again = _nan_f16((tokens, inter))
    ops.gated_act(wide[:, : 2 * inter], again, activation)
    np.testing.assert_array_equal(again.get().view(np.uint16), out.get().view(np.uint16))


def _partial_rope_ref(qkv, q_norm_w, k_norm_w, eps, theta, pos, q_heads, kv_heads, dim, rotary):
    """(q, k, v) float64 of the gated full attention's prologue: per-head RMSNorm by the given scale, then
    impbench.reference.blocks.rope over the first `rotary` dims (as reference.qwen3_5_moe.full_sublayer)."""
    tokens = qkv.shape[0]
    x = np.asarray(qkv, np.float64).reshape(tokens, q_heads + 2 * kv_heads, dim)
    q = blocks.rms_norm(x[:, :q_heads], np.asarray(q_norm_w, np.float64), eps)
    k = blocks.rms_norm(x[:, q_heads : q_heads + kv_heads], np.asarray(k_norm_w, np.float64), eps)
    positions = pos + np.arange(tokens)

    def rotate(y):
        return np.concatenate([blocks.rope(y[..., :rotary], positions, theta), y[..., rotary:]], axis=-1)

    return rotate(q), rotate(k), x[:, q_heads + kv_heads :]


@pytest.mark.gpu
@pytest.mark.parametrize("form,steps", [("auto", 4), ("wide", 2), ("wide", 8)])
@pytest.mark.parametrize("tokens,pos", [(1, 0), (37, 5), (300, 1000)])
@pytest.mark.parametrize("model", HYBRID_MODELS)
def test_qkv_post_partial_rotary_on_a_column_slice_of_the_gated_projection(model, tokens, pos, form, steps):
    cp, rng = _cp(), np.random.default_rng(tokens + pos + steps)
    p = get_preset(model)
    heads, kv_heads, dim = p.attention_dims("full")
    rotary, theta = int(dim * p.partial_rotary_factor), p.rope_theta
    width = (heads + 2 * kv_heads) * dim
    proj_h = (2 * rng.standard_normal((tokens, width + heads * dim))).astype(np.float16)  # [q | k | v | gate]
    qkv = cp.asarray(proj_h)[:, :width]
    norm_h = [(1.0 + 0.2 * rng.standard_normal(dim)).astype(np.float16) for _ in range(2)]  # the scale itself (1 + w folded)
    max_len = pos + tokens + 9
    q_out, k_cache, v_cache = _nan_f16((tokens, heads, dim)), _nan_f16((max_len, kv_heads, dim)), _nan_f16((max_len, kv_heads, dim))
    ops.prepare(ops.qkv_post, qkv, cp.asarray(norm_h[0]), cp.asarray(norm_h[1]), p.rms_norm_eps, theta, cp.asarray([pos], cp.int32),
                q_out, k_cache, v_cache, form=form, steps=steps, rotary_dim=rotary)()  # fmt: skip
    q_ref, k_ref, v_ref = _partial_rope_ref(proj_h[:, :width], *norm_h, p.rms_norm_eps, theta, pos, heads, kv_heads, dim, rotary)
    rows = slice(pos, pos + tokens)
    assert_close("q", q_out.get(), q_ref)
    assert_close("k", k_cache.get()[rows], k_ref)
    np.testing.assert_array_equal(v_cache.get()[rows], v_ref.astype(np.float16))  # v is copied
    untouched = np.ones(max_len, bool)
    untouched[rows] = False
    assert np.isnan(k_cache.get()[untouched]).all() and np.isnan(v_cache.get()[untouched]).all()
    # the pass-through dims are the normed values, not rotated: position 0 rotates nothing at all
    np.testing.assert_array_equal(proj_h[:, :width], qkv.get())  # the input is only read


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["wide", "narrow"])
def test_qkv_post_full_rotary_on_a_strided_qkv_equals_the_contiguous_one(form):
    # rotary_dim = D (qwen3-coder's shapes): a column slice gives the same bits as the same values contiguous
    cp, rng = _cp(), np.random.default_rng(31)
    tokens, heads, kv_heads, dim, pos = 40, 32, 4, 128, 77
    width = (heads + 2 * kv_heads) * dim
    wide = cp.asarray((2 * rng.standard_normal((tokens, width + 64))).astype(np.float16))
    qn, kn = (_rand_f16(rng, (dim,)) for _ in range(2))
    outs = []
    for qkv in (wide[:, :width], cp.ascontiguousarray(wide[:, :width])):
        q_out, k_cache, v_cache = _nan_f16((tokens, heads, dim)), _nan_f16((pos + tokens, kv_heads, dim)), _nan_f16((pos + tokens, kv_heads, dim))
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e6, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, form=form, rotary_dim=dim)
        outs.append([a.get().view(np.uint16) for a in (q_out, k_cache, v_cache)])
    for strided, contiguous in zip(*outs):
        np.testing.assert_array_equal(strided, contiguous)
    _check_qkv_post(cp.ascontiguousarray(wide[:, :width]), qn, kn, pos, *(cp.asarray(a.view(np.float16)) for a in outs[0]), 1e6)


# -- GPU: Gemma-4's ops -------------------------------------------------------------------------------


def _gemma_attention_ref(qkv, q_norm_w, k_norm_w, p, kind, pos, qk_norm=True, rope_pairs="preset"):
    """(q, k, v) float64 of a Gemma-4 attention prologue as impbench.reference.gemma4.attention_sublayer forms
    them from the projections: q, k RMS-normed by their weights, V the weightless RMSNorm of the v projection or,
    without one (K = V), of the raw k projection; RoPE by blocks.rope with the full layers' rotated pairs."""
    heads, kv_heads, dim = p.attention_dims(kind)
    tokens, eps = qkv.shape[0], p.rms_norm_eps
    x = np.asarray(qkv, np.float64).reshape(tokens, -1, dim)
    raw_q, raw_k = x[:, :heads], x[:, heads : heads + kv_heads]
    raw_v = raw_k if not p.has_v_proj(kind) else x[:, heads + kv_heads :]
    q = blocks.rms_norm(raw_q, np.asarray(q_norm_w, np.float64), eps) if qk_norm else raw_q
    k = blocks.rms_norm(raw_k, np.asarray(k_norm_w, np.float64), eps) if qk_norm else raw_k
    v = blocks.rms_norm(raw_v, np.ones(dim), eps)
    theta, pairs = p.rope_theta, None
    if kind == "full":
        theta, pairs = p.full_rope_theta, int(dim // 2 * p.full_partial_rotary_factor)
    if rope_pairs != "preset":
        pairs = rope_pairs
    positions = pos + np.arange(tokens)
    return blocks.rope(q, positions, theta, rotated_pairs=pairs), blocks.rope(k, positions, theta, rotated_pairs=pairs), v


def _gemma_qkv_case(rng, p, kind, tokens, max_len):
    heads, kv_heads, dim = p.attention_dims(kind)
    v_heads = kv_heads if p.has_v_proj(kind) else 0
    qkv_h = (2 * rng.standard_normal((tokens, (heads + kv_heads + v_heads) * dim))).astype(np.float16)
    norm_h = [(1.0 + 0.2 * rng.standard_normal(dim)).astype(np.float16) for _ in range(2)]
    outs = _nan_f16((tokens, heads, dim)), _nan_f16((max_len, kv_heads, dim)), _nan_f16((max_len, kv_heads, dim))
    return qkv_h, norm_h, outs


def _assert_cache_rows(name, cache, rows, ref):
    assert_close(name, cache[rows], ref)
    untouched = np.ones(cache.shape[0], bool)
    untouched[rows] = False
    assert np.isnan(cache[untouched]).all(), f"{name}: rows outside the chunk written"


@pytest.mark.gpu
@pytest.mark.parametrize("form,steps", [("auto", 4), ("wide", 8), ("narrow", 4)])
@pytest.mark.parametrize("tokens,pos", [(1, 0), (37, 5), (300, 1000), (7, 20000)])
@pytest.mark.parametrize("kind", ["sliding", "full"])
@pytest.mark.parametrize("model", GEMMA_MODELS)
def test_qkv_post_gemma4_matches_the_reference(model, kind, tokens, pos, form, steps):
    # sliding: V = weightless norm of the v head, RoPE over every pair; full: K = V (V the weightless norm of the
    # raw k head), proportional RoPE (the first quarter of the pairs). D 512 has only the narrow form.
    cp, rng = _cp(), np.random.default_rng(tokens + pos + steps + len(model) + len(kind))
    p = get_preset(model)
    dim = p.attention_dims(kind)[2]
    max_len = pos + tokens + 9
    qkv_h, norm_h, (q_out, k_cache, v_cache) = _gemma_qkv_case(rng, p, kind, tokens, max_len)
    qkv = cp.asarray(qkv_h)
    k_eq_v = not p.has_v_proj(kind)
    theta, rope = p.rope_theta, {}
    if kind == "full":
        theta, rope = p.full_rope_theta, {"rope_pairs": int(dim // 2 * p.full_partial_rotary_factor)}
    args = (qkv, cp.asarray(norm_h[0]), cp.asarray(norm_h[1]), p.rms_norm_eps, theta, cp.asarray([pos], cp.int32), q_out,
            k_cache, v_cache)  # fmt: skip
    kwargs = dict(form=form, steps=steps, v_norm=True, k_eq_v=k_eq_v, **rope)
    if form == "wide" and dim > 256:
        with pytest.raises(ValueError, match="16-byte form"):
            ops.prepare(ops.qkv_post, *args, **kwargs)
        return
    ops.prepare(ops.qkv_post, *args, **kwargs)()
    q_ref, k_ref, v_ref = _gemma_attention_ref(qkv_h, *norm_h, p, kind, pos)
    rows = slice(pos, pos + tokens)
    assert_close("q", q_out.get(), q_ref)
    _assert_cache_rows("k", k_cache.get(), rows, k_ref)
    _assert_cache_rows("v", v_cache.get(), rows, v_ref)
    np.testing.assert_array_equal(qkv.get(), qkv_h)  # the input is only read
    if kind == "full":  # the pairs from rope_pairs on pass through: the same bits as at position 0, where none rotates
        pairs = rope["rope_pairs"]
        still = np.r_[pairs : dim // 2, dim // 2 + pairs : dim]
        at_pos = q_out.get()[..., still]
        ops.qkv_post(*args[:5], cp.asarray([0], cp.int32), *args[6:], **kwargs)
        np.testing.assert_array_equal(at_pos.view(np.uint16), q_out.get()[..., still].view(np.uint16))


@pytest.mark.gpu
@pytest.mark.parametrize("qk_norm", [True, False])
@pytest.mark.parametrize("form", ["wide", "narrow"])
@pytest.mark.parametrize("kind", ["sliding", "full"])
def test_qkv_post_gemma4_options_at_other_head_dims_and_without_qk_norm(kind, form, qk_norm):
    # the Gemma options are independent of the preset: a D 128 head, 8 q heads and 2 kv heads, V normed or K = V,
    # with and without the q/k norm, all pairs or the first 16 rotating, both forms
    cp, rng = _cp(), np.random.default_rng(11 + qk_norm + 2 * len(form))
    p = SimpleNamespace(attention_dims=lambda kind: (8, 2, 128), has_v_proj=lambda kind: kind == "sliding", rms_norm_eps=1e-6,
                        rope_theta=1e4, full_rope_theta=1e6, full_partial_rotary_factor=0.125)  # fmt: skip
    tokens, pos = 45, 300
    qkv_h, norm_h, (q_out, k_cache, v_cache) = _gemma_qkv_case(rng, p, kind, tokens, pos + tokens)
    theta = 1e6 if kind == "full" else 1e4
    rope = {"rope_pairs": 8} if kind == "full" else {}
    ops.qkv_post(cp.asarray(qkv_h), cp.asarray(norm_h[0]) if qk_norm else None, cp.asarray(norm_h[1]) if qk_norm else None,
                 1e-6, theta, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, qk_norm=qk_norm, form=form, v_norm=True,
                 k_eq_v=kind == "full", **rope)  # fmt: skip
    q_ref, k_ref, v_ref = _gemma_attention_ref(qkv_h, *norm_h, p, kind, pos, qk_norm=qk_norm)
    assert_close("q", q_out.get(), q_ref)
    _assert_cache_rows("k", k_cache.get(), slice(pos, None), k_ref)
    _assert_cache_rows("v", v_cache.get(), slice(pos, None), v_ref)


@pytest.mark.gpu
@pytest.mark.parametrize("form", ["wide", "narrow"])
def test_qkv_post_rope_pairs_half_the_head_is_the_default_and_zero_rotates_nothing(form):
    cp = _cp()
    tokens, heads, kv_heads, dim, pos = 20, 8, 2, 64, 500
    outs = {}
    for pairs in (None, dim // 2, 0):
        qkv, qn, kn, q_out, k_cache, v_cache = _qkv_case(np.random.default_rng(13), tokens, heads, kv_heads, dim, pos + tokens)
        ops.qkv_post(qkv, qn, kn, 1e-6, 1e4, cp.asarray([pos], cp.int32), q_out, k_cache, v_cache, form=form, rope_pairs=pairs)
        outs[pairs] = [a.get() for a in (q_out, k_cache[pos:], v_cache[pos:])]
        if pairs is None:  # the plain path, checked as the Qwen3 prologue is
            _check_qkv_post(qkv, qn, kn, pos, q_out, k_cache, v_cache, 1e4)
    for default, full in zip(outs[None], outs[dim // 2]):
        np.testing.assert_array_equal(default.view(np.uint16), full.view(np.uint16))
    x = qkv.get().astype(np.float64).reshape(tokens, heads + 2 * kv_heads, dim)  # rope_pairs 0: normed, unrotated
    assert_close("q, no pair rotating", outs[0][0], rmsnorm_ref(x[:, :heads], qn.get(), 1e-6))
    assert_close("k, no pair rotating", outs[0][1], rmsnorm_ref(x[:, heads : heads + kv_heads], kn.get(), 1e-6))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 37, 300])
@pytest.mark.parametrize("n_out", [1, 2, 3])
@pytest.mark.parametrize("model", GEMMA_MODELS)
def test_post_attn_norms_matches_the_float64_reference(model, n_out, tokens):
    cp, rng = _cp(), np.random.default_rng(tokens + 10 * n_out + len(model))
    p = get_preset(model)
    hidden, eps = p.hidden_size, p.rms_norm_eps
    x_h = (3 * rng.standard_normal((tokens, hidden))).astype(np.float16)  # the O projection's output
    resid_h = (53 * rng.standard_normal((tokens, hidden))).astype(np.float16)  # the stream: rms ~ sqrt(H) embeddings
    w_h = [(1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float16) for _ in range(n_out + 1)]
    w_h[-1] = (w_h[-1] * hidden**-0.5).astype(np.float16)  # the router prenorm's weight: router_scale * H^-1/2
    x, resid = cp.asarray(x_h), cp.asarray(resid_h)
    outs = [_nan_f16((tokens, hidden)) for _ in range(n_out)]
    ops.prepare(ops.post_attn_norms, x, resid, [cp.asarray(w) for w in w_h], eps, outs)()
    a = blocks.rms_norm(x_h.astype(np.float64), w_h[0].astype(np.float64), eps)
    h = (resid_h.astype(np.float64) + a).astype(np.float16)
    assert_close("x <- a", x.get(), a)
    assert_close("residual <- h", resid.get(), h)
    # the FP32 a enters the sum, rounded once: an FP16 ulp from the rounded float64 sum at most (a last-bit tie),
    # plus a's own FP32 error (~1e-6 of it) where the sum cancels
    assert_within_ulp("residual <- h", resid.get(), h, 1e-5 * np.abs(a))
    for j, out in enumerate(outs):
        assert_close(f"outs[{j}]", out.get(), blocks.rms_norm(h.astype(np.float64), w_h[j + 1].astype(np.float64), eps))
    # prepared == direct, bit for bit; with out_kperm (two outs or more) the pre-MoE out also in kperm order
    x2, resid2 = cp.asarray(x_h), cp.asarray(resid_h)
    again = [_nan_f16((tokens, hidden)) for _ in range(n_out)]
    kp = _nan_f16((tokens, hidden)) if n_out >= 2 else None
    ops.post_attn_norms(x2, resid2, [cp.asarray(w) for w in w_h], eps, again, out_kperm=kp)
    for got, want in zip([x2, resid2, *again], [x, resid, *outs]):
        np.testing.assert_array_equal(got.get().view(np.uint16), want.get().view(np.uint16))
    if kp is not None:
        from impbench.kernels import moe

        np.testing.assert_array_equal(kp.get().view(np.uint16), moe.to_kperm(outs[1].get()).view(np.uint16))


@pytest.mark.gpu
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("shape", [(1, 262144), (3, 40), (2, 8)])
def test_softcap_matches_the_float64_reference(shape, in_place):
    cp, rng = _cp(), np.random.default_rng(shape[1] + in_place)
    cap = 30.0
    x_h = (40 * rng.standard_normal(shape)).astype(np.float16)  # past the cap too: saturates to +-30
    x = cp.asarray(x_h)
    out = x if in_place else _nan_f16(shape)
    ops.prepare(ops.softcap, x, cap, out)()
    ref = cap * np.tanh(x_h.astype(np.float64) / cap)
    got = out.get().astype(np.float64)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-6)  # one FP16 rounding (2^-11 relative) plus tanhf's ulps


@pytest.mark.gpu
@pytest.mark.parametrize("tokens,hidden", [(1, 2816), (37, 2816), (64, 256)])
def test_embed_scale_multiplies_in_fp32_and_rounds_once(tokens, hidden):
    cp, rng = _cp(), np.random.default_rng(tokens + hidden)
    vocab = 1000
    table = _rand_f16(rng, (vocab, hidden))
    ids_h = rng.integers(0, vocab, tokens).astype(np.int32)
    ids_h[0] = vocab  # out of range: a zero row, scaled or not
    out = _nan_f16((tokens, hidden))
    scale = hidden**0.5
    ops.prepare(ops.embed, cp.asarray(ids_h), table, out, scale)()
    rows = table.get().astype(np.float64)[np.minimum(ids_h, vocab - 1)] * float(np.float32(scale))
    rows[ids_h >= vocab] = 0.0
    assert_close("embed * scale", out.get(), rows)
    # the FP32 product rounded once: at most an FP16 ulp from the rounded float64 product
    assert_within_ulp("embed * scale", out.get(), rows.astype(np.float16))
