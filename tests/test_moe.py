"""Grouped NVFP4 MoE GEMMs. GPU: every kept kernel variant, gate_up and down, against the float64
reference of the NumPy NVFP4 codec for many distributions of rows over experts (empty experts, one
expert with every row, tiles past 64 rows), outputs poisoned with NaN first so every element must be
written; a graph captured once in global mode and replayed after the offsets change on the device;
argument and variant checks; the synthetic weight generator. CPU: the variant rule (each branch), the
explicit-variant checks, prewarm's kernels, the kperm and tile-major layouts, benchmark routing and CLI."""

import numpy as np
import pytest
from test_ops import fake

from impbench import nvfp4
from impbench.kernels import moe
from impbench.reference.blocks import ACTIVATIONS

# Bound on ||out - ref|| / ||ref|| (Frobenius norms, ref in float64 from the same NVFP4 codes and FP16
# inputs). The kernels dequantize exactly and accumulate in FP32; what remains is the FP16 rounding of the
# output (at most 2^-11 relative per element) and FP32 summation order, so 2e-3 is about 4x the worst
# rounding and far below any indexing or decoding error (wrong scale, nibble, row or token: O(1)).
REL_ERR = 2e-3


def _counts(kind: str, rows: int, experts: int, rng) -> np.ndarray:
    if kind == "one_expert":
        counts = np.zeros(experts, np.int64)
        counts[rng.integers(experts)] = rows
        return counts
    if kind == "uniform":
        return rng.multinomial(rows, np.full(experts, 1.0 / experts))
    # random: a third of the experts empty, the rest with Dirichlet-skewed shares
    p = rng.dirichlet(np.full(experts, 0.5))
    p[rng.random(experts) < 1 / 3] = 0.0
    if p.sum() == 0:
        p[0] = 1.0
    return rng.multinomial(rows, p / p.sum())


def _routing(kind, tokens, top_k, experts, rng, counts=None):
    rows = tokens * top_k
    counts = _counts(kind, rows, experts, rng) if counts is None else counts
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    row_token = rng.integers(0, tokens, rows).astype(np.int32)
    row_weight = rng.random(rows).astype(np.float32)
    return offsets, row_token, row_weight


def _host_experts(rng, experts, n, k):
    parts = [nvfp4.quantize((rng.standard_normal((n, k)) * 0.02 * (1 + 0.3 * e)).astype(np.float32)) for e in range(experts)]
    return np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.array([p[2] for p in parts], np.float32)


def _ref_gate_up(x, row_token, offsets, w13_deq, activation="silu"):
    inter = w13_deq.shape[1] // 2
    act = ACTIVATIONS[activation]  # float64 silu / gelu_tanh of the reference models
    out = np.zeros((row_token.shape[0], inter))
    for e in range(offsets.shape[0] - 1):
        rows = slice(offsets[e], offsets[e + 1])
        xe = x[row_token[rows]].astype(np.float64)
        gate, up = xe @ w13_deq[e, :inter].T, xe @ w13_deq[e, inter:].T
        out[rows] = act(gate) * up
    return out


def _ref_down(h, offsets, w2_deq, row_weight):
    out = np.zeros((h.shape[0], w2_deq.shape[1]))
    for e in range(offsets.shape[0] - 1):
        rows = slice(offsets[e], offsets[e + 1])
        out[rows] = h[rows].astype(np.float64) @ w2_deq[e].T
    return out if row_weight is None else out * row_weight[:, None]


def _rel_err(out, ref) -> float:
    out = out.astype(np.float64)
    assert np.isfinite(out).all(), f"{int((~np.isfinite(out)).sum())} outputs unwritten or not finite"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _hopper_fits(variant: str, hidden: int, inter: int) -> bool:
    """Whether `variant` runs this layer on a Hopper GPU (where every variant exists): the shape decides."""
    return moe.cannot_run(variant, hidden, inter, device_cc=moe.HOPPER_CC) is None


def _skip_where_this_gpu_lacks(variant: str | None) -> None:
    """Skip a wgmma variant on a GPU other than compute capability 9.0 (TILE_K-multiple shapes fit every variant)."""
    reason = variant and moe.cannot_run(variant, moe.TILE_K, moe.TILE_K)
    if reason:
        pytest.skip(reason)


