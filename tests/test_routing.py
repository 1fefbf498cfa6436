"""kernels/routing: float64 NumPy oracles (reused by the reference forward), wrapper checks, and on the
GPU top-k, the permutation (exact, stable, deterministic) and combine against the oracles, the
engine's forms (topk_count + permute_counted, combine_rmsnorm) against the reference ones, edge cases
and global-mode captures replayed with new router logits; Gemma-4's per-expert weight scales in the
top-k and its post_ffn_norms against float64."""

import numpy as np
import pytest
from capture_util import capture_global
from test_ops import assert_close, fake, sigmoid

from impbench.kernels import routing
from impbench.presets import get_preset

REL_ERR_FP16 = 2e-3


# -- float64 oracles -------------------------------------------------------------------------


def topk_softmax_ref(logits, k, renormalize, expert_scale=None):
    """(ids int32 [T, k] largest first, ties to the lower expert id; weights float64 [T, k]), each weight
    times expert_scale[its id] where given (after the renormalisation)."""
    x = np.asarray(logits, dtype=np.float64)
    probs = np.exp(x - x.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-x, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(probs, ids, axis=1)
    if renormalize:
        weights = weights / weights.sum(axis=1, keepdims=True)
    if expert_scale is not None:
        weights = weights * np.asarray(expert_scale, np.float64)[ids]
    return ids.astype(np.int32), weights


def permutation_ref(topk_ids, topk_weights, num_experts):
    """Stable counting sort of the (t, j) pairs by expert: (expert_offsets, row_token, row_weight, token_rows)."""
    topk_ids = np.asarray(topk_ids)
    tokens, k = topk_ids.shape
    flat = topk_ids.reshape(-1)
    order = np.argsort(flat, kind="stable")  # row r holds pair order[r]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=num_experts))]).astype(np.int32)
    token_rows = np.empty(tokens * k, np.int32)
    token_rows[order] = np.arange(tokens * k, dtype=np.int32)
    row_weight = np.asarray(topk_weights).reshape(-1)[order]
    return offsets, (order // k).astype(np.int32), row_weight, token_rows.reshape(tokens, k)


def combine_ref(y, token_rows, residual, topk_weights=None):
    """residual[t] + sum_j w[t, j] * y[token_rows[t, j]] in float64 (w = 1 when topk_weights is None)."""
    gathered = np.asarray(y, dtype=np.float64)[np.asarray(token_rows)]  # [T, k, H]
    weights = np.ones(token_rows.shape) if topk_weights is None else np.asarray(topk_weights, np.float64)
    return np.asarray(residual, np.float64) + (weights[..., None] * gathered).sum(axis=1)


def rmsnorm64(x, weight, eps=1e-6):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(weight, np.float64)


def post_ffn_norms_ref(y, token_rows, dense, residual, norm_weights, eps, layer_scalar):
    """Gemma-4's block output o = rmsnorm(rmsnorm(dense, w0) + rmsnorm(sum_j y[token_rows[:, j]], w1), w2) and the
    new residual (residual + o) * layer_scalar, float64 [T, H] each."""
    routed = np.asarray(y, np.float64)[np.asarray(token_rows)].sum(axis=1)
    o = rmsnorm64(rmsnorm64(dense, norm_weights[0], eps) + rmsnorm64(routed, norm_weights[1], eps), norm_weights[2], eps)
    return o, (np.asarray(residual, np.float64) + o) * layer_scalar


def rel_err(out, ref) -> float:
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


# -- CPU: oracles and wrapper checks ---------------------------------------------------------


def test_topk_ref_ties_go_to_lower_expert_and_weights_renormalise():
    logits = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    ids, weights = topk_softmax_ref(logits, 2, renormalize=True)
    np.testing.assert_array_equal(ids, [[1, 2]])
    np.testing.assert_allclose(weights, [[0.5, 0.5]])
    _, raw = topk_softmax_ref(logits, 2, renormalize=False)
    assert raw.sum() < 1.0


def test_permutation_ref_groups_rows_by_expert_in_token_order():
    ids = np.array([[2, 0], [0, 1], [2, 1]], np.int32)
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    offsets, row_token, row_weight, token_rows = permutation_ref(ids, weights, 4)
    np.testing.assert_array_equal(offsets, [0, 2, 4, 6, 6])
    np.testing.assert_array_equal(row_token, [0, 1, 1, 2, 0, 2])
    np.testing.assert_array_equal(row_weight, [1, 2, 3, 5, 0, 4])
    np.testing.assert_array_equal(token_rows, [[4, 0], [1, 2], [5, 3]])


def test_combine_ref_unpermutes():
    ids = np.array([[1, 0], [0, 1]], np.int32)
    _, _, _, token_rows = permutation_ref(ids, np.ones((2, 2), np.float32), 2)
    y = np.arange(8, dtype=np.float64).reshape(4, 2)
    out = combine_ref(y, token_rows, np.zeros((2, 2)), np.array([[0.5, 0.25], [1.0, 2.0]]))
    expected = [0.5 * y[token_rows[0, 0]] + 0.25 * y[token_rows[0, 1]], 1.0 * y[token_rows[1, 0]] + 2.0 * y[token_rows[1, 1]]]
    np.testing.assert_allclose(out, expected)


def test_host_arrays_are_rejected_with_value_error():
    ids = np.zeros((4, 2), np.int32)
    with pytest.raises(ValueError, match="cupy device array"):
        routing.topk_softmax(np.zeros((4, 8), np.float16), 2, True, ids, np.zeros((4, 2), np.float32))
    with pytest.raises(ValueError, match="cupy device array"):
        routing.build_permutation(
            ids, np.zeros((4, 2), np.float32), 8, np.zeros(9, np.int32), np.zeros(8, np.int32), np.zeros(8, np.float32), ids
        )
    with pytest.raises(ValueError, match="cupy device array"):
        routing.combine(np.zeros((8, 16), np.float16), ids, np.zeros((4, 16), np.float16), np.zeros((4, 16), np.float16))
    with pytest.raises(ValueError, match="cupy device array"):
        routing.topk_count(np.zeros((4, 8), np.float16), 2, True, ids, np.zeros((4, 2), np.float32), ids, np.zeros((1, 8), np.int32))
    with pytest.raises(ValueError, match="cupy device array"):
        routing.permute_counted(
            ids, np.zeros((4, 2), np.float32), np.zeros((1, 8), np.int32), np.zeros(9, np.int32), np.zeros(8, np.int32),
            np.zeros(8, np.float32), ids,
        )  # fmt: skip
    with pytest.raises(ValueError, match="cupy device array"):
        routing.combine_rmsnorm(
            np.zeros((8, 16), np.float16), ids, np.zeros((4, 16), np.float16), np.zeros((4, 16), np.float16),
            np.zeros(16, np.float16), 1e-6, np.zeros((4, 16), np.float16),
        )  # fmt: skip
    with pytest.raises(ValueError, match="cupy device array"):
        routing.post_ffn_norms(
            np.zeros((8, 16), np.float16), ids, np.zeros((4, 16), np.float16), np.zeros((4, 16), np.float16),
            [np.zeros(16, np.float16)] * 3, 1e-6, 1.0, np.zeros((4, 16), np.float16),
        )  # fmt: skip


def _combine_args(tokens=4, k=2, hidden=16, **over):
    args = {"y": fake((tokens * k, hidden)), "token_rows": fake((tokens, k), np.int32), "residual": fake((tokens, hidden)),
            "out": fake((tokens, hidden)), "topk_weights": fake((tokens, k), np.float32), "shared": fake((tokens, hidden)),
            "shared_gate": fake((tokens, 3))[:, 2:3]}  # fmt: skip
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,match",
    [
        ({"shared": fake((4, 8))}, r"shared must have shape \(4, 16\)"),
        ({"shared": fake((4, 16), np.float32)}, "shared must have dtype float16"),
        ({"shared": fake((4, 20))[:, :16]}, "shared must have 16-byte aligned rows"),
        ({"shared_gate": fake((4, 2))}, r"shared_gate must have shape \(4, 1\)"),
        ({"shared_gate": fake((4,))}, r"shared_gate must have shape \(4, 1\)"),
        ({"shared_gate": fake((4, 1), np.float32)}, "shared_gate must have dtype float16"),
        ({"shared": None}, "shared_gate without shared"),
    ],
)
@pytest.mark.parametrize("norm", [False, True])
def test_combine_shared_expert_arguments_fail_in_one_line(over, match, norm):
    args = _combine_args(**over)
    with pytest.raises(ValueError, match=match) as info:
        if norm:
            routing.combine_rmsnorm(args.pop("y"), args.pop("token_rows"), args.pop("residual"), args.pop("out"), fake((16,)), 1e-6,
                                    fake((4, 16)), **args)  # fmt: skip
        else:
            routing.combine(**args)
    assert "\n" not in str(info.value)


def test_combine_passes_the_shared_rows_and_gate_strides(monkeypatch):
    monkeypatch.setattr(routing, "_kernel", lambda name: name)
    name, grid, block, args = routing._plan_combine(**_combine_args())
    assert name == "combine_f16" and grid == (4,) and block == (32,)
    assert (int(args[-3]), int(args[-1])) == (16, 3)  # shared's and shared_gate's row strides in halves
    _, _, _, plain = routing._plan_combine(**_combine_args(shared=None, shared_gate=None))
    assert [int(a) for a in plain[-4:]] == [0, 0, 0, 0]  # null pointers: no shared expert
    _, _, _, ungated = routing._plan_combine(**_combine_args(shared_gate=None))
    assert int(ungated[-2]) == 0 and ungated[-4] is not None


def test_count_blocks_cover_every_token_and_one_thread_per_expert():
    assert [routing.count_blocks(t) for t in (1, 16, 17, 512)] == [1, 1, 2, 32]
    assert routing.MAX_EXPERTS <= routing.COUNT_THREADS  # permute_counted: thread e sums expert e's count


def test_post_ffn_norms_ref_norms_each_branch_then_the_sum():
    rng = np.random.default_rng(5)
    tokens, k, hidden = 3, 2, 16
    y = rng.standard_normal((tokens * k, hidden))
    token_rows = rng.permutation(tokens * k).reshape(tokens, k)
    dense, residual = rng.standard_normal((tokens, hidden)) * 4, rng.standard_normal((tokens, hidden))
    ones = np.ones(hidden)
    o, new = post_ffn_norms_ref(y, token_rows, dense, residual, (ones, ones, 2 * ones), 0.0, 0.5)
    np.testing.assert_allclose(np.sqrt(np.mean(o**2, axis=-1)), 2.0, rtol=1e-12)  # unit rms times w2
    routed = y[token_rows[1, 0]] + y[token_rows[1, 1]]
    s = dense[1] / np.sqrt(np.mean(dense[1] ** 2)) + routed / np.sqrt(np.mean(routed**2))
    np.testing.assert_allclose(o[1], 2 * s / np.sqrt(np.mean(s**2)), rtol=1e-12)
    np.testing.assert_allclose(new, (residual + o) * 0.5, rtol=1e-12)


def _post_ffn_args(tokens=4, k=2, hidden=16, **over):
    args = {"y": fake((tokens * k, hidden)), "token_rows": fake((tokens, k), np.int32), "dense": fake((tokens, hidden), ptr=0x200000),
            "residual": fake((tokens, hidden)), "norm_weights": tuple(fake((hidden,)) for _ in range(3)), "eps": 1e-6,
            "layer_scalar": 0.75, "out": fake((tokens, hidden)), "next_norm": fake((hidden,)),
            "normed": fake((tokens, hidden))}  # fmt: skip
    args.update(over)
    return args


@pytest.mark.parametrize(
    "over,match",
    [
        ({"token_rows": fake((4, 33), np.int32)}, r"post_ffn_norms: token_rows must be \[T >= 1, 1 <= k <= 32\]"),
        ({"dense": fake((4, 16), np.float32)}, "dense must have dtype float16"),
        ({"residual": fake((4, 8))}, r"residual must have shape \(4, 16\)"),
        ({"out": fake((3, 16))}, r"out must have shape \(4, 16\)"),
        ({"y": fake((8, 24))}, "disagree on hidden size"),
        ({"dense": fake((4, 12)), "residual": fake((4, 12)), "out": fake((4, 12)), "y": fake((8, 12))}, "multiple of 8"),
        ({"norm_weights": (fake((16,)), fake((16,)))}, "norm_weights must be three fp16"),
        ({"norm_weights": None}, "norm_weights must be three fp16"),
        ({"norm_weights": (fake((16,)), fake((8,)), fake((16,)))}, r"norm_weights\[1\] must have shape \(16,\)"),
        ({"norm_weights": (fake((16,)), fake((16,)), fake((16,), np.float32))}, r"norm_weights\[2\] must have dtype float16"),
        ({"normed": None}, "next_norm and normed go together"),
        ({"next_norm": None}, "next_norm and normed go together"),
        ({"next_norm": fake((8,))}, r"next_norm must have shape \(16,\)"),
        ({"normed": fake((4, 8))}, r"normed must have shape \(4, 16\)"),
        ({"layer_scalar": float("nan")}, "layer_scalar must be a finite number"),
        ({"residual": fake((4, 20))[:, 2:18]}, "residual must be C-contiguous"),
        ({"y": fake((8, 16), ptr=0x100008)}, "y must start on a 16-byte boundary"),
        ({"norm_weights": (fake((16,)), fake((16,)), fake((16,), ptr=0x100004))}, r"norm_weights\[2\] must start on a 16-byte"),
    ],
)
def test_post_ffn_norms_arguments_fail_in_one_line(over, match):
    with pytest.raises(ValueError, match=match) as info:
        routing.post_ffn_norms(**_post_ffn_args(**over))
    assert "\n" not in str(info.value)


def test_post_ffn_norms_rejects_out_over_dense():
    args = _post_ffn_args()
    with pytest.raises(ValueError, match="out must not be dense"):
        routing.post_ffn_norms(**{**args, "out": args["dense"]})


@pytest.mark.parametrize(
    "hidden,chunks,threads", [(8, 1, 32), (24, 1, 32), (256, 1, 32), (2048, 1, 256), (2816, 2, 192), (4104, 4, 160), (8192, 4, 256)]
)
def test_post_ffn_norms_spreads_the_chunks_over_the_block(monkeypatch, hidden, chunks, threads):
    # Gemma-4's H 2816 is 352 chunks: 2 a thread over 192 threads (the last 16 threads one each)
    monkeypatch.setattr(routing, "_kernel", lambda name: name)
    name, grid, block, args = routing._plan_post_ffn_norms(**_post_ffn_args(tokens=3, k=8, hidden=hidden))
    assert name == f"post_ffn_norms_f16_c{chunks}" and grid == (3,) and block == (threads,)
    assert chunks * threads >= hidden // 8 and threads % 32 == 0 and threads <= routing.COMBINE_THREADS
    assert isinstance(args[-3], np.float32) and float(args[-3]) == 0.75  # layer_scalar, FP32
    assert (int(args[5]), int(args[6]), int(args[7])) == (24, 8, hidden)  # rows of y, k, H
    _, _, _, plain = routing._plan_post_ffn_norms(**_post_ffn_args(hidden=hidden, next_norm=None, normed=None))
    assert [int(a) for a in plain[-2:]] == [0, 0]  # null next_norm / normed: no next-layer norm


def test_post_ffn_norms_takes_a_stacked_norm_array(monkeypatch):
    monkeypatch.setattr(routing, "_kernel", lambda name: name)
    stacked = fake((3, 16))
    _, _, _, args = routing._plan_post_ffn_norms(**_post_ffn_args(norm_weights=stacked))
    assert [a.data.ptr for a in args[8:11]] == [stacked.data.ptr + 32 * i for i in range(3)]


@pytest.mark.parametrize("count", [False, True])
def test_expert_scale_is_checked_and_passed_last(monkeypatch, count):
    monkeypatch.setattr(routing, "_kernel", lambda name: name)
    logits, ids, weights = fake((40, 8)), fake((40, 2), np.int32), fake((40, 2), np.float32)
    extra = (fake((40, 2), np.int32), fake((3, 8), np.int32)) if count else ()
    plan = routing._plan_topk_count if count else routing._plan_topk_softmax
    scale = fake((8,), np.float32)
    name, _, _, args = plan(logits, 2, True, ids, weights, *extra, expert_scale=scale)
    assert name == ("topk_count_n4" if count else "topk_softmax_n4") and args[-1] is scale
    assert args[5] is ids and args[6] is weights and len(args) == (10 if count else 8)
    _, _, _, plain = plan(logits, 2, True, ids, weights, *extra)
    assert int(plain[-1]) == 0  # null: no per-expert scale
    for bad, match in ((fake((9,), np.float32), r"expert_scale must have shape \(8,\)"), (fake((8,)), "expert_scale must have dtype float32")):
        with pytest.raises(ValueError, match=match) as info:
            plan(logits, 2, True, ids, weights, *extra, expert_scale=bad)
        assert "\n" not in str(info.value)


# -- GPU -------------------------------------------------------------------------------------


def _cp():
    import cupy

    return cupy


def _routing_buffers(tokens, k, experts):
    """Outputs poisoned: NaN weights, -7 ids and rows."""
    cp = _cp()
    rows = tokens * k
    return {
        "topk_ids": cp.full((tokens, k), -7, cp.int32),
        "topk_weights": cp.full((tokens, k), cp.nan, cp.float32),
        "expert_offsets": cp.full(experts + 1, -7, cp.int32),
        "row_token": cp.full(rows, -7, cp.int32),
        "row_weight": cp.full(rows, cp.nan, cp.float32),
        "token_rows": cp.full((tokens, k), -7, cp.int32),
    }


def _permute(b, experts):
    routing.build_permutation(
        b["topk_ids"], b["topk_weights"], experts, b["expert_offsets"], b["row_token"], b["row_weight"], b["token_rows"]
    )


def _replay_and_check(graph, stream, rng, b, logits, residual, y, k):
    """Replay a captured top-k -> permutation -> combine graph on new router logits and residual, the
    permutation's outputs poisoned first, and check each stage against the float64 references."""
    cp = _cp()
    tokens, experts = logits.shape
    logits_h = (rng.standard_normal((tokens, experts)) * 2).astype(np.float16)
    residual_h = rng.standard_normal(residual.shape).astype(np.float16)
    logits.set(logits_h, stream=stream)
    residual.set(residual_h, stream=stream)
    for name in ("expert_offsets", "row_token", "token_rows"):
        b[name].fill(-7)
    b["row_weight"].fill(cp.nan)
    graph.launch(stream=stream)
    stream.synchronize()
    h = _host(b)
    ids, weights = topk_softmax_ref(logits_h, k, True)
    np.testing.assert_array_equal(h["topk_ids"], ids)
    np.testing.assert_allclose(h["topk_weights"], weights, rtol=1e-5)
    _assert_permutation(h, experts)
    ref = combine_ref(y.get(), h["token_rows"], residual_h, h["topk_weights"])
    assert rel_err(residual.get(), ref) <= REL_ERR_FP16


def _host(b):
    return {name: arr.get() for name, arr in b.items()}


def _assert_permutation(h, experts):
    """Exact match with the stable oracle, plus the invariants the expert GEMMs rely on."""
    tokens, k = h["topk_ids"].shape
    offsets, row_token, row_weight, token_rows = permutation_ref(h["topk_ids"], h["topk_weights"], experts)
    np.testing.assert_array_equal(h["expert_offsets"], offsets)
    np.testing.assert_array_equal(h["row_token"], row_token)
    np.testing.assert_array_equal(h["row_weight"], row_weight)
    np.testing.assert_array_equal(h["token_rows"], token_rows)
    got = h["expert_offsets"]
    assert got[0] == 0 and got[-1] == tokens * k and (np.diff(got) >= 0).all()
    rows = h["token_rows"].reshape(-1)
    assert np.array_equal(np.sort(rows), np.arange(tokens * k))  # each (t, j) exactly once
    expert_of_row = np.repeat(np.arange(experts), np.diff(got))
    np.testing.assert_array_equal(expert_of_row[rows], h["topk_ids"].reshape(-1))  # grouped by expert
    np.testing.assert_array_equal(h["row_token"][rows], np.repeat(np.arange(tokens), k))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "tokens,experts,k,renormalize",
    [(1, 128, 8, True), (513, 128, 8, True), (64, 128, 8, False), (40, 256, 8, True), (33, 512, 16, True), (50, 8, 2, True), (7, 40, 3, False)],
)
def test_topk_softmax_matches_float64(tokens, experts, k, renormalize):
    cp, rng = _cp(), np.random.default_rng(tokens + experts)
    logits_h = (rng.standard_normal((tokens, experts)) * 2).astype(np.float16)
    b = _routing_buffers(tokens, k, experts)
    routing.topk_softmax(cp.asarray(logits_h), k, renormalize, b["topk_ids"], b["topk_weights"])
    ids, weights = topk_softmax_ref(logits_h, k, renormalize)
    np.testing.assert_array_equal(b["topk_ids"].get(), ids)
    np.testing.assert_allclose(b["topk_weights"].get(), weights, rtol=1e-5)
    if renormalize:
        np.testing.assert_allclose(b["topk_weights"].get().sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.gpu
def test_topk_softmax_ties_go_to_the_lower_expert():
    cp, rng = _cp(), np.random.default_rng(11)
    tokens, experts, k = 100, 128, 8
    logits_h = rng.integers(-2, 3, (tokens, experts)).astype(np.float16)  # five values: ties everywhere
    b = _routing_buffers(tokens, k, experts)
    routing.topk_softmax(cp.asarray(logits_h), k, True, b["topk_ids"], b["topk_weights"])
    ids, weights = topk_softmax_ref(logits_h, k, True)
    np.testing.assert_array_equal(b["topk_ids"].get(), ids)
    np.testing.assert_allclose(b["topk_weights"].get(), weights, rtol=1e-5)


def _random_topk(rng, tokens, k, experts, skew=0.0):
    """Distinct experts per token, optionally skewed toward low ids (some experts then get no rows)."""
    scores = rng.standard_normal((tokens, experts)) - skew * np.arange(experts) / experts
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k].astype(np.int32)
    weights = rng.random((tokens, k)).astype(np.float32)
    return ids, weights


