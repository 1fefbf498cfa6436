"""Dense FP16 GEMM, in the order of impbench/kernels/gemm: the table (variants), the choice (dispatch), the
kernels (launch: GPU, every variant against a float64 reference). The CPU tests need no cupy."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import impbench
from impbench.errors import InputError
from impbench.kernels import gemm as g
from impbench.kernels.gemm.variants import SEED_VARIANT
from impbench.kernels.modules import module_source
from impbench.plan import dense_gemm_shapes
from impbench.presets import list_presets
from impbench.resources import kernels_dir

A100_LIKE = g.DeviceInfo(108, "80", 1410.0)
NO_WGMMA = g.DeviceInfo(132, "89", 1980.0)  # an H100's SMs and clock without sm_90a: the mma family only
PRESET_NK = sorted({(s.n, s.k) for p in list_presets() for s in dense_gemm_shapes(p)})


@pytest.fixture
def every_variant(monkeypatch):
    monkeypatch.delenv("IMPBENCH_GEMM_VARIANTS", raising=False)


# ---- variants: the table and the source generated from it -----------------------------------------


@pytest.fixture(scope="module")
def sm90a_build(tmp_path_factory):
    """ptxas -v of the source NVRTC compiles (gemm_fp16.cu plus the entry points generated from the table)."""
    tmp = tmp_path_factory.mktemp("gemm")
    source = tmp / "gemm_fp16.cu"
    source.write_text(module_source(g.FAMILY))
    done = subprocess.run(
        ["nvcc", "-gencode=arch=compute_90a,code=sm_90a", "-cubin", "--std=c++17", f"-I{kernels_dir()}",
         "-Xptxas", "-v", "-o", str(tmp / "gemm.cubin"), str(source)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stderr


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_generated_source_declares_exactly_the_table(sm90a_build):
    """The compiled source has one kernel per row, each using the registers its
    row states (the block-wave model's occupancy). The IMPGEMM_* macros static_assert each row's threads and
    shared bytes, so a compile that succeeds also checked those."""
    registers = dict(re.findall(r"Compiling entry function '(\w+)'.*?Used (\d+) registers", sm90a_build, re.S))
    assert set(registers) == {v.kernel_name for v in g.VARIANTS.values()}
    wrong = {v.name: (v.regs, int(registers[v.kernel_name])) for v in g.VARIANTS.values()
             if int(registers[v.kernel_name]) != v.regs}  # fmt: skip
    assert not wrong, f"table vs ptxas registers: {wrong}"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH")
def test_sm90a_build_has_no_spills(sm90a_build):
    assert "spill" in sm90a_build
    assert not re.search(r"[1-9]\d* bytes spill (stores|loads)", sm90a_build), sm90a_build
    assert not re.search(r"[1-9]\d* bytes stack frame", sm90a_build), sm90a_build


def test_table_holds_exactly_what_the_dispatch_picks(every_variant):
    """Every row is picked on some preset dense shape (M 1 and every multiple of 16 up to 8192, any guard) on
    the H100 or on a GPU without wgmma, and nothing outside the table is ever picked: a variant nothing
    chooses is code to maintain and compile for nothing."""
    picked = set()
    for n, k in PRESET_NK:
        for m in [1, *range(16, 8193, 16)]:
            for guard in g.GUARDS:
                picked |= {g.choose_variant(m, n, k, guard, device) for device in (g.H100, NO_WGMMA)}
    picked.discard(None)
    assert picked <= set(g.VARIANTS)
    assert set(g.VARIANTS) - picked == set(), "never picked"


def test_importing_the_package_needs_no_cupy():
    code = "import sys, impbench.kernels.gemm; assert 'cupy' not in sys.modules, 'cupy imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(Path(impbench.__file__).parents[1]), "PATH": ""})  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_tma_grids():
    v = g.VARIANTS["tma_128x160"]
    assert v.units(512, 5120) == 4 * 32 and v.grid(512, 5120) == (128, 1)
    assert g.VARIANTS["tma_128x256"].grid(2048, 151936) == (132, 1)  # persistent: one CTA per SM
    c2 = g.VARIANTS["tma_128x256c2"]
    assert c2.units(300, 512) == 2 * 2 and c2.grid(300, 512) == (8, 1)  # M tiles in pairs, odd count rounded up
    assert c2.grid(2048, 151936, clusters=60) == (120, 1)
    k4 = g.VARIANTS["tma_128x128k4"]
    assert k4.grid(512, 128) == (16, 1) and k4.cluster == 4 and k4.large


def test_tsk_grid():
    v = g.VARIANTS["tsk_64x64k4"]
    assert v.grid(1024, 128) == (16 * 2 * 4, 1) and v.grid(100, 300) == (2 * 5 * 4, 1) and not v.large
    assert v.cluster == 4 and v.tensor_maps


# ---- dispatch: guards and rules ----------------------------------------------------------------


def test_preset_shape_choices_are_unchanged(every_variant):
    """Every preset dense-GEMM shape at M 1, 512, 1024, 2048, 8192 gets, under each guard, on the H100 and on a
    GPU without wgmma, the variant the 68-variant table of c47b1ca gave it (tests/gemm_preset_choices.json)."""
    data = json.loads(Path(__file__).with_name("gemm_preset_choices.json").read_text())
    for device_name, rows in data["choices"].items():
        device = g.DeviceInfo(*data["devices"][device_name])
        for shape, expected in rows.items():
            m, n, k = map(int, shape.split("x"))
            assert [g.choose_variant(m, n, k, p, device) for p in data["guards"]] == expected, (device_name, shape)


def test_tight_declines_small_shapes_and_accepts_large(every_variant):
    assert g.choose_variant(512, 32, 2048, "tight", g.H100) is None
    assert g.choose_variant(1, 151936, 2048, "tight", g.H100) is None
    assert g.choose_variant(100, 5120, 2048, "tight", g.H100) is None
    name = g.choose_variant(512, 5120, 2048, "tight", g.H100)
    assert name is not None and g.VARIANTS[name].large


def test_permissive_takes_every_shape_on_a_large_tile(every_variant):
    for shape in [(512, 32, 2048), (1, 151936, 2048), (512, 1, 2048), (2048, 5120, 2048)]:
        name = g.choose_variant(*shape, "permissive", g.H100)
        assert name is not None and g.VARIANTS[name].large


def test_small_n_fills_the_gpu_on_the_n32_shape(every_variant):
    # the original kernel: 4 blocks, 75% of the MMA work on padding
    name = g.choose_variant(512, 32, 2048, "small-n", g.H100)
    variant = g.VARIANTS[name]
    gx, gy = variant.grid(512, 32)
    assert gx * gy >= 32
    assert variant.bn <= 32  # no column padding
    for shape in [(512, 1, 2048), (1, 151936, 2048), (512, 128, 2048), (7, 9, 16)]:
        assert g.choose_variant(*shape, "small-n", g.H100) is not None


def test_guard_objects_and_names(every_variant):
    from impbench.arms import GUARDS as ARM_GUARDS

    assert set(g.GUARDS) == {"tight", "permissive", "small-n", "seed"}
    assert set(ARM_GUARDS) == {g.CUBLAS, *g.GUARDS}  # an arm takes every dispatch guard, and cublas
    assert g.choose_variant(512, 5120, 2048, g.GUARDS["tight"], g.H100) == g.choose_variant(512, 5120, 2048, "tight", g.H100)
    with pytest.raises(ValueError, match="unknown GEMM guard 'off'; accepted: .*seed"):
        g.choose_variant(512, 512, 512, "off", g.H100)


def test_the_seed_tile_is_the_original_engine_s_capture_tile():
    """One 128x128x32 tile, 4 warps of 64x64, no split-K: on M=512 N=32 K=2048, 4 blocks with 75% of the
    MMA work on padding (the shape that made the original engine's capture slower on Qwen3.6)."""
    seed = g.VARIANTS[SEED_VARIANT]
    assert (seed.family, seed.bm, seed.bn, seed.bk, seed.warps, seed.split_k) == ("mma", 128, 128, 32, (2, 2), 1)
    assert seed.threads == 128 and seed.large  # 4 warps of 64x64
    gx, gy = seed.grid(512, 32)
    assert gx * gy == 4 and 1 - 32 / (gy * seed.bn) == 0.75


@pytest.mark.parametrize("device", [g.H100, NO_WGMMA, A100_LIKE], ids=["h100", "no-wgmma", "a100-like"])
def test_seed_runs_every_preset_shape_on_the_original_tile(every_variant, device):
    """Every dense shape of every preset, at any M, on any GPU and on the portable path: mma_128x128, never
    another tile, split-K or cuBLAS (None)."""
    assert g.candidates("seed", device) == [g.VARIANTS[SEED_VARIANT]]
    for n, k in PRESET_NK:
        for m in (1, 16, 100, 512, 1024, 2048, 8192):
            for portable in (False, True):
                assert g.choose_variant(m, n, k, "seed", device, portable) == SEED_VARIANT, (m, n, k, portable)


def test_seed_is_pinned_whatever_the_variants_setting_names(monkeypatch):
    """IMPBENCH_GEMM_VARIANTS narrows what the choosing guards pick from; seed is a configuration, so it
    keeps its kernel (else an experiment's setting would make the seed arm silently another), and a bad
    name in the setting is still an error under seed."""
    monkeypatch.setenv("IMPBENCH_GEMM_VARIANTS", "mma_16x16k8")
    assert g.choose_variant(512, 32, 2048, "small-n", g.H100) == "mma_16x16k8"
    assert g.choose_variant(512, 32, 2048, "seed", g.H100) == SEED_VARIANT
    assert g.choose_variant(2048, 9216, 2048, "seed", g.H100) == SEED_VARIANT
    monkeypatch.setenv("IMPBENCH_GEMM_VARIANTS", "mma_16x16k8,mma_128x256")
    with pytest.raises(InputError, match="mma_128x256"):
        g.choose_variant(512, 32, 2048, "seed", g.H100)


def test_qwen3_6_small_n_shapes_fill_the_gpu_where_seed_pads(every_variant):
    """Qwen3.6's in_proj_b / in_proj_a (N=32) and shared-expert gate (N=1) at M 512-2048: small-n puts them
    on a 16-row split-K mma tile (no tile wider than 32 columns, at least 32 blocks), modelled at under a
    third of the seed tile's time (latency: 64 K steps of 32 on 4-16 blocks)."""
    seed = g.VARIANTS[SEED_VARIANT]
    for m in (512, 1024, 2048):
        for n in (1, 32):
            variant = g.VARIANTS[g.choose_variant(m, n, 2048, "small-n", g.H100)]
            gx, gy = variant.grid(m, n)
            assert variant.family == "mma" and variant.bn <= 32 and gx * gy >= 32, (m, n, variant.name)
            assert 3 * g.estimate_us(variant, m, n, 2048) < g.estimate_us(seed, m, n, 2048), (m, n, variant.name)


@pytest.mark.parametrize("shape", [(0, 8, 8), (8, 0, 8), (8, 8, 12), (8, 8, 0)])
def test_choose_variant_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"M=\d+ N=\d+ K=\d+"):
        g.choose_variant(*shape, "small-n", g.H100)


def test_no_wgmma_off_hopper(every_variant):
    for shape in [(2048, 5120, 2048), (512, 32, 2048), (2048, 151936, 2048)]:
        for guard in g.GUARDS:
            name = g.choose_variant(*shape, guard, A100_LIKE)
            assert name is None or g.VARIANTS[name].family == "mma"


def test_portable_chooses_on_hopper_as_a_gpu_without_wgmma(every_variant):
    moved = 0
    for n, k in PRESET_NK:
        for m in (1, 100, 512, 2048):
            for guard in g.GUARDS:
                portable = g.choose_variant(m, n, k, guard, g.H100, portable=True)
                assert portable == g.choose_variant(m, n, k, guard, NO_WGMMA), (m, n, k, guard)
                assert portable is None or g.VARIANTS[portable].family == "mma"
                moved += portable != g.choose_variant(m, n, k, guard, g.H100)
    assert moved > 0  # on Hopper the switch changes the choice, or it would test nothing


def test_variants_setting_restricts_the_choice(monkeypatch):
    monkeypatch.setenv("IMPBENCH_GEMM_VARIANTS", "mma_16x16k8, tma_128x128")
    assert {v.name for v in g.candidates("small-n", g.H100)} == {"mma_16x16k8", "tma_128x128"}
    assert g.choose_variant(512, 32, 2048, "small-n", g.H100) == "mma_16x16k8"
    assert g.choose_variant(2048, 5120, 2048, "tight", g.H100) == "tma_128x128"
    assert g.choose_variant(2048, 5120, 2048, "tight", g.H100, portable=True) is None  # no large mma tile allowed
    monkeypatch.setenv("IMPBENCH_GEMM_VARIANTS", "mma_16x16k8,mma_128x256")
    with pytest.raises(InputError, match="mma_128x256"):
        g.choose_variant(512, 32, 2048, "small-n", g.H100)


def test_routers_go_to_the_tsk_family_under_small_n(every_variant):
    for m, n, k in ((512, 128, 2048), (1024, 128, 2048), (1024, 128, 2816), (512, 256, 2048)):
        # routers (N = experts) go to the small-N split-K family under small-n
        assert g.VARIANTS[g.choose_variant(m, n, k, "small-n", g.H100)].family == "tsk", (m, n, k)
    for guard in ("tight", "permissive"):  # the large-tile guards never take it
        assert g.VARIANTS[g.choose_variant(1024, 128, 2048, guard, g.H100)].large
    # nor a wide output outside its model (the engine's last-token lm_head: 180 µs on tsk, 150 on mma)
    assert g.VARIANTS[g.choose_variant(1, 151936, 2048, "small-n", g.H100)].family != "tsk"


def test_qwen3_coder_shapes_go_to_the_tma_family_on_hopper(every_variant):
    for m in (512, 1024, 2048):
        for n, k in ((5120, 2048), (2048, 4096), (128, 2048), (151936, 2048)):
            for guard in ("tight", "small-n") if n > 128 else ("tight",):  # small-n: the router takes tsk
                assert g.VARIANTS[g.choose_variant(m, n, k, guard, g.H100)].family == "tma", (m, n, k, guard)
    # the router on the tight guard: a large tile, split over K so the launch still fills the GPU
    tight = g.VARIANTS[g.choose_variant(512, 128, 2048, "tight", g.H100)]
    assert tight.large and tight.split_k >= 4 and tight.grid(512, 128)[0] >= 16


# ---- bench.gemm --------------------------------------------------------------------------------------


def test_bench_shape_parsing():
    from impbench.bench.gemm import build_cases, parse_ms, parse_shape

    assert parse_shape("512x32x2048") == (512, 32, 2048)
    for bad in ["512x32", "axbxc", "512x32x2047", "0x32x2048", ""]:
        with pytest.raises(InputError, match="bad --shape"):
            parse_shape(bad)
    assert parse_ms("512, 1024") == (512, 1024)
    with pytest.raises(InputError):
        parse_ms("a,b")
    cases = build_cases((), ("512x32x2048", "512x32x2048"), (512,))
    assert [(c.m, c.n, c.k) for c in cases] == [(512, 32, 2048)]


def test_bench_covers_the_qwen3_6_dense_shapes_from_the_plan():
    """`impbench gemm --model qwen3.6`: the cases come from plan.dense_gemm_shapes at each M, so Qwen3.6's
    linear-attention, gated-attention, router, shared-expert (and its N=1 gate) and lm_head shapes are all
    timed without a second list."""
    from impbench.bench.gemm import DEFAULT_MS, build_cases

    cases = {(c.m, c.n, c.k): c.ops for c in build_cases(("qwen3.6",), (), DEFAULT_MS)}
    wanted = {"in_proj_qkvz": (12288, 2048), "in_proj_b": (32, 2048), "in_proj_a": (32, 2048),
              "out_proj": (2048, 4096), "qkv_proj": (9216, 2048), "o_proj": (2048, 4096), "router": (256, 2048),
              "shared_gate_up": (1024, 2048), "shared_down": (2048, 512), "shared_expert_gate": (1, 2048),
              "lm_head": (248320, 2048)}  # fmt: skip
    for op, (n, k) in wanted.items():
        for m in (512, 1024, 2048):
            assert f"qwen3.6-35b-a3b:{op}" in cases.get((m, n, k), ()), (op, m, n, k)
    assert len(cases) == 3 * len({nk for nk in wanted.values()})


def test_bench_guard_choices_include_seed(capsys):
    from impbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gemm", "--guard", "seeds"])
    assert exc.value.code == 2 and "'seed'" in capsys.readouterr().err


def test_cli_bad_shape_is_one_line_exit_2(capsys):
    from impbench.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gemm", "--shape", "512by32"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad --shape" in err


@pytest.mark.gpu
def test_gemm_bench_times_the_seed_guard_against_cublas():
    """`impbench gemm --guard seed`: each row times mma_128x128 against cuBLAS, its output within the
    bench's error bound (rel-err = ||ours - cuBLAS|| / ||cuBLAS|| < 2e-3, ~1e-4 for a correct kernel),
    and the guards column shows what the other guards run instead."""
    from impbench.bench.gemm import run_gemm_bench

    report = run_gemm_bench((), ("512x32x2048", "1024x1x2048"), (512,), reps=5, guard="seed")
    assert [row["shape"] for row in report.rows] == ["512x32x2048", "1024x1x2048"]
    for row in report.rows:
        assert row["variant"] == SEED_VARIANT and row["guard"] == "seed", row
        assert row["ours_us"] > 0 and row["cublas_us"] > 0 and row["rel_err"] < 2e-3, row
        assert f"seed: {SEED_VARIANT}" in row["guards"] and "tight: cublas" in row["guards"], row


# ---- launch (GPU): every variant against float64 ---------------------------------------------------

SHAPES = [
    (512, 32, 2048),  # the story's shape
    (1, 151936 // 16, 2048),  # lm_head-like on the last token (N cut to keep the test quick)
    (1, 40, 64),
    (100, 77, 200),  # ragged M, odd N, K not a multiple of any BK
    (129, 129, 72),
    (256, 1, 128),
    (300, 520, 1032),
    (17, 8, 8),
    (1040, 4200, 136),  # more tma work units than SMs (persistent loop, odd M-tile count for c2)
]
# Per element, |out - ref| <= TOL (1 + |ref|), ref in float64 from the same FP16 inputs (outputs ~ N(0, 1)):
# FP16 output rounding is at most 2^-11 |ref| (4.9e-4 |ref|) and FP32 accumulation adds ~1e-5 at these K,
# so a correct kernel stays under half the bound; a wrong tile, a lost K slice or a stale value misses it
# by orders of magnitude.
TOL = 1e-3


def _inputs(m, n, k, seed):
    """Fresh random FP16 inputs (never zeros); W scaled by 1/sqrt(K) so outputs are ~ N(0, 1)."""
    import cupy

    rng = cupy.random.default_rng(seed)
    a = rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16)
    w = (rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16)
    return a, w


def _ref(a, w):
    import cupy

    return cupy.matmul(a.astype(cupy.float64), w.astype(cupy.float64).T)


def _poisoned(m, n):
    import cupy

    return cupy.full((m, n), cupy.nan, dtype=cupy.float16)


def _error(out, ref) -> str | None:
    """None where every output was written and is within the bound, else what is wrong."""
    import cupy

    nan = cupy.isnan(out)
    if bool(nan.any()):
        first = tuple(int(i) for i in cupy.argwhere(nan)[0])
        return f"{int(nan.sum())} outputs unwritten (NaN), first at (row, col) {first}"
    excess = cupy.abs(out.astype(cupy.float64) - ref) / (1 + cupy.abs(ref))
    row, col = divmod(int(excess.argmax()), excess.shape[1])  # cupy.unravel_index refuses a Python int under NumPy 2
    worst = float(excess[row, col])
    return None if worst <= TOL else (f"max |out - ref| / (1 + |ref|) = {worst:.2e} > {TOL} at (row, col) ({row}, {col}): "
                                      f"out {float(out[row, col]):.5g}, ref {float(ref[row, col]):.5g}")  # fmt: skip


def _usable():
    return [v.name for v in g.candidates("small-n")]


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_variant_matches_float64_and_writes_every_output(shape):
    m, n, k = shape
    a, w = _inputs(m, n, k, seed=m * 31 + n * 7 + k)
    ref = _ref(a, w)
    failures = {}
    for name in _usable() + [None]:  # None: the default choice
        out = _poisoned(m, n)
        g.gemm(a, w, out, variant=name)
        failures[name] = _error(out, ref)
    assert not {name: why for name, why in failures.items() if why}, shape


@pytest.mark.gpu
@pytest.mark.parametrize("guard", list(g.GUARDS))
def test_portable_path_matches_float64(guard):
    """The mma.sync kernels a GPU without wgmma runs, chosen on this GPU through portable=True."""
    failures = {}
    for m, n, k in SHAPES + [(512, 128, 2048), (2048, 1024, 2048), (1024, 5120, 2048)]:
        name = g.choose_variant(m, n, k, guard, portable=True)
        if name is None:
            continue
        assert g.VARIANTS[name].family == "mma", (m, n, k)
        a, w = _inputs(m, n, k, seed=m + 3 * n + k)
        out = _poisoned(m, n)
        g.gemm(a, w, out, variant=name)
        failures[(m, n, k, name)] = _error(out, _ref(a, w))
    assert failures and not {case: why for case, why in failures.items() if why}


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n, v in g.VARIANTS.items() if v.family == "tsk"])
def test_tsk_k_slices(name):
    """Ranks with no K tile (K < 64 S), slices longer than the pipeline (refills), ragged edges."""
    if name not in _usable():
        pytest.skip(f"{name} needs a Hopper GPU")
    for m, n, k in [(64, 128, 64), (70, 130, 200), (1024, 128, 2816), (130, 250, 4104), (3, 64, 8)]:
        a, w = _inputs(m, n, k, seed=m + n + k)
        out = _poisoned(m, n)
        g.gemm(a, w, out, variant=name)
        assert _error(out, _ref(a, w)) is None, (name, (m, n, k), _error(out, _ref(a, w)))


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n, v in g.VARIANTS.items() if v.family == "tsk"])
def test_tsk_tile_orders_and_store_modes_cover_every_tile(name):
    """Every tile order (bands of G M tiles, the last band short where G does not divide the M tiles) and
    both output paths (TMA store of a staged tile, stores from registers) write every output and give the
    same bits: they move tiles and bytes, not the arithmetic."""
    import cupy

    if name not in _usable():
        pytest.skip(f"{name} needs a Hopper GPU")
    m, n, k = 300, 3 * 128 + 8, 520  # 5 M tiles, 4 or 7 N tiles
    a, w = _inputs(m, n, k, seed=11)
    ref = _ref(a, w)
    first = None
    for group, tma_store in [(gr, st) for gr in (1, 2, 3, 5, 64) for st in (True, False)]:
        how = f"{name} group {group} tma_store {tma_store}"
        out = _poisoned(m, n)
        g.prepare(a, w, out, name, group, tma_store)()
        assert _error(out, ref) is None, (how, _error(out, ref))
        bits = out.view(cupy.uint16)
        first = bits.copy() if first is None else first
        assert bool((bits == first).all()), f"{how} differs from group 1 with the TMA store"