class Problem:
    """Host weights and inputs of one MoE layer, uploaded; routing set separately (and changeable)."""

    def __init__(self, experts, hidden, inter, tokens, top_k, seed, gpu_weights=False):
        import cupy

        rng = np.random.default_rng(seed)
        self.rng, self.experts, self.tokens, self.top_k = rng, experts, tokens, top_k
        if gpu_weights:
            dev13 = nvfp4.generate_experts_gpu(experts, 2 * inter, hidden, seed=seed)
            dev2 = nvfp4.generate_experts_gpu(experts, hidden, inter, seed=seed + 1)
            host13, host2 = [a.get() for a in dev13], [a.get() for a in dev2]
        else:
            host13, host2 = _host_experts(rng, experts, 2 * inter, hidden), _host_experts(rng, experts, hidden, inter)
            dev13, dev2 = [cupy.asarray(a) for a in host13], [cupy.asarray(a) for a in host2]
        self.w13, self.w2 = dev13, dev2
        self.w13_deq = nvfp4.dequantize(*host13).astype(np.float64)
        self.w2_deq = nvfp4.dequantize(*host2).astype(np.float64)
        self.x_host = rng.standard_normal((tokens, hidden)).astype(np.float16)
        self.h_host = rng.standard_normal((tokens * top_k, inter)).astype(np.float16)
        self.x, self.h = cupy.asarray(self.x_host), cupy.asarray(self.h_host)
        rows = tokens * top_k
        self.offsets = cupy.zeros(experts + 1, cupy.int32)
        self.row_token = cupy.zeros(rows, cupy.int32)
        self.row_weight = cupy.zeros(rows, cupy.float32)
        self.act = cupy.empty((rows, inter), cupy.float16)
        self.out = cupy.empty((rows, hidden), cupy.float16)

    def route(self, kind, counts=None):
        """Routing of `kind` (_counts), or with these rows per expert."""
        self.routing = _routing(kind, self.tokens, self.top_k, self.experts, self.rng, counts)
        for dev, host in zip((self.offsets, self.row_token, self.row_weight), self.routing):
            dev.set(host)
        return self

    def poison(self):
        import cupy

        self.act.fill(cupy.nan)
        self.out.fill(cupy.nan)

    def launch(self, weighted=True, variant=None, activation="silu"):
        """Both GEMMs with `variant` (None: the wrappers' choice for natural-order arrays), each array in
        the layout the variant reads (check() restores gate_up's output to natural order); gate_up with
        `activation` (check() uses the same)."""
        self.activation = activation
        hidden, inter = self.x.shape[1], self.h.shape[1]
        _skip_where_this_gpu_lacks(variant)
        spec = moe.VARIANTS[variant or moe.choose_variant(hidden, inter, tiled=False, kperm=False)]
        self.kperm = spec.kperm
        if self.kperm and not hasattr(self, "x_kp"):  # once, eagerly: a captured launch must not allocate
            self.x_kp, self.h_kp = moe.to_kperm(self.x), moe.to_kperm(self.h)
        x, h = (self.x_kp, self.h_kp) if self.kperm else (self.x, self.h)
        w13, w2 = self.w13, self.w2
        if spec.tiled:  # tile-major weights, made once
            if not hasattr(self, "w13_tiled"):
                self.w13_tiled, self.w2_tiled = moe.tiled_weight(w13, True), moe.tiled_weight(w2, False)
            w13, w2 = self.w13_tiled, self.w2_tiled
        moe.moe_gate_up(x, self.row_token, self.offsets, *w13, self.act, variant=variant, activation=activation)
        moe.moe_down(h, self.offsets, *w2, self.out, row_weight=self.row_weight if weighted else None,
                     variant=variant)  # fmt: skip

    def check(self, weighted=True):
        import cupy

        cupy.cuda.get_current_stream().synchronize()
        offsets, row_token, row_weight = self.routing
        act = self.act.get()
        if self.kperm:
            act = moe.from_kperm(act)
        err_up = _rel_err(act, _ref_gate_up(self.x_host, row_token, offsets, self.w13_deq, self.activation))
        err_down = _rel_err(self.out.get(), _ref_down(self.h_host, offsets, self.w2_deq, row_weight if weighted else None))
        assert err_up <= REL_ERR and err_down <= REL_ERR, (err_up, err_down)
        return err_up, err_down