@pytest.mark.gpu
@pytest.mark.parametrize(
    "tokens,k,experts,skew",
    [(1, 8, 128, 0.0), (512, 8, 128, 0.0), (2048, 8, 128, 0.0), (2048, 8, 256, 3.0), (300, 16, 512, 0.0), (77, 2, 8, 0.0), (1000, 4, 512, 8.0)],
)
def test_build_permutation_is_the_stable_counting_sort(tokens, k, experts, skew):
    rng = np.random.default_rng(tokens * k + experts)
    ids, weights = _random_topk(rng, tokens, k, experts, skew)
    b = _routing_buffers(tokens, k, experts)
    b["topk_ids"].set(ids)
    b["topk_weights"].set(weights)
    _permute(b, experts)
    first = _host(b)
    _assert_permutation(first, experts)
    if skew:
        assert (np.diff(first["expert_offsets"]) == 0).any()  # experts with no rows were exercised
    for name in ("expert_offsets", "row_token", "row_weight", "token_rows"):
        b[name].fill(-3)
    _permute(b, experts)
    second = _host(b)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 3000])
def test_build_permutation_one_expert_takes_every_row(tokens):
    rng = np.random.default_rng(tokens)
    experts = 64
    b = _routing_buffers(tokens, 1, experts)
    b["topk_ids"].fill(37)
    b["topk_weights"].set(rng.random((tokens, 1)).astype(np.float32))
    _permute(b, experts)
    h = _host(b)
    _assert_permutation(h, experts)
    np.testing.assert_array_equal(h["expert_offsets"], [0] * 38 + [tokens] * 27)


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("tokens,k,hidden,rows_extra", [(1, 8, 2048, 0), (257, 8, 2048, 0), (64, 2, 256, 5), (9, 16, 64, 0), (5, 3, 8, 0)])
def test_combine_matches_float64(tokens, k, hidden, rows_extra, weighted):
    cp, rng = _cp(), np.random.default_rng(tokens + hidden)
    rows = tokens * k + rows_extra  # y may have spare rows (a buffer sized for the largest chunk)
    y = cp.asarray(rng.standard_normal((rows, hidden)).astype(np.float16))
    token_rows_h = rng.permutation(tokens * k).astype(np.int32).reshape(tokens, k)
    weights_h = rng.random((tokens, k)).astype(np.float32)
    residual_h = (rng.standard_normal((tokens, hidden)) * 3).astype(np.float16)
    out = cp.full((tokens, hidden), cp.nan, cp.float16)
    routing.combine(y, cp.asarray(token_rows_h), cp.asarray(residual_h), out, cp.asarray(weights_h) if weighted else None)
    ref = combine_ref(y.get(), token_rows_h, residual_h, weights_h if weighted else None)
    assert rel_err(out.get(), ref) <= REL_ERR_FP16