@pytest.mark.gpu
def test_random_shapes_under_each_guard():
    """Each guard's choice, or cuBLAS where it declines, on random small and ragged shapes."""
    import cupy

    rs = __import__("random").Random(7)
    for trial in range(12):
        m, n, k = rs.choice([1, 3, 64, 127, 128, 513]), rs.choice([1, 5, 32, 127, 128, 300]), 8 * rs.randint(1, 96)
        a, w = _inputs(m, n, k, seed=trial)
        ref = _ref(a, w)
        for guard in g.GUARDS:
            out = _poisoned(m, n)
            path = g.choose_variant(m, n, k, guard)
            if path is None:
                cupy.matmul(a, w.T, out=out)
            else:
                g.gemm(a, w, out, variant=path)
            assert _error(out, ref) is None, (guard, path, (m, n, k), _error(out, ref))


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(g.VARIANTS))
def test_capture_replay_is_bit_identical(name):
    """A launch captured in global mode (no allocation, sync or host read inside) replays to the eager bits."""
    import cupy

    if name not in _usable():
        pytest.skip(f"{name} needs a Hopper GPU")
    m, n, k = 300, 264, 520
    a, w = _inputs(m, n, k, seed=5)
    eager = cupy.empty((m, n), cupy.float16)
    replay = _poisoned(m, n)
    cupy.cuda.Device().synchronize()  # inputs were written on the null stream
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        g.gemm(a, w, eager, variant=name)  # compiles and fetches the kernel outside the capture
        stream.begin_capture(mode=cupy.cuda.runtime.streamCaptureModeGlobal)
        g.gemm(a, w, replay, variant=name)
        graph = stream.end_capture()
        graph.launch(stream)
    stream.synchronize()
    assert bool((eager.view(cupy.uint16) == replay.view(cupy.uint16)).all())