SHAPES = [  # experts, hidden H, intermediate I, tokens, top-k
    (6, 320, 192, 40, 4),  # partial N tiles and a partial last K stage in both GEMMs
    (4, 128, 64, 37, 3),  # R = 111: a partial n8 token tile
    (3, 64, 64, 200, 1),  # a single 64-wide K stage; one expert gets up to 4 token tiles
    (5, 768, 320, 40, 4),  # gate_up K a multiple of 256, a partial 128-column gate_up tile (I = 320)
    (3, 320, 512, 37, 3),  # down K a multiple of 256, a partial 256-column down tile (H = 320)
    (5, 384, 256, 45, 4),  # H and I multiples of 128 (kperm variants), 3 K stages / 2
    (4, 640, 384, 50, 3),  # multiples of 128, not 256: odd K stage counts (5 / 3) for the kperm variants
    (3, 512, 256, 70, 4),  # H and I multiples of 256 (the tiled variant too), 2 gate_up / 2 down tiles
    (5, 256, 768, 61, 4),  # the shortest tile-major K (2 stages, one scale pair) for gate_up; 6 gate_up tiles
    (7, 1024, 256, 33, 5),  # 4 down tiles of 256 columns, an 8-stage gate_up K
]
CASES = [(v, *shape) for v in moe.VARIANTS for shape in SHAPES if _hopper_fits(v, shape[1], shape[2])]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "one_expert", "uniform"])
@pytest.mark.parametrize("variant,experts,hidden,inter,tokens,top_k", CASES)
def test_kernels_match_reference(kind, experts, hidden, inter, tokens, top_k, variant):
    problem = Problem(experts, hidden, inter, tokens, top_k, seed=1000 * experts + tokens + len(kind)).route(kind)
    problem.poison()
    problem.launch(variant=variant)
    problem.check()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(moe.VARIANTS))
def test_further_tiles_of_experts_past_the_first_128(variant):
    # 200 experts; experts 3, 150 and 199 need 2-3 token tiles each (further tiles past expert 128)
    counts = np.zeros(200, np.int64)
    counts[[3, 150, 199]] = [66, 150, 70]
    counts[10:44] = 1
    problem = Problem(200, 256, 256, 80, 4, seed=7).route("given", counts)
    problem.poison()
    problem.launch(variant=variant)
    problem.check()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(moe.VARIANTS))
@pytest.mark.parametrize("kind", ["random", "one_expert"])
def test_qwen3_coder_expert_shapes_with_generated_weights(kind, variant):
    # real K / N (H 2048, I 768) on 8 experts, weights from the GPU generator, down without row weights
    problem = Problem(8, 2048, 768, 96, 8, seed=11, gpu_weights=True).route(kind)
    problem.poison()
    problem.launch(weighted=False, variant=variant)
    problem.check(weighted=False)


DENSE = [  # tokens, N, K
    (2048, 512, 2048),  # 32 full token tiles re-reading one weight
    (130, 5120, 4096),  # the engine's widest projection; a 2-row last token tile
    (77, 320, 192),  # partial N tile, a K % 128 == 64 tail stage
]