@pytest.mark.gpu
def test_combine_in_place_on_the_residual_is_deterministic():
    cp, rng = _cp(), np.random.default_rng(12)
    tokens, k, hidden = 128, 8, 2048
    y = cp.asarray(rng.standard_normal((tokens * k, hidden)).astype(np.float16))
    token_rows = cp.asarray(rng.permutation(tokens * k).astype(np.int32).reshape(tokens, k))
    weights = cp.asarray(rng.random((tokens, k)).astype(np.float32))
    residual_h = rng.standard_normal((tokens, hidden)).astype(np.float16)
    results = []
    for _ in range(2):
        residual = cp.asarray(residual_h)
        routing.combine(y, token_rows, residual, residual, weights)
        results.append(residual.get().view(np.uint16))
    np.testing.assert_array_equal(results[0], results[1])
    assert rel_err(results[0].view(np.float16), combine_ref(y.get(), token_rows.get(), residual_h, weights.get())) <= REL_ERR_FP16


@pytest.mark.gpu
def test_wrappers_reject_bad_shapes():
    cp = _cp()
    b = _routing_buffers(4, 2, 8)
    with pytest.raises(ValueError, match="topk_ids"):
        routing.topk_softmax(cp.zeros((4, 8), cp.float16), 3, True, b["topk_ids"], b["topk_weights"])
    with pytest.raises(ValueError, match="k must be"):
        routing.topk_softmax(cp.zeros((4, 8), cp.float16), 17, True, b["topk_ids"], b["topk_weights"])
    with pytest.raises(ValueError, match="experts"):
        routing.topk_softmax(cp.zeros((4, 513), cp.float16), 2, True, b["topk_ids"], b["topk_weights"])
    with pytest.raises(ValueError, match="expert_offsets"):
        routing.build_permutation(
            b["topk_ids"], b["topk_weights"], 9, b["expert_offsets"], b["row_token"], b["row_weight"], b["token_rows"]
        )
    with pytest.raises(ValueError, match="hidden"):
        routing.combine(cp.zeros((8, 32), cp.float16), b["token_rows"], cp.zeros((4, 16), cp.float16), cp.zeros((4, 16), cp.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("prepared", [False, True])
def test_global_capture_replays_with_new_router_logits(prepared):
    cp = _cp()

    rng = np.random.default_rng(13)
    tokens, experts, k, hidden = 96, 128, 8, 256
    logits = cp.zeros((tokens, experts), cp.float16)
    b = _routing_buffers(tokens, k, experts)
    y = cp.asarray(rng.standard_normal((tokens * k, hidden)).astype(np.float16))
    residual = cp.empty((tokens, hidden), cp.float16)
    calls = [
        (routing.topk_softmax, (logits, k, True, b["topk_ids"], b["topk_weights"])),
        (
            routing.build_permutation,
            (b["topk_ids"], b["topk_weights"], experts, b["expert_offsets"], b["row_token"], b["row_weight"], b["token_rows"]),
        ),
        (routing.combine, (y, b["token_rows"], residual, residual, b["topk_weights"])),
    ]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        graph = capture_global(stream, calls, routing.prepare if prepared else None)
        for _ in range(3):
            _replay_and_check(graph, stream, rng, b, logits, residual, y, k)


# -- combine + RMSNorm (the engine's) ---------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("weighted", [True, False])
@pytest.mark.parametrize("tokens,k,hidden", [(1, 8, 2048), (257, 8, 2048), (64, 2, 256), (9, 16, 64), (5, 3, 8), (6, 4, 8192), (3, 2, 24)])
def test_combine_rmsnorm_is_combine_then_rmsnorm(tokens, k, hidden, weighted):
    cp, rng = _cp(), np.random.default_rng(tokens + hidden + k)
    rows = tokens * k
    y = cp.asarray(rng.standard_normal((rows, hidden)).astype(np.float16))
    token_rows = cp.asarray(rng.permutation(rows).astype(np.int32).reshape(tokens, k))
    weights = cp.asarray(rng.random((tokens, k)).astype(np.float32)) if weighted else None
    residual_h = (rng.standard_normal((tokens, hidden)) * 3).astype(np.float16)
    norm_w = cp.asarray((1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float16))
    expected = cp.full((tokens, hidden), cp.nan, cp.float16)
    routing.combine(y, token_rows, cp.asarray(residual_h), expected, weights)
    residual = cp.asarray(residual_h)  # in place, as the engine runs it
    normed = cp.full((tokens, hidden), cp.nan, cp.float16)
    routing.combine_rmsnorm(y, token_rows, residual, residual, norm_w, 1e-6, normed, weights)
    np.testing.assert_array_equal(residual.get().view(np.uint16), expected.get().view(np.uint16))
    new_residual = residual.get().astype(np.float64)
    ref = new_residual / np.sqrt(np.mean(new_residual**2, axis=-1, keepdims=True) + 1e-6) * norm_w.get()
    assert np.isfinite(normed.get()).all()
    assert rel_err(normed.get(), ref) <= REL_ERR_FP16


@pytest.mark.gpu
def test_combine_rmsnorm_rejects_bad_shapes():
    cp = _cp()
    b = _routing_buffers(4, 2, 8)
    y, residual = cp.zeros((8, 16), cp.float16), cp.zeros((4, 16), cp.float16)
    with pytest.raises(ValueError, match="normed"):
        routing.combine_rmsnorm(y, b["token_rows"], residual, residual, cp.zeros(16, cp.float16), 1e-6, cp.zeros((4, 8), cp.float16))
    with pytest.raises(ValueError, match="norm_weight"):
        routing.combine_rmsnorm(y, b["token_rows"], residual, residual, cp.zeros(8, cp.float16), 1e-6, cp.zeros((4, 16), cp.float16))


# -- two-launch permutation (the engine's) ---------------------------------------------------


def _topk_count_permute(b, logits, k, renormalize, counts):
    routing.topk_count(logits, k, renormalize, b["topk_ids"], b["topk_weights"], b["token_rows"], counts)
    routing.permute_counted(
        b["topk_ids"], b["topk_weights"], counts, b["expert_offsets"], b["row_token"], b["row_weight"], b["token_rows"]
    )


@pytest.mark.gpu
@pytest.mark.parametrize(
    "tokens,experts,k,renormalize",
    [(1, 128, 8, True), (17, 128, 8, True), (512, 128, 8, True), (2048, 128, 8, True), (64, 128, 8, False),
     (40, 256, 8, True), (3000, 256, 8, True), (300, 512, 16, True), (1100, 512, 16, False), (50, 8, 2, True),
     (7, 40, 3, False), (1000, 40, 3, False), (600, 384, 8, True)],
)  # fmt: skip
def test_topk_count_then_permute_counted_equals_topk_then_permutation(tokens, experts, k, renormalize):
    cp, rng = _cp(), np.random.default_rng(tokens * 5 + experts)
    logits = cp.asarray((rng.standard_normal((tokens, experts)) * 2).astype(np.float16))
    counts = cp.full((routing.count_blocks(tokens), experts), -7, cp.int32)
    fused, apart = _routing_buffers(tokens, k, experts), _routing_buffers(tokens, k, experts)
    _topk_count_permute(fused, logits, k, renormalize, counts)
    routing.topk_softmax(logits, k, renormalize, apart["topk_ids"], apart["topk_weights"])
    _permute(apart, experts)
    got, want = _host(fused), _host(apart)
    for name in want:  # bit for bit: same top-k code, same stable order
        np.testing.assert_array_equal(got[name].view(np.uint32), want[name].view(np.uint32), err_msg=name)
    ids, weights = topk_softmax_ref(logits.get(), k, renormalize)
    np.testing.assert_array_equal(got["topk_ids"], ids)
    np.testing.assert_allclose(got["topk_weights"], weights, rtol=1e-5)
    _assert_permutation(got, experts)
    per_block = np.stack([np.bincount(ids[i : i + routing.COUNT_TOKENS].reshape(-1), minlength=experts)
                          for i in range(0, tokens, routing.COUNT_TOKENS)])  # fmt: skip
    np.testing.assert_array_equal(counts.get(), per_block)


@pytest.mark.gpu
def test_topk_count_ties_and_a_counts_buffer_sized_for_a_longer_chunk():
    cp, rng = _cp(), np.random.default_rng(22)
    experts, k = 128, 8
    counts = cp.full((routing.count_blocks(1000), experts), -7, cp.int32)  # the engine slices its buffer
    for tokens in (96, 1000, 3):
        logits_h = rng.integers(-2, 3, (tokens, experts)).astype(np.float16)  # ties everywhere
        b = _routing_buffers(tokens, k, experts)
        _topk_count_permute(b, cp.asarray(logits_h), k, True, counts[: routing.count_blocks(tokens)])
        h = _host(b)
        ids, weights = topk_softmax_ref(logits_h, k, True)
        np.testing.assert_array_equal(h["topk_ids"], ids)
        np.testing.assert_allclose(h["topk_weights"], weights, rtol=1e-5)
        _assert_permutation(h, experts)


@pytest.mark.gpu
def test_two_launch_permutation_rejects_bad_shapes():
    cp = _cp()
    b = _routing_buffers(40, 2, 8)
    logits = cp.zeros((40, 8), cp.float16)
    with pytest.raises(ValueError, match="block_counts"):
        routing.topk_count(logits, 2, True, b["topk_ids"], b["topk_weights"], b["token_rows"], cp.zeros((2, 8), cp.int32))
    with pytest.raises(ValueError, match="token_rows"):
        routing.topk_count(logits, 2, True, b["topk_ids"], b["topk_weights"], cp.zeros((40, 3), cp.int32), cp.zeros((3, 8), cp.int32))
    with pytest.raises(ValueError, match="expert_offsets"):
        routing.permute_counted(
            b["topk_ids"], b["topk_weights"], cp.zeros((3, 16), cp.int32), b["expert_offsets"], b["row_token"],
            b["row_weight"], b["token_rows"],
        )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("prepared", [False, True])
def test_global_capture_of_the_engine_routing_replays_with_new_router_logits(prepared):
    cp = _cp()
    rng = np.random.default_rng(23)
    tokens, experts, k, hidden = 200, 128, 8, 256
    logits = cp.zeros((tokens, experts), cp.float16)
    counts = cp.empty((routing.count_blocks(tokens), experts), cp.int32)
    b = _routing_buffers(tokens, k, experts)
    y = cp.asarray(rng.standard_normal((tokens * k, hidden)).astype(np.float16))
    residual = cp.empty((tokens, hidden), cp.float16)
    normed = cp.empty((tokens, hidden), cp.float16)
    norm_w = cp.asarray((1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float16))
    calls = [
        (routing.topk_count, (logits, k, True, b["topk_ids"], b["topk_weights"], b["token_rows"], counts)),
        (routing.permute_counted, (b["topk_ids"], b["topk_weights"], counts, b["expert_offsets"], b["row_token"],
                                   b["row_weight"], b["token_rows"])),
        (routing.combine_rmsnorm, (y, b["token_rows"], residual, residual, norm_w, 1e-6, normed, b["topk_weights"])),
    ]
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        graph = capture_global(stream, calls, routing.prepare if prepared else None)
        for _ in range(3):
            normed.fill(cp.nan)
            counts.fill(-7)
            _replay_and_check(graph, stream, rng, b, logits, residual, y, k)
            new_residual = residual.get().astype(np.float64)
            normed_ref = new_residual / np.sqrt(np.mean(new_residual**2, axis=-1, keepdims=True) + 1e-6) * norm_w.get()
            assert rel_err(normed.get(), normed_ref) <= REL_ERR_FP16


# -- the shared expert in the combine (Qwen3.5/3.6) -----------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("tokens", [1, 77, 300])
@pytest.mark.parametrize("model", ["qwen3.6", "tiny-qwen3.6"])
def test_combine_and_combine_rmsnorm_add_the_shared_expert(model, tokens, gated):
    cp, rng = _cp(), np.random.default_rng(tokens + gated)
    p = get_preset(model)
    hidden, k, experts = p.hidden_size, p.experts_per_token, p.num_experts
    rows = tokens * k
    y = cp.asarray(rng.standard_normal((rows, hidden)).astype(np.float16))
    token_rows = cp.asarray(rng.permutation(rows).astype(np.int32).reshape(tokens, k))
    weights = cp.asarray(rng.random((tokens, k)).astype(np.float32))
    residual_h = (rng.standard_normal((tokens, hidden)) * 3).astype(np.float16)
    shared_h = rng.standard_normal((tokens, hidden)).astype(np.float16)
    logits_h = (2 * rng.standard_normal((tokens, experts + 1))).astype(np.float16)  # the gate: one more column of the router GEMM
    shared, gate = cp.asarray(shared_h), cp.asarray(logits_h)[:, experts:] if gated else None
    scale = sigmoid(logits_h[:, experts:]) if gated else 1.0
    ref = combine_ref(y.get(), token_rows.get(), residual_h, weights.get()) + scale * shared_h.astype(np.float64)
    out = cp.full((tokens, hidden), cp.nan, cp.float16)
    routing.combine(y, token_rows, cp.asarray(residual_h), out, weights, shared, gate)
    assert_close("combine + shared", out.get(), ref)
    residual = cp.asarray(residual_h)  # in place, as the engine runs it
    normed = cp.full((tokens, hidden), cp.nan, cp.float16)
    norm_w = cp.asarray((1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float16))
    routing.prepare(routing.combine_rmsnorm, y, token_rows, residual, residual, norm_w, 1e-6, normed, weights, shared, gate)()
    np.testing.assert_array_equal(residual.get().view(np.uint16), out.get().view(np.uint16))  # the same combine, bit for bit
    new_residual = residual.get().astype(np.float64)
    normed_ref = new_residual / np.sqrt(np.mean(new_residual**2, axis=-1, keepdims=True) + 1e-6) * norm_w.get()
    assert_close("combine_rmsnorm + shared: normed", normed.get(), normed_ref)


@pytest.mark.gpu
def test_combine_without_a_shared_expert_is_unchanged_by_a_zero_shared_row():
    # the shared term is added only where given: a zero shared row gives the plain combine's bits
    cp, rng = _cp(), np.random.default_rng(41)
    tokens, k, hidden = 33, 8, 2048
    y = cp.asarray(rng.standard_normal((tokens * k, hidden)).astype(np.float16))
    token_rows = cp.asarray(rng.permutation(tokens * k).astype(np.int32).reshape(tokens, k))
    residual = cp.asarray(rng.standard_normal((tokens, hidden)).astype(np.float16))
    plain, with_zero = (cp.full((tokens, hidden), cp.nan, cp.float16) for _ in range(2))
    routing.combine(y, token_rows, residual, plain)
    routing.combine(y, token_rows, residual, with_zero, None, cp.zeros((tokens, hidden), cp.float16))
    np.testing.assert_array_equal(plain.get().view(np.uint16), with_zero.get().view(np.uint16))


# -- Gemma-4: per-expert weight scales in the top-k, post_ffn_norms --------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize(
    "tokens,experts,k,renormalize", [(1, 128, 8, True), (77, 128, 8, True), (300, 128, 8, False), (50, 8, 2, True), (33, 512, 16, True)]
)
def test_topk_expert_scale_multiplies_each_chosen_weight(tokens, experts, k, renormalize):
    cp, rng = _cp(), np.random.default_rng(tokens * 3 + experts + k)
    logits_h = (rng.standard_normal((tokens, experts)) * 2).astype(np.float16)
    scale_h = np.exp(0.3 * rng.standard_normal(experts)).astype(np.float32)  # as the engine's weights draw them
    logits, scale = cp.asarray(logits_h), cp.asarray(scale_h)
    ids, weights = topk_softmax_ref(logits_h, k, renormalize, scale_h)
    apart = _routing_buffers(tokens, k, experts)
    routing.topk_softmax(logits, k, renormalize, apart["topk_ids"], apart["topk_weights"], expert_scale=scale)
    np.testing.assert_array_equal(apart["topk_ids"].get(), ids)
    np.testing.assert_allclose(apart["topk_weights"].get(), weights, rtol=1e-5)
    fused = _routing_buffers(tokens, k, experts)
    counts = cp.full((routing.count_blocks(tokens), experts), -7, cp.int32)
    routing.prepare(routing.topk_count, logits, k, renormalize, fused["topk_ids"], fused["topk_weights"], fused["token_rows"],
                    counts, expert_scale=scale)()  # fmt: skip
    routing.permute_counted(fused["topk_ids"], fused["topk_weights"], counts, fused["expert_offsets"], fused["row_token"],
                            fused["row_weight"], fused["token_rows"])  # fmt: skip
    got = _host(fused)
    for name in ("topk_ids", "topk_weights"):  # the same top-k code: bit for bit
        np.testing.assert_array_equal(got[name].view(np.uint32), apart[name].get().view(np.uint32), err_msg=name)
    _assert_permutation(got, experts)  # row_weight: the scaled weights, for moe_down
    plain = _routing_buffers(tokens, k, experts)
    routing.topk_softmax(logits, k, renormalize, plain["topk_ids"], plain["topk_weights"])  # None: unscaled, as before
    _, unscaled = topk_softmax_ref(logits_h, k, renormalize)
    np.testing.assert_allclose(plain["topk_weights"].get(), unscaled, rtol=1e-5)


def _post_ffn_problem(rng, tokens, k, hidden, spare_rows=3):
    """Host inputs of post_ffn_norms: expert rows (weighted, small), a permutation, the dense MLP's output,
    the residual stream, the three norms and the next layer's input norm (1 + 0.2 N(0, 1) each)."""
    rows = tokens * k + spare_rows  # y may have spare rows (a buffer sized for the largest chunk)
    y = (0.3 * rng.standard_normal((rows, hidden))).astype(np.float16)
    token_rows = rng.permutation(tokens * k).astype(np.int32).reshape(tokens, k)
    dense = (0.5 * rng.standard_normal((tokens, hidden))).astype(np.float16)
    residual = (3 * rng.standard_normal((tokens, hidden))).astype(np.float16)
    norms = [(1.0 + 0.2 * rng.standard_normal(hidden)).astype(np.float16) for _ in range(4)]
    return y, token_rows, dense, residual, norms[:3], norms[3]


def _assert_post_ffn_norms(dense_out, out, normed, host, eps, scalar):
    y, token_rows, dense, residual, norms, next_norm = host
    o_ref, new_ref = post_ffn_norms_ref(y, token_rows, dense, residual, norms, eps, scalar)
    assert rel_err(dense_out, o_ref) <= REL_ERR_FP16  # the block's output, stored over dense
    assert rel_err(out, new_ref) <= REL_ERR_FP16
    # the new residual from the stored (rounded) output, FP32, one FP16 rounding: what the engine trace records
    from_stored = (residual.astype(np.float64) + dense_out.astype(np.float64)) * float(np.float32(scalar))
    np.testing.assert_allclose(out.astype(np.float64), from_stored, rtol=2**-11 * 1.01, atol=2**-24)
    if normed is not None:  # the next layer's input norm of the FP16 row stored, as combine_rmsnorm
        assert np.isfinite(normed).all()
        assert rel_err(normed, rmsnorm64(out, next_norm, eps)) <= REL_ERR_FP16


@pytest.mark.gpu
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize(
    "tokens,k,hidden",
    [(1, 8, 2816), (77, 8, 2816), (300, 2, 256), (5, 4, 8192), (3, 2, 24), (64, 8, 2048), (9, 3, 4104), (7, 16, 8), (40, 32, 512)],
)
def test_post_ffn_norms_matches_float64(tokens, k, hidden, fused):
    # in place on the residual, as the engine runs it; H 2816 (Gemma-4: 352 chunks, 2 a thread of 192)
    cp, rng = _cp(), np.random.default_rng(tokens * 7 + hidden + k + fused)
    host = _post_ffn_problem(rng, tokens, k, hidden)
    y_h, token_rows_h, dense_h, residual_h, norms_h, next_h = host
    scalar, eps = float(0.5 + rng.random()), 1e-6
    dense, residual = cp.asarray(dense_h), cp.asarray(residual_h)
    normed = cp.full((tokens, hidden), cp.nan, cp.float16) if fused else None
    next_norm = cp.asarray(next_h) if fused else None
    routing.post_ffn_norms(cp.asarray(y_h), cp.asarray(token_rows_h), dense, residual, [cp.asarray(w) for w in norms_h], eps,
                           scalar, residual, next_norm=next_norm, normed=normed)  # fmt: skip
    _assert_post_ffn_norms(dense.get(), residual.get(), None if normed is None else normed.get(), host, eps, scalar)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["gemma-4-26b-a4b", "tiny-gemma4"])
