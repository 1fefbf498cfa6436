"""Dense NVFP4 x FP16 GEMM (impbench/kernels/nvfp4_gemm.py, kernels_cu/nvfp4_gemm.cu). GPU: every variant
against a float64 reference built with the NumPy NVFP4 codec on fresh random weights (the GPU generator) and
activations, outputs poisoned with NaN first so every element must be written: the presets' NVFP4 shapes
at M 1..2048, edge shapes (partial tiles, a K % 128 == 64 tail), many tiles per block, both weight layouts,
and a graph captured in global mode that follows new inputs and a new scale2. CPU: the argument checks on
stand-in device arrays, the table against the kernel source, the rule, the sm_90a build."""

import functools
import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from impbench import nvfp4
from impbench.bench.nvfp4_gemm import time_nvfp4_dense
from impbench.errors import InputError
from impbench.kernels import nvfp4_gemm as fg
from impbench.kernels.modules import module_source
from impbench.plan import dense_gemm_shapes
from impbench.presets import list_presets
from impbench.resources import kernels_dir

# Bound on max |out - ref| / max |ref| (ref in float64 from the same codes, scales and FP16 inputs). The kernel
# dequantizes exactly and accumulates in FP32; what remains is the FP16 rounding of the output, at most 2^-11
# (4.9e-4) of an element and so of max |ref|, and FP32 summation order (~1e-6 here). A wrong nibble, scale,
# row, token or K step is an O(1) error of the elements it touches.
REL_ERR = 1e-3

NVFP4_SHAPES = sorted({(s.n, s.k) for p in list_presets() for s in dense_gemm_shapes(p) if s.nvfp4})  # qkv, o
MS = (1, 17, 64, 200, 512, 2048)


# ---- CPU: checks, table, rule, build ---------------------------------------------------------------------


class _DeviceArray:
    """What the wrapper reads of a cupy array (dtype, shape, contiguity, address), for the CPU tests."""

    __module__ = "cupy.stand_in"  # check_array accepts cupy's arrays only

    def __init__(self, shape, dtype, ptr=1 << 20):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self.data, self.flags, self.strides = SimpleNamespace(ptr=ptr), SimpleNamespace(c_contiguous=True), ()


def _args(m=32, n=256, k=512, **change):
    args = {"a": _DeviceArray((m, k), np.float16), "codes": _DeviceArray((1, n, k // 2), np.uint8),
            "scale": _DeviceArray((1, n, k // 16), np.uint8), "scale2": _DeviceArray((1,), np.float32),
            "out": _DeviceArray((m, n), np.float16)}  # fmt: skip
    args.update(change)
    return args


def test_host_arrays_are_rejected():
    a = np.zeros((4, 64), np.float16)
    with pytest.raises(ValueError, match="a must be a cupy device array"):
        fg.prepare(a, np.zeros((8, 32), np.uint8), np.zeros((8, 4), np.uint8), np.ones(1, np.float32), np.zeros((4, 8), np.float16))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"a": _DeviceArray((32, 512), np.float32)}, "a must have dtype float16"),
        ({"a": _DeviceArray((32, 96), np.float16)}, "K must be a multiple of 64 and at least 128"),
        ({"a": _DeviceArray((32, 64), np.float16)}, "K must be a multiple of 64 and at least 128"),
        ({"codes": _DeviceArray((1, 256, 128), np.uint8)}, r"codes \(1, 256, 128\) hold K = 256, a \(32, 512\) has K = 512"),
        ({"codes": _DeviceArray((2, 256, 256), np.uint8)}, r"codes must be \[N, cols\] or \[1, N, cols\]"),
        ({"codes": _DeviceArray((256, 256), np.int8)}, "codes must have dtype uint8"),
        ({"scale": _DeviceArray((256, 16), np.uint8)}, r"scale must be \[N, K/16\] = \[256, 32\]"),
        ({"scale2": _DeviceArray((2,), np.float32)}, r"scale2 must have shape \(1,\)"),
        ({"out": _DeviceArray((32, 255), np.float16)}, r"out must have shape \(32, 256\)"),
        ({"a": _DeviceArray((32, 512), np.float16, ptr=(1 << 20) + 8)}, "a .* must start 16-byte aligned"),
        ({"scale": _DeviceArray((256, 32), np.uint8, ptr=(1 << 20) + 2)}, "scale .* must start 4-byte aligned"),
        ({"codes": fg.PackedCodes(_DeviceArray((256, 128), np.uint8), 256, 256)},
         r"codes packed for \[256, 256\] hold K = 256, a \(32, 512\) has K = 512"),
        ({"codes": fg.PackedCodes(_DeviceArray((256, 192), np.uint8), 256, 512)},
         r"packed codes must have shape \(256, 256\)"),
    ],
)
def test_argument_checks_name_the_problem(change, message):
    with pytest.raises(ValueError, match=message):
        fg.prepare(**_args(**change))