@pytest.mark.gpu
@pytest.mark.parametrize(
    "variant,tokens,n,k", [(v, *shape) for v in moe.VARIANTS for shape in DENSE if _hopper_fits(v, shape[1], shape[2])]
)
def test_one_expert_down_is_a_dense_nvfp4_gemm(tokens, n, k, variant):
    # the engine's attention projections: moe_down with E = 1, offsets [0, T], no row weights
    import cupy

    _skip_where_this_gpu_lacks(variant)
    rng = np.random.default_rng(tokens + n + k)
    codes, scales, scale2 = nvfp4.generate_experts_gpu(1, n, k, seed=tokens)
    w_deq = nvfp4.dequantize(codes.get(), scales.get(), scale2.get()).astype(np.float64)
    a_host = rng.standard_normal((tokens, k)).astype(np.float16)
    a = cupy.asarray(a_host)
    if moe.VARIANTS[variant].kperm:
        a = moe.to_kperm(a)
    if moe.VARIANTS[variant].tiled:
        codes, scales = moe.tile_experts(codes, scales, gate_up=False)
    offsets = cupy.asarray(np.array([0, tokens], np.int32))
    out = cupy.full((tokens, n), cupy.nan, cupy.float16)
    moe.moe_down(a, offsets, codes, scales, scale2, out, variant=variant)
    cupy.cuda.get_current_stream().synchronize()
    assert _rel_err(out.get(), a_host.astype(np.float64) @ w_deq[0].T) <= REL_ERR


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(moe.VARIANTS))
def test_graph_captured_in_global_mode_follows_new_offsets(variant):
    import cupy
    from cupy.cuda import runtime

    _skip_where_this_gpu_lacks(variant)
    moe.prewarm()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        problem = Problem(6, 512, 256, 48, 4, seed=5).route("random")  # H, I multiples of 256: every variant runs
        problem.launch(variant=variant)  # eager once; the capture below must not allocate or compile
        stream.synchronize()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        problem.launch(variant=variant)
        graph = stream.end_capture()
        for kind in ("random", "one_expert", "uniform"):
            problem.route(kind)  # new offsets / row_token / row_weight, same device arrays
            problem.poison()
            stream.synchronize()
            graph.launch(stream=stream)
            problem.check()


GELU_SHAPES = [  # experts, hidden H, intermediate I, tokens, top-k, GPU-generated weights
    (8, 2816, 704, 96, 8, True),  # Gemma-4 26B-A4B's experts (I % 128 == 64: wgq on Hopper, cvt elsewhere)
    (8, 256, 64, 50, 2, False),  # tiny-gemma4's
    (5, 512, 256, 45, 4, False),  # H and I multiples of 256: every variant's epilogue
]
GELU_CASES = [(v, *shape) for v in moe.VARIANTS for shape in GELU_SHAPES if _hopper_fits(v, shape[1], shape[2])]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["random", "one_expert"])
@pytest.mark.parametrize("variant,experts,hidden,inter,tokens,top_k,gpu_weights", GELU_CASES)
def test_gate_up_with_gelu_tanh_matches_reference(kind, variant, experts, hidden, inter, tokens, top_k, gpu_weights):
    # Gemma-4's experts: act(gate) = GELU, tanh form; outputs poisoned, fresh inputs per case
    problem = Problem(experts, hidden, inter, tokens, top_k, seed=hidden + inter + len(kind), gpu_weights=gpu_weights)
    problem.route(kind)
    problem.poison()
    problem.launch(variant=variant, activation="gelu_tanh")
    problem.check()


@pytest.mark.gpu
def test_gate_up_activation_default_is_silu_and_gelu_differs():
    import cupy

    p = Problem(4, 256, 128, 40, 2, seed=17).route("random")
    p.poison()
    moe.moe_gate_up(p.x, p.row_token, p.offsets, *p.w13, p.act)
    silu = p.act.get()
    p.poison()
    moe.prepare(moe.moe_gate_up, p.x, p.row_token, p.offsets, *p.w13, p.act, activation="silu")()
    np.testing.assert_array_equal(silu.view(np.uint16), p.act.get().view(np.uint16))
    p.poison()
    moe.prepare(moe.moe_gate_up, p.x, p.row_token, p.offsets, *p.w13, p.act, activation="gelu_tanh")()
    cupy.cuda.get_current_stream().synchronize()
    gelu = p.act.get()
    offsets, row_token, _ = p.routing
    assert _rel_err(gelu, _ref_gate_up(p.x_host, row_token, offsets, p.w13_deq, "gelu_tanh")) <= REL_ERR
    assert _rel_err(gelu, _ref_gate_up(p.x_host, row_token, offsets, p.w13_deq, "silu")) > 10 * REL_ERR


@pytest.mark.gpu
def test_prepared_launch_equals_direct_call():
    import cupy

    problem = Problem(4, 128, 64, 32, 2, seed=9).route("random")
    problem.poison()
    p = problem
    moe.prepare(moe.moe_gate_up, p.x, p.row_token, p.offsets, *p.w13, p.act)()
    moe.prepare(moe.moe_down, p.h, p.offsets, *p.w2, p.out, row_weight=p.row_weight)()
    first = (p.act.get(), p.out.get())
    problem.poison()
    problem.launch()
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_array_equal(first[0], p.act.get())
    np.testing.assert_array_equal(first[1], p.out.get())
    problem.check()