@pytest.mark.gpu
def test_seed_guard_on_the_qwen3_6_shapes_matches_float64():
    """Guard seed's path (mma_128x128 everywhere) on every Qwen3.6 dense shape at M=512 (the lm_head at M=1,
    as the engine runs it), fresh inputs, NaN-poisoned outputs, against float64 within TOL."""
    from impbench.presets import get_preset

    failures = {}
    for s in dense_gemm_shapes(get_preset("qwen3.6")):
        m, n, k = (1 if s.last_token_only else 512), s.n, s.k
        name = g.choose_variant(m, n, k, "seed")
        assert name == SEED_VARIANT, (s.op, name)
        a, w = _inputs(m, n, k, seed=n + k)
        out = _poisoned(m, n)
        g.gemm(a, w, out, variant=name)
        failures[f"{s.op} {m}x{n}x{k}"] = _error(out, _ref(a, w))
    assert not {case: why for case, why in failures.items() if why}


@pytest.mark.gpu
def test_argument_checks_name_the_shapes():
    import cupy

    a = cupy.zeros((16, 64), cupy.float16)
    w = cupy.zeros((32, 64), cupy.float16)
    out = cupy.zeros((16, 32), cupy.float16)
    with pytest.raises(ValueError, match=r"\(16, 64\).*\(32, 48\)"):
        g.gemm(a, cupy.zeros((32, 48), cupy.float16), out)
    with pytest.raises(ValueError, match=r"out must have shape \(16, 32\), got \(16, 31\)"):
        g.gemm(a, w, cupy.zeros((16, 31), cupy.float16))
    with pytest.raises(ValueError, match="dtype float16"):
        g.gemm(a.astype(cupy.float32), w, out)
    with pytest.raises(ValueError, match="C-contiguous"):
        g.gemm(cupy.zeros((64, 16), cupy.float16).T, w, out)
    with pytest.raises(ValueError, match="multiple of 8"):
        g.gemm(cupy.zeros((16, 60), cupy.float16), cupy.zeros((32, 60), cupy.float16), out)
    with pytest.raises(ValueError, match="unknown GEMM variant"):
        g.gemm(a, w, out, variant="nope")