def _byte_perm(x: int, y: int, selector: int) -> int:
    """CUDA's __byte_perm: byte i of the result is byte (selector >> 4i) & 7 of the 8 bytes y:x."""
    pool = (y << 32) | x
    return sum(((pool >> (8 * ((selector >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))


def _quad_exchange(row_stage: np.ndarray) -> list[bytes]:
    """The 16 bytes each quad lane t decoded from a 64-byte stage of a ModelOpt row, as v1 of the kernel
    assembled them: its own 16 bytes (row words 4t .. 4t+3), 8 byte permutes, 3 shuffles across the quad,
    8 selects (the removed quad_transpose, replayed step by step)."""
    words = [int(w) for w in row_stage.view("<u4")]
    x = {}
    for t in range(4):
        q = words[4 * t : 4 * t + 4]
        sel01 = t | (4 + t) << 4 | (t ^ 1) << 8 | (4 + (t ^ 1)) << 12
        sel23 = (t ^ 2) | (4 + (t ^ 2)) << 4 | (t ^ 3) << 8 | (4 + (t ^ 3)) << 12
        a01, a23 = _byte_perm(q[0], q[1], sel01), _byte_perm(q[2], q[3], sel01)
        b01, b23 = _byte_perm(q[0], q[1], sel23), _byte_perm(q[2], q[3], sel23)
        x[t] = (_byte_perm(a01, a23, 0x5410), _byte_perm(a01, a23, 0x7632),
                _byte_perm(b01, b23, 0x5410), _byte_perm(b01, b23, 0x7632))  # fmt: skip
    lanes = []
    for t in range(4):
        y1, y2, y3 = x[t ^ 1][1], x[t ^ 2][2], x[t ^ 3][3]  # __shfl_xor_sync by 1, 2, 3
        t1, t2 = t & 1, t & 2
        u0, u1 = (y1, x[t][0]) if t1 else (x[t][0], y1)
        u2, u3 = (y3, y2) if t1 else (y2, y3)
        z = (u2, u3, u0, u1) if t2 else (u0, u1, u2, u3)
        lanes.append(b"".join(w.to_bytes(4, "little") for w in z))
    return lanes


@pytest.mark.parametrize("k", [128, 192, 2048])
def test_packed_codes_give_each_lane_its_bytes_contiguously(k):
    rng = np.random.default_rng(k)
    codes = rng.integers(0, 256, (1, 5, k // 2), dtype=np.uint8)
    packed = fg.pack_codes(codes)
    stages = -(-k // 128)
    assert (packed.n, packed.k, packed.data.shape) == (5, k, (5, 64 * stages))
    padded = np.zeros((5, 64 * stages), np.uint8)
    padded[:, : k // 2] = codes[0]  # a last stage of 64 values reads zeros past K
    for row in range(5):
        for s in range(stages):
            for t in range(4):
                got = packed.data[row, 64 * s + 16 * t : 64 * s + 16 * t + 16].tobytes()
                assert got == _quad_exchange(padded[row, 64 * s : 64 * s + 64])[t], (row, s, t)
    assert np.array_equal(fg.pack_codes(codes[0]).data, packed.data)  # [N, K/2] and [1, N, K/2]
    with pytest.raises(ValueError, match=r"codes must be uint8 \[N, K/2\] or \[1, N, K/2\]"):
        fg.pack_codes(codes.astype(np.int8))


def test_an_unknown_variant_is_named_before_any_device_call():
    with pytest.raises(ValueError, match="unknown NVFP4 GEMM variant 'w64'; accepted: w256t128, "):
        fg.prepare(**_args(), variant="w64")


@pytest.mark.parametrize("cc", [80, 89, 100, 120])
def test_gpus_other_than_hopper_are_refused(cc):
    reason = fg.cannot_run("w256t128", device_cc=cc)
    assert reason and "compute capability 9.0 (Hopper) only" in reason and f"{cc // 10}.{cc % 10}" in reason
    assert fg.cannot_run("w256t128", device_cc=90) is None


def test_variant_table_matches_the_kernel_source():
    # kernels_cu/nvfp4_gemm.cu: NVFP4_GEMM_ENTRY(name, MT, BT, STAGES, SPLIT, SMEM), one per row of VARIANTS
    rows = re.findall(r"^NVFP4_GEMM_ENTRY\((\w+), (\d+), (\d+), (\d+), (\d+), (\d+)\)", module_source(fg.FAMILY), re.MULTILINE)
    source = {name: tuple(int(x) for x in rest) for name, *rest in rows}
    table = {v.name: (v.m64_tiles, v.tokens, v.stages, v.split, v.smem_bytes) for v in fg.VARIANTS.values()}
    assert source == table


def test_every_variant_is_chosen_on_a_preset_nvfp4_shape():
    assert NVFP4_SHAPES == [(2048, 4096), (5120, 2048)]  # qwen3-modelopt o_proj and qkv_proj
    chosen = {fg.choose_variant(m, n, k) for n, k in NVFP4_SHAPES for m in range(16, 8193, 16)}
    assert chosen == set(fg.VARIANTS)


def test_the_rule_picks_the_fastest_modelled_variant():
    for n, k in NVFP4_SHAPES + [(512, 256), (200, 192)]:
        for m in (1, 17, 100, 512, 1000, 2048, 5000):
            name = fg.choose_variant(m, n, k)
            best = min(fg.modelled_us(v, m, n, k) for v in fg.VARIANTS.values())
            assert fg.modelled_us(fg.VARIANTS[name], m, n, k) == best


def test_grids():
    persistent, split = fg.VARIANTS["w256t128"], fg.VARIANTS["w128t128k4"]
    assert persistent.grid(2048, 5120, 132) == 132 and persistent.grid(512, 2048, 132) == 32  # 320 / 32 tiles
    assert split.grid(512, 2048, 132) == 256 and split.grid(1, 8, 132) == 4  # one cluster of 4 per tile
    assert all(v.smem_bytes + 1024 <= 232448 for v in fg.VARIANTS.values())  # + the kernel's static barriers


def test_bench_names_unknown_variants_before_any_device_call():
    with pytest.raises(InputError, match="unknown NVFP4 GEMM variant 'w64'; accepted: all, w256t128"):
        time_nvfp4_dense(512, 5120, 2048, 5, variants=("w64",))


@pytest.fixture(scope="module")
def sm90a_build(tmp_path_factory):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc not on PATH")
    tmp = tmp_path_factory.mktemp("nvfp4_gemm")
    source = tmp / "nvfp4_gemm.cu"
    source.write_text(module_source(fg.FAMILY))
    done = subprocess.run(
        ["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "--std=c++17", f"-I{kernels_dir()}",
         "-Xptxas", "-v", "-o", str(tmp / "nvfp4_gemm.cubin"), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_sm90a_build_has_every_variant_and_no_spills(sm90a_build):
    compiled = set(re.findall(r"Compiling entry function '(\w+)'", sm90a_build))
    assert compiled == {v.kernel_name for v in fg.VARIANTS.values()}
    assert not re.search(r"[1-9]\d* bytes spill (stores|loads)", sm90a_build), sm90a_build
    assert not re.search(r"[1-9]\d* bytes stack frame", sm90a_build), sm90a_build
    assert "serialized" not in sm90a_build, sm90a_build  # ptxas keeps the wgmma pipeline


# ---- GPU -------------------------------------------------------------------------------------------------


def _skip_off_hopper():
    reason = fg.cannot_run("w256t128")
    if reason:
        pytest.skip(reason)


@functools.lru_cache(maxsize=4)
def _problem(m: int, n: int, k: int, seed: int):
    """Fresh weights (GPU generator, seed) and activations, and the float64 reference."""
    import cupy

    codes, scale, scale2 = nvfp4.generate_experts_gpu(1, n, k, seed=seed)
    w = nvfp4.dequantize(codes.get()[0], scale.get()[0], scale2.get()).astype(np.float64)
    rng = np.random.default_rng(seed)
    a_host = rng.standard_normal((m, k)).astype(np.float16)
    return cupy.asarray(a_host), codes, scale, scale2, a_host.astype(np.float64) @ w.T


def _poisoned(m, n):
    import cupy

    return cupy.full((m, n), cupy.nan, cupy.float16)


def _check(out, ref, where: str) -> None:
    import cupy

    cupy.cuda.get_current_stream().synchronize()
    got = out.get().astype(np.float64)
    bad = ~np.isfinite(got)
    assert not bad.any(), f"{where}: {int(bad.sum())} of {got.size} outputs unwritten or not finite, first (row, col) {tuple(np.argwhere(bad)[0])}"
    err = np.abs(got - ref)
    top = float(np.abs(ref).max())
    worst = np.unravel_index(int(err.argmax()), err.shape)
    if err[worst] > REL_ERR * top:
        wrong = np.argwhere(err > REL_ERR * top)
        rows, cols = np.unique(wrong[:, 0]), np.unique(wrong[:, 1])
        pytest.fail(f"{where}: max |out - ref| {err[worst]:.4g} = {err[worst] / top:.2e} of max |ref| {top:.4g} at (row, col) "
                    f"{tuple(int(i) for i in worst)}: out {got[worst]:.5g}, ref {ref[worst]:.5g}; {len(wrong)} elements wrong in "
                    f"{len(rows)} rows (first {rows[:8].tolist()}, mod 128: {np.unique(rows % 128)[:16].tolist()}) and {len(cols)} "
                    f"cols (first {cols[:8].tolist()}, mod 256: {np.unique(cols % 256)[:16].tolist()})")  # fmt: skip


def _run(variant, m, n, k, seed, **kwargs):
    a, codes, scale, scale2, ref = _problem(m, n, k, seed)
    out = _poisoned(m, n)
    fg.prepare(a, codes, scale, scale2, out, variant, **kwargs)()
    _check(out, ref, f"{variant} M={m} N={n} K={k}")
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [*fg.VARIANTS, None])  # fastest: the variants share one problem
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("n,k", NVFP4_SHAPES, ids=[f"n{n}k{k}" for n, k in NVFP4_SHAPES])
def test_matches_float64_on_the_preset_nvfp4_shapes(variant, m, n, k):
    _skip_off_hopper()
    _run(variant, m, n, k, seed=m + n + k)


EDGES = [  # M, N, K
    (17, 200, 192),  # partial weight tiles (N % 128 != 0), a K % 128 == 64 tail stage, 2 stages
    (300, 136, 320),  # N below one tile and not a multiple of 8; 3 stages with a tail; 2-3 token tiles
    (33, 512, 256),  # tiny-moe's qkv with attention in NVFP4 (tests/test_engine.py)
    (130, 256, 256),  # tiny-moe's o_proj; a 2-row last token tile
    (1, 8, 128),  # the smallest: one stage, 8 weight rows
    (257, 384, 1152),  # 9 stages: split-K ranks of 2 and 3 stages; 3 token tiles of 128 (1 row in the last)
]


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(fg.VARIANTS))
@pytest.mark.parametrize("m,n,k", EDGES)
def test_edge_shapes(variant, m, n, k):
    _skip_off_hopper()
    _run(variant, m, n, k, seed=7 * m + n + k)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", [v.name for v in fg.VARIANTS.values() if v.split == 1])
def test_persistent_blocks_take_many_tiles(variant):
    # 3 blocks for 16-30 tiles: the stage ring runs on across tiles, phases wrap many times
    _skip_off_hopper()
    _run(variant, 600, 1100, 512, seed=3, max_ctas=3)


@pytest.mark.gpu
def test_both_weight_layouts_and_repeated_launches_agree_bitwise():
    import cupy

    _skip_off_hopper()
    a, codes, scale, scale2, ref = _problem(200, 5120, 2048, seed=5)
    packed = fg.pack_codes(codes)  # as the engine hands them over
    for variant in fg.VARIANTS:
        first, second, flat, engine = (_poisoned(200, 5120) for _ in range(4))
        launch = fg.prepare(a, codes, scale, scale2, first, variant)
        launch()
        fg.prepare(a, codes, scale, scale2, second, variant)()
        fg.prepare(a, codes[0], scale[0], scale2, flat, variant)()  # [N, K/2] and [N, K/16]
        fg.prepare(a, packed, scale, scale2, engine, variant)()
        _check(first, ref, variant)
        assert cupy.array_equal(first, second) and cupy.array_equal(first, flat), variant
        assert cupy.array_equal(first, engine), variant


@pytest.mark.gpu
@pytest.mark.parametrize("variant", list(fg.VARIANTS))
def test_graph_captured_in_global_mode_follows_new_inputs_and_scale2(variant):
    import cupy
    from cupy.cuda import runtime

    _skip_off_hopper()
    m, n, k = 300, 2048, 1024
    a, codes, scale, scale2, _ = _problem(m, n, k, seed=11)
    a, scale2 = a.copy(), scale2.copy()  # changed below; the cached problem stays as it was
    w = nvfp4.dequantize(codes.get()[0], scale.get()[0], 1.0).astype(np.float64)  # without scale2
    out = _poisoned(m, n)
    fg.prewarm()
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        launch = fg.prepare(a, codes, scale, scale2, out, variant)  # outside the capture: maps, kernel fetch
        launch()
        stream.synchronize()
        stream.begin_capture(mode=runtime.streamCaptureModeGlobal)
        launch()
        graph = stream.end_capture()
        rng = np.random.default_rng(12)
        generated = float(scale2.get()[0])
        for s2 in (np.float32(3 * generated), np.float32(0.5 * generated)):  # outputs stay well inside FP16
            a_host = rng.standard_normal((m, k)).astype(np.float16)
            a.set(a_host)
            scale2.fill(s2)
            out.fill(cupy.nan)
            stream.synchronize()
            graph.launch(stream=stream)
            stream.synchronize()
            _check(out, a_host.astype(np.float64) @ w.T * np.float64(s2), f"{variant} replay, scale2 {s2:.3g}")


@pytest.mark.gpu
def test_bench_times_the_rule_s_variant_cublas_and_every_other_variant():
    _skip_off_hopper()
    row = time_nvfp4_dense(300, 640, 512, reps=3, variants=("all",))
    assert row["variant"] == fg.choose_variant(300, 640, 512) and row["ours_us"] > 0 and row["cublas_us"] > 0
    assert set(row["others"]) == set(fg.VARIANTS) - {row["variant"]}
    # against cuBLAS on FP16-dequantized weights: both round to FP16, so a few FP16 ulps in the norm
    assert row["rel_err"] < 2e-3 and all(o["rel_err"] < 2e-3 and o["us"] > 0 for o in row["others"].values()), row
    if row["floor_us"] is not None:
        assert row["floor_bound"] in ("memory", "compute") and row["floor_us"] > 0