@pytest.mark.gpu
def test_argument_checks_name_the_shapes_and_the_variant():
    import cupy

    p = Problem(4, 128, 64, 16, 2, seed=3).route("random")
    w13, s13, g13 = p.w13
    with pytest.raises(ValueError, match=r"w13_scale must have shape \(4, 128, 8\)"):
        moe.moe_gate_up(p.x, p.row_token, p.offsets, w13, s13[:, :, :4].copy(), g13, p.act)
    odd = cupy.zeros((16, 96), cupy.float16)  # K = 96: not a multiple of 64
    with pytest.raises(ValueError, match="multiples of 64"):
        moe.moe_gate_up(odd, p.row_token, p.offsets, cupy.zeros((4, 128, 48), cupy.uint8),
                        cupy.zeros((4, 128, 6), cupy.uint8), g13, p.act)  # fmt: skip
    with pytest.raises(ValueError, match="out must have shape"):
        moe.moe_down(p.h, p.offsets, *p.w2, cupy.zeros((3, 128), cupy.float16))
    with pytest.raises(ValueError, match="must have dtype int32"):
        moe.moe_down(p.h, p.offsets.astype(cupy.int64), *p.w2, p.out)
    with pytest.raises(ValueError, match="K = 128 but h"):
        moe.moe_down(p.h, p.offsets, *p.w13, p.out)
    # an explicit variant is checked, never replaced: unknown names, and a layout the layer cannot have
    with pytest.raises(ValueError, match="moe_gate_up: unknown MoE kernel variant 'w8'"):
        moe.moe_gate_up(p.x, p.row_token, p.offsets, *p.w13, p.act, variant="w8")
    with pytest.raises(ValueError, match="moe_down: .*multiples of (128|256)|compute capability 9.0 only"):
        moe.moe_down(p.h, p.offsets, *p.w2, p.out, variant="wgb")  # H 128, I 64


@pytest.mark.gpu
def test_generator_sanity():
    import cupy

    codes, scales, scale2 = nvfp4.generate_experts_gpu(4, 96, 256, seed=7, std=0.02)
    assert codes.shape == (4, 96, 128) and codes.dtype == cupy.uint8
    assert scales.shape == (4, 96, 16) and scales.dtype == cupy.uint8
    assert scale2.shape == (4,) and scale2.dtype == cupy.float32
    np.testing.assert_array_equal(scale2.get(), nvfp4.expert_scale2(4, 7, 0.02))
    again = nvfp4.generate_experts_gpu(4, 96, 256, seed=7, std=0.02)
    for a, b in zip((codes, scales), again[:2]):
        np.testing.assert_array_equal(a.get(), b.get())
    assert (nvfp4.generate_experts_gpu(4, 96, 256, seed=8)[0].get() != codes.get()).mean() > 0.5
    s = scales.get()
    assert not np.isin(s, [0x7F, 0xFF]).any() and (s & 0x80).sum() == 0  # finite, positive scales
    w = nvfp4.dequantize(codes.get(), s, scale2.get())
    sigma = scale2.get() * 448.0
    for e in range(4):  # each expert ~ N(0, sigma_e^2) after quantization (NVFP4 error ~10%)
        assert abs(w[e].mean()) < 0.05 * sigma[e]
        assert 0.85 * sigma[e] < w[e].std() < 1.15 * sigma[e]
    # ModelOpt scaling: the largest value of a block lands on code 4.0 or 6.0 (never saturating far)
    top = np.abs(nvfp4.e2m1_decode(nvfp4.unpack(codes.get()))).reshape(4, 96, 16, 16).max(axis=-1)
    assert (top >= 4.0).mean() > 0.99
    # and the codes are what the NumPy codec makes of those values with the same scales
    requant = nvfp4.e2m1_encode(w.reshape(4, 96, 16, 16) / (nvfp4.e4m3_decode(s) * scale2.get()[:, None, None])[..., None])
    assert (nvfp4.pack(requant.reshape(4, 96, 256)) == codes.get()).mean() > 0.999


# ---- benchmark routing and CLI (CPU) ------------------------------------------------------------