def test_post_ffn_norms_into_a_separate_output_is_deterministic(model):
    # the preset's H and k; out apart from the residual (poisoned), prepared, run twice: the same bits
    cp, rng = _cp(), np.random.default_rng(len(model))
    p = get_preset(model)
    tokens, k, hidden = 130, p.experts_per_token, p.hidden_size
    host = _post_ffn_problem(rng, tokens, k, hidden)
    y_h, token_rows_h, dense_h, residual_h, norms_h, next_h = host
    y, token_rows, residual = cp.asarray(y_h), cp.asarray(token_rows_h), cp.asarray(residual_h)
    norms, next_norm = cp.asarray(np.stack(norms_h)), cp.asarray(next_h)  # a stacked [3, H] array works too
    results = []
    for _ in range(2):
        dense = cp.asarray(dense_h)
        out, normed = (cp.full((tokens, hidden), cp.nan, cp.float16) for _ in range(2))
        routing.prepare(routing.post_ffn_norms, y, token_rows, dense, residual, norms, p.rms_norm_eps, 1.25, out,
                        next_norm=next_norm, normed=normed)()  # fmt: skip
        results.append([a.get() for a in (dense, out, normed)])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    np.testing.assert_array_equal(residual.get().view(np.uint16), residual_h.view(np.uint16))  # only read
    _assert_post_ffn_norms(*results[0], host, p.rms_norm_eps, 1.25)