@pytest.mark.parametrize("routing", ["uniform", "skewed"])
def test_bench_routing_is_a_valid_permutation(routing):
    from impbench.bench.moe import route

    tokens, experts, top_k = 512, 128, 8
    offsets, row_token, row_weight = route(tokens, experts, top_k, routing, seed=4)
    assert offsets.dtype == np.int32 and row_token.dtype == np.int32 and row_weight.dtype == np.float32
    assert offsets[0] == 0 and offsets[-1] == tokens * top_k and (np.diff(offsets) >= 0).all()
    assert (np.bincount(row_token, minlength=tokens) == top_k).all()
    expert_of_row = np.repeat(np.arange(experts), np.diff(offsets))
    pairs = set(zip(row_token.tolist(), expert_of_row.tolist()))
    assert len(pairs) == tokens * top_k  # k distinct experts per token
    sums = np.bincount(row_token, weights=row_weight, minlength=tokens)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    for e in range(experts):  # (token, slot) order inside an expert
        assert (np.diff(row_token[offsets[e] : offsets[e + 1]]) > 0).all()
    counts = np.sort(np.diff(offsets))[::-1]
    if routing == "uniform":
        assert counts[0] < 3 * tokens * top_k / experts
    else:  # experts // 32 = 4 hot experts are in most tokens' top-k (about 70% at 25x)
        assert (counts[:4] > 0.5 * tokens).all() and counts[4] < 0.15 * tokens


def test_token_tiles_bound_covers_any_distribution():
    from impbench.kernels.moe import TOKENS_PER_TILE, token_tiles

    rng = np.random.default_rng(0)
    for _ in range(300):
        experts, rows = int(rng.integers(1, 300)), int(rng.integers(1, 5000))
        counts = rng.multinomial(rows, rng.dirichlet(np.full(experts, 0.3)))
        assert (-(-counts // TOKENS_PER_TILE)).sum() <= token_tiles(rows, experts)
    assert token_tiles(4096, 128) == 190 and token_tiles(64, 1) == 1 and token_tiles(65, 2) == 2


@pytest.mark.parametrize("gate_up", [True, False])
def test_tile_experts_puts_each_weight_where_wgb_reads_it(gate_up):
    from impbench.kernels.moe import tile_experts, untile_experts

    rng = np.random.default_rng(3)
    experts, n, k = (3, 1024, 512) if gate_up else (2, 512, 768)
    codes = rng.integers(0, 256, (experts, n, k // 2), dtype=np.uint8)
    scale = rng.integers(0, 256, (experts, n, k // 16), dtype=np.uint8)
    tc, ts = tile_experts(codes, scale, gate_up)
    assert tc.shape == codes.shape and ts.shape == scale.shape
    back = untile_experts(tc, ts, gate_up)
    assert (back[0] == codes).all() and (back[1] == scale).all()
    kb, ks = k // 2, k // 16
    for _ in range(500):  # the kernel's addresses (kernels_cu/moe_nvfp4.cu, V::tiled): tile t, stage c, block row br
        e, t, c, br = rng.integers(experts), rng.integers(n // 256), rng.integers(kb // 64), rng.integers(256)
        row = (br // 128) * (n // 2) + 128 * t + br % 128 if gate_up else 256 * t + br
        b, pair, b16 = rng.integers(64), rng.integers(ks // 16), rng.integers(16)
        slot = (b // 16) ^ (br & 2)  # the shared-memory swizzle, applied in memory
        assert tc[e].reshape(-1)[t * 256 * kb + c * 256 * 64 + br * 64 + 16 * slot + b % 16] == codes[e, row, 64 * c + b]
        assert ts[e].reshape(-1)[t * 256 * ks + pair * 256 * 16 + br * 16 + b16] == scale[e, row, 16 * pair + b16]


@pytest.mark.parametrize(
    "args,message",
    [
        (["moe", "--model", "nosuch"], "unknown model"),
        (["moe", "--model", "qwen3-coder", "--pp", "0"], "--pp"),
        (["moe", "--model", "qwen3-coder", "--routing", "zipf"], "--routing"),
        (["moe", "--model", "qwen3-coder", "--reps", "0"], "--reps"),
        (["moe", "--model", "gemma-4", "--inter", "740"], "--inter must be a positive multiple of 64, got 740"),
        (["moe", "--model", "gemma-4", "--inter", "0"], "--inter"),
    ],
)
def test_moe_cli_bad_input_is_one_line_exit_2(args, message, capsys):
    from impbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_kperm_order_is_the_kernels_shared_memory_permutation():
    # kernels_cu/moe_nvfp4.cu `permute`: logical unit 4i + q, word j <- halves H[q] of physical unit i + 4j
    from impbench.kernels import moe

    halves = [(1, 3), (0, 2), (5, 7), (4, 6)]
    block = np.empty(128, np.int64)
    for i in range(4):
        for q in range(4):
            for j in range(4):
                for h in range(2):
                    block[8 * (4 * i + q) + 2 * j + h] = 8 * (i + 4 * j) + halves[q][h]
    order = moe.kperm_order(384)
    assert np.array_equal(order, np.concatenate([block, block + 128, block + 256]))
    x = np.random.default_rng(3).standard_normal((5, 384)).astype(np.float16)
    assert np.array_equal(moe.to_kperm(x)[:, 7], x[:, order[7]])
    assert np.array_equal(moe.from_kperm(moe.to_kperm(x)), x)
    with pytest.raises(ValueError, match="multiple of 128"):
        moe.kperm_order(192)


# ---- the variant rule, explicit variants and prewarm (CPU) ----------------------------------------------


@pytest.mark.parametrize(
    "cc,hidden,inter,tiled,kperm,expected",
    [
        (90, 2048, 768, True, True, "wgb"),  # the engine on Qwen3-Coder: both layouts, H and I multiples of 256
        (90, 2048, 640, True, True, "wgp"),  # I % 256 == 128: the weights stay in checkpoint order
        (90, 2048, 768, False, True, "wgp"),  # a caller that cannot tile the weights
        (90, 2048, 768, True, False, "wgq"),  # tile-major weights without kperm activations: no variant reads that
        (90, 2816, 704, True, True, "wgq"),  # Gemma-4: I % 128 == 64, natural order
        (90, 2048, 768, False, False, "wgq"),  # arrays in natural order (the dense NVFP4 projections)
        (89, 2048, 768, True, True, "cvt"),  # L40 / RTX 4090: no wgmma
        (120, 2048, 768, True, True, "cvt"),  # RTX 5090: no sm_90a build
        (100, 2048, 768, False, False, "cvt"),
    ],
)
def test_choose_variant_branches(cc, hidden, inter, tiled, kperm, expected):
    assert moe.choose_variant(hidden, inter, tiled=tiled, kperm=kperm, device_cc=cc) == expected


def test_choose_variant_refuses_gpus_without_the_e4m3_conversion():
    with pytest.raises(ValueError, match="compute capability 8.9 or later, this GPU is 8.0"):
        moe.choose_variant(2048, 768, tiled=False, kperm=False, device_cc=80)


def test_the_rule_picks_what_runs_and_what_the_caller_can_give():
    for cc in (89, 90, 120):
        for hidden in (64, 128, 192, 256, 320, 384, 512, 2048, 2816):
            for inter in (64, 128, 256, 640, 704, 768):
                for tiled in (True, False):
                    for kperm in (True, False):
                        name = moe.choose_variant(hidden, inter, tiled=tiled, kperm=kperm, device_cc=cc)
                        spec = moe.VARIANTS[name]
                        assert moe.cannot_run(name, hidden, inter, device_cc=cc) is None
                        assert (tiled or not spec.tiled) and (kperm or not spec.kperm)


@pytest.mark.parametrize(
    "variant,cc,hidden,inter,reason",
    [
        ("w8", 90, 2048, 768, "unknown MoE kernel variant 'w8'; accepted: cvt, wgq, wgp, wgb"),
        ("wgq", 89, 2048, 768, "wgq uses wgmma: compute capability 9.0 only, this GPU is 8.9"),
        ("wgb", 90, 2048, 640, "wgb reads tile-major weights: H and I must be multiples of 256, got H=2048, I=640"),
        ("wgp", 90, 2816, 704, "wgp reads K-permuted activations: H and I must be multiples of 128, got H=2816, I=704"),
    ],
)
def test_cannot_run_says_why(variant, cc, hidden, inter, reason):
    assert reason in moe.cannot_run(variant, hidden, inter, device_cc=cc)


def test_variant_table_matches_the_kernel_source():
    # kernels_cu/moe_nvfp4.cu: MOE_ENTRY(suffix, VariantX) and struct VariantX { ... wgmma = ..., kperm = ..., tiled = ... }
    import re

    from impbench.kernels import modules

    source = modules.module_source(moe.FAMILY)
    entries = dict(re.findall(r"^MOE_ENTRY\((\w+), (Variant\w+)\)", source, re.M))
    traits = {name: dict(re.findall(r"(\w+) = (true|false)", body))
              for name, body in re.findall(r"struct (Variant\w+) \{\s*static constexpr bool ([^;]*);", source)}  # fmt: skip
    assert sorted(entries) == sorted(spec.suffix for spec in moe.VARIANTS.values())
    for spec in moe.VARIANTS.values():
        flags = {"wgmma": spec.wgmma, "kperm": spec.kperm, "tiled": spec.tiled}
        assert traits[entries[spec.suffix]] == {k: str(v).lower() for k, v in flags.items()}, spec


def test_every_ablation_of_tools_moe_ablation_patches_the_kernel_source():
    import importlib.util
    from pathlib import Path

    from impbench.kernels import modules

    path = Path(__file__).resolve().parents[1] / "tools" / "moe_ablation.py"
    spec = importlib.util.spec_from_file_location("moe_ablation", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    source = modules.module_source(moe.FAMILY)
    for name, patches in tool.ABLATIONS.items():
        for old, _ in patches:
            assert source.count(old) == 1, (name, old[:60])


@pytest.mark.parametrize("cc,fetched", [(90, {"wgq", "wgp", "wgb"}), (89, {"cvt"}), (120, {"cvt"})])
def test_prewarm_fetches_only_what_the_rule_can_choose(monkeypatch, cc, fetched):
    calls = []
    monkeypatch.setattr(moe, "_current_cc", lambda: cc)
    monkeypatch.setattr(moe, "_kernel", lambda op, variant: calls.append((op, variant)))
    moe.prewarm()
    assert sorted(calls) == sorted((op, v) for v in fetched for op in ("gate_up", "down"))


# ---- the gate_up activation (CPU) -----------------------------------------------------------------


def _gate_up_fakes(tokens=16, hidden=256, inter=64, experts=4, top_k=2):
    rows = tokens * top_k
    return (fake((tokens, hidden)), fake((rows,), np.int32), fake((experts + 1,), np.int32), fake((experts, 2 * inter, hidden // 2), np.uint8),
            fake((experts, 2 * inter, hidden // 16), np.uint8), fake((experts,), np.float32), fake((rows, inter)))  # fmt: skip


def test_gate_up_activation_is_checked_in_one_line():
    with pytest.raises(ValueError, match=r"moe_gate_up: activation must be one of \('silu', 'gelu_tanh'\), got 'gelu'") as info:
        moe.moe_gate_up(*_gate_up_fakes(), activation="gelu")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="activation must be one of"):
        moe.prepare(moe.moe_gate_up, *_gate_up_fakes(), variant="cvt", activation="relu")


@pytest.mark.parametrize("activation,index", [(None, 0), ("silu", 0), ("gelu_tanh", 1)])
def test_gate_up_passes_the_activation_as_its_last_argument(monkeypatch, activation, index):
    # kernels_cu/moe_nvfp4.cu gate_act: 0 SiLU, 1 GELU (tanh form); the default keeps SiLU
    monkeypatch.setattr(moe, "_current_cc", lambda: 90)
    monkeypatch.setattr(moe, "_kernel", lambda op, variant: (op, variant))
    extra = {} if activation is None else {"activation": activation}
    kernel, _, block, args, _ = moe._plan_gate_up(*_gate_up_fakes(hidden=2816, inter=704), **extra)
    assert kernel == ("gate_up", "wgq") and block == (moe.THREADS,)  # Gemma-4's shape on Hopper
    assert len(args) == 12 and isinstance(args[-1], np.int32) and int(args[-1]) == index
    assert int(args[-2]) == 6  # n_tiles: ceil(704 / 128), the last tile 64 columns wide
    assert moe.ACTIVATIONS.index("gelu_tanh") == 1
