"""Wrapper of kernels_cu/nvfp4_gemm.cu: the dense NVFP4 x FP16 GEMM of the NVFP4 projections (Hopper only).

out fp16 [M, N] = a fp16 [M, K] . dequant(W)^T with W in the ModelOpt NVFP4 layout (impbench/nvfp4.py):
codes uint8 [N, K/2] (or the [1, N, K/2] of engine.weights.Nvfp4Linear), e4m3 block scales uint8 [N, K/16]
(or [1, N, K/16]) and scale2 fp32 [1], which only the kernel reads. K a multiple of 64, at least 128; M >= 0.

The kernel reads the codes packed (`pack_codes`): within each 128-value stage of a row, the 16 bytes a thread
decodes are contiguous (docs/notes/nvfp4_gemm.md). `prepare` checks the arguments once, encodes the two TMA
tensor maps on the host and returns a no-argument launcher (impbench.kernels.driver); given PackedCodes it
allocates nothing and reads nothing from the device, so a captured graph replays it for every chunk of the
same length (given ModelOpt codes it packs a copy first: call it outside a capture). The kernel is wgmma (compute capability 9.0); on any
other GPU `prepare` raises ValueError.

VARIANTS is the one table of the kernel's entry points (the .cu declares the same rows; tests check) and
`choose_variant` the one rule that picks a row per shape: the fastest by `modelled_us`, whose per-variant
efficiencies are predictions (docs/notes/nvfp4_gemm.md) until a lent GPU measures them.
"""

from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass

import numpy as np

from impbench.kernels import driver
from impbench.kernels.checks import check_array
from impbench.kernels.modules import get_function

FAMILY = "nvfp4_gemm"
HOPPER_CC = 90
THREADS = 384  # a producer warpgroup and two consumer warpgroups
BK = 128  # K per pipeline stage
K_MULTIPLE = 64  # whole 4-byte scale pieces (the kernel copies a stage's 8 scale bytes of a row as two)
MIN_K = 128  # a codes row at least as wide as the 64-byte TMA box
H100_SMS = 132  # the plan's SM count where no GPU is usable

# CUtensorMapDataType of the codes (driver.py names the FP16 one)
_UINT8 = 0

# The time model (modelled_us). Clock and tensor rate: H100 / H200 under load (docs/DESIGN.md, Facts); 989.4
# TFLOP/s dense FP16 = 132 SMs x 4096 FLOP per clock at 1830 MHz.
SM_MHZ = 1980.0
FLOP_PER_SM_CLOCK = 4096
# The constants below are fitted (least squares on log time, the fill held at most 4 µs) to v2's 72
# measurements: five variants on qwen3-modelopt's two shapes at M 64 / 128 / 256 / 512 / 1024 / 2048 (H100,
# docs/notes/nvfp4_gemm.md), rms error 7%; each variant's efficiency is refitted as the kernels change. The
# predictions written before v1 ran (fill 1.5, end 0.5 / 1.5 µs, efficiencies 0.71-0.82) were 1.6-2.9x too
# fast and made the rule pick a split-K 4 variant at 2x the best time.
FILL_US = 4.0  # a launch's first stages in flight before the first wgmma
TILE_END_US = 0.0  # persistent: a tile's stores hide under the producer's loads of the next tile
SPLIT_END_US = 7.1  # split-K: partials through distributed shared memory, two cluster barriers
# 4-block clusters of these 200 KiB blocks resident at once on a 132-SM H100 or H200: 30, not 33, as the GPUs'
# SMs sit in GPCs of unequal size (a cluster stays inside one). Read from the wave times: 32 clusters take two
# rounds (o_proj at M 512: 42.9 µs against 23.0 for 16), 80 take three. Counting 33 made the rule pick split-K 4
# there, 25% slower than split-K 2; with 30 the fit's rms error fell from 12% to 7%.
FOUR_BLOCK_CLUSTERS_132 = 30


@dataclass(frozen=True)
class Variant:
    """One entry point nvfp4_gemm_<name> of kernels_cu/nvfp4_gemm.cu (its NVFP4_GEMM_ENTRY row)."""

    name: str
    m64_tiles: int  # MT: m64 weight tiles per consumer warpgroup; a tile is 128 * MT weight rows
    tokens: int  # BT: token rows of a tile (the wgmma N)
    stages: int  # pipeline stages of BK = 128
    split: int  # blocks of a cluster sharing one tile's K (1: persistent, one block per SM)
    efficiency: float  # predicted share of the FP16 tensor peak inside a tile's K loop (docs/notes/nvfp4_gemm.md)

    @property
    def weight_rows(self) -> int:
        return 128 * self.m64_tiles

    @property
    def kernel_name(self) -> str:
        return f"nvfp4_gemm_{self.name}"

    @property
    def smem_bytes(self) -> int:
        """Dynamic shared memory: stages of token tile (BT x 256 bytes), codes (64 bytes a weight row) and
        scales (8 bytes a row), a persistent variant's epilogue rows (8 warps x 64 tokens x 48 bytes), plus
        1024 bytes of alignment slack (impfp4::Shape)."""
        epilogue = 8 * 64 * 48 if self.split == 1 else 0
        return self.stages * (self.tokens * 256 + self.weight_rows * 72) + epilogue + 1024

    def tiles(self, m: int, n: int) -> int:
        return math.ceil(m / self.tokens) * math.ceil(n / self.weight_rows)

    def grid(self, m: int, n: int, sms: int) -> int:
        """Blocks of a launch: split-K one cluster per tile; persistent at most one block per SM."""
        tiles = self.tiles(m, n)
        return tiles * self.split if self.split > 1 else min(tiles, sms)


# Efficiencies: fitted with the constants above (`python -m impbench.bench.nvfp4_fit`) on one H100's
# `impbench gemm --model qwen3-modelopt` times of every variant at M 64, 128, 512, 1024 and 2048 on both
# shapes (docs/notes/nvfp4_gemm.md, "Refit at M 64-2048"): rms error 3-7% a variant.
# w128t128k4 fits at 0.97: at M <= 128 it runs faster than its whole tiles predict, and the model has no
# term that says why. w256t128k2 / w256t128k4 went: 128-row tiles beat them on every shape from M 256 on.
VARIANTS = {
    v.name: v
    for v in (
        Variant("w256t128", 2, 128, 4, 1, 0.62),  # large M: the decode per 128 tokens over 256 weight rows
        Variant("w128t192", 1, 192, 3, 1, 0.69),  # one round of tiles at M ~ 512 on N = 5120
        Variant("w128t128", 1, 128, 4, 1, 0.57),  # M ~ 1024 on N = 2048, M ~ 256 on N = 5120: a round of tiles
        Variant("w128t64", 1, 64, 6, 1, 0.37),  # M <= 192 on N = 5120: twice the tiles of w128t128
        Variant("w128t128k2", 1, 128, 5, 2, 0.75),  # split-K 2: M 144-512 on N = 2048, one round of 128 blocks
        Variant("w128t128k4", 1, 128, 5, 4, 0.97),  # split-K 4: small M on narrow N, the most blocks
    )
}


def modelled_us(variant: Variant, m: int, n: int, k: int, sms: int = H100_SMS) -> float:
    """Predicted µs of `variant` on an [M, K] x [N, K] problem: FILL_US, then whole rounds of blocks over the
    SMs (one block per SM), each a tile's K stages (split-K: its share) at the variant's efficiency plus the
    tile's end (stores, or the split-K reduction)."""
    stages = math.ceil(k / BK)
    if variant.split == 1:
        rounds, k_stages, end_us = math.ceil(variant.tiles(m, n) / sms), stages, TILE_END_US
    else:  # clusters of `split` blocks: whole clusters per round
        rounds = math.ceil(variant.tiles(m, n) / clusters_per_round(variant.split, sms))
        k_stages, end_us = math.ceil(stages / variant.split), SPLIT_END_US
    flops = 2.0 * variant.weight_rows * variant.tokens * BK * k_stages
    tile_us = flops / (FLOP_PER_SM_CLOCK * SM_MHZ * variant.efficiency) + end_us
    return FILL_US + rounds * tile_us


def clusters_per_round(split: int, sms: int) -> int:
    """Clusters of `split` blocks (one block per SM) a GPU of `sms` SMs holds at once: pairs fill every SM; of
    4-block clusters a 132-SM Hopper holds 30 (FOUR_BLOCK_CLUSTERS_132), other SM counts in that proportion."""
    if split < 4:
        return max(1, sms // split)
    return max(1, (sms // 4) * FOUR_BLOCK_CLUSTERS_132 // (H100_SMS // 4))


def choose_variant(m: int, n: int, k: int, sms: int = H100_SMS, variants: dict | None = None) -> str:
    """The variant for an [M, K] x [N, K] problem on a GPU of `sms` SMs: the fastest by modelled_us (ties: the
    first in VARIANTS). It trades the decode's cost per token (fewer, larger tiles) against filling the SMs
    (more tiles or split-K) and the last, partial round of tiles. `variants`: another table of the same
    kind (refitted efficiencies, bench.nvfp4_fit) instead of VARIANTS."""
    table = VARIANTS if variants is None else variants
    return min(table.values(), key=lambda v: modelled_us(v, max(m, 1), n, k, sms)).name


def cannot_run(variant: str, device_cc: int | None = None) -> str | None:
    """Why `variant` cannot run on a GPU of compute capability `device_cc` (default: the current one), or None."""
    if variant not in VARIANTS:
        return f"unknown NVFP4 GEMM variant {variant!r}; accepted: {', '.join(VARIANTS)}"
    cc = _current_cc() if device_cc is None else device_cc
    if cc != HOPPER_CC:
        return f"the dense NVFP4 GEMM uses wgmma and runs on compute capability 9.0 (Hopper) only; this GPU is {cc // 10}.{cc % 10}"
    return None


@dataclass(frozen=True)
class PackedCodes:
    """NVFP4 codes in the kernel's layout: uint8 [N, 64 ceil(K / 128)], each row's stage of 64 bytes (128
    values) permuted so that byte 16p + 4i + t of the ModelOpt row goes to 16t + 4p + i: quad lane t then
    finds the bytes of its A fragments (byte t of every 4-byte word) in one contiguous 16 bytes, in the
    order of its k16 steps. A last stage of 64 values is zero-padded to 128."""

    data: object
    n: int
    k: int


def pack_codes(codes) -> PackedCodes:
    """ModelOpt codes [N, K/2] or [1, N, K/2] (NumPy or CuPy) in the kernel's layout (PackedCodes), a new array
    of the same module."""
    shape = tuple(codes.shape)
    if codes.dtype != np.uint8 or not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
        raise ValueError(f"codes must be uint8 [N, K/2] or [1, N, K/2], got {codes.dtype} {shape}")
    n, half_k = shape[-2:]
    xp = _array_module(codes)
    stages = -(-half_k // (BK // 2))
    rows = xp.zeros((n, stages * (BK // 2)), dtype=xp.uint8)
    rows[:, :half_k] = codes.reshape(n, half_k)
    # a stage's byte 16p + 4i + t, as axes (p, i, t), to position 16t + 4p + i: axes (t, p, i)
    packed = xp.ascontiguousarray(rows.reshape(n, stages, 4, 4, 4).transpose(0, 1, 4, 2, 3).reshape(n, -1))
    return PackedCodes(packed, n, 2 * half_k)


def _array_module(arr):
    if isinstance(arr, np.ndarray):
        return np
    import cupy

    return cupy


def prepare(a, codes, scale, scale2, out, variant: str | None = None, max_ctas: int | None = None):
    """Check out[M, N] = a[M, K] . dequant(codes, scale, scale2)^T once; return a no-argument callable that
    launches it on the current stream. codes: PackedCodes (pack_codes; the engine packs each weight once), or
    ModelOpt codes, packed here into a copy the launcher keeps (the current stream is synchronized once the
    copy is made: call it outside a capture). `variant`: a name of VARIANTS, or None for
    choose_variant's. `max_ctas`: a lower cap on a persistent grid (tests: many tiles per block)."""
    m, n, k = _check_args(a, codes, scale, scale2, out)
    name = variant or choose_variant(m, n, k, device_sms())
    reason = cannot_run(name)
    if reason:
        raise ValueError(f"nvfp4_gemm: {reason}")
    if m == 0:
        return lambda: None
    if not isinstance(codes, PackedCodes):
        import cupy

        codes = pack_codes(codes)
        cupy.cuda.get_current_stream().synchronize()  # the copy is whole before any stream launches on it
    spec = VARIANTS[name]
    sms = device_sms() if max_ctas is None else max(1, min(max_ctas, device_sms()))
    map_a = driver.TensorMap(a.data.ptr, driver.FLOAT16, (k, m), (2 * k,), (64, spec.tokens), driver.SWIZZLE_128B,
                             driver.L2_PROMOTION_256B, keep=a)  # fmt: skip
    row_bytes = int(codes.data.shape[1])
    map_w = driver.TensorMap(codes.data.data.ptr, _UINT8, (row_bytes, n), (row_bytes,), (64, spec.weight_rows), 0,
                             driver.L2_PROMOTION_256B, keep=codes.data)  # fmt: skip
    args = [map_a, map_w, scale, scale2, out, ctypes.c_int32(m), ctypes.c_int32(n), ctypes.c_int32(k)]
    function = _kernel(spec).kernel.ptr
    return driver.launcher(function, (spec.grid(m, n, sms), 1, 1), (THREADS, 1, 1), spec.smem_bytes, args)


def prewarm() -> None:
    """Compile the family and fetch every variant (raising its shared-memory limit), outside any capture."""
    for spec in VARIANTS.values():
        _kernel(spec)


def _kernel(spec: Variant):
    return get_function(FAMILY, spec.kernel_name, max_dynamic_smem=spec.smem_bytes)


def _weight_2d(name: str, arr, dtype) -> tuple[int, int]:
    """The [rows, cols] of a weight array given as [rows, cols] or [1, rows, cols]."""
    check_array(name, arr, dtype)
    if arr.ndim == 3 and arr.shape[0] == 1:
        return int(arr.shape[1]), int(arr.shape[2])
    if arr.ndim != 2:
        raise ValueError(f"{name} must be [N, cols] or [1, N, cols], got shape {tuple(arr.shape)}")
    return int(arr.shape[0]), int(arr.shape[1])


def _check_args(a, codes, scale, scale2, out) -> tuple[int, int, int]:
    check_array("a", a, np.float16, ndim=2)
    m, k = (int(d) for d in a.shape)
    if k < MIN_K or k % K_MULTIPLE:
        raise ValueError(f"nvfp4_gemm: K must be a multiple of {K_MULTIPLE} and at least {MIN_K}, got a {tuple(a.shape)}")
    if isinstance(codes, PackedCodes):
        n, k_codes, data = codes.n, codes.k, codes.data
        check_array("packed codes", data, np.uint8, shape=(n, -(-k_codes // BK) * (BK // 2)))
        shape_text = f"packed for [{n}, {k_codes}]"
    else:
        (n, half_k), data = _weight_2d("codes", codes, np.uint8), codes
        k_codes, shape_text = 2 * half_k, str(tuple(codes.shape))
    if k_codes != k:
        raise ValueError(f"nvfp4_gemm: codes {shape_text} hold K = {k_codes}, a {tuple(a.shape)} has K = {k}")
    if n < 1:
        raise ValueError(f"nvfp4_gemm: codes {shape_text} have no rows (N = 0)")
    if _weight_2d("scale", scale, np.uint8) != (n, k // 16):
        raise ValueError(f"nvfp4_gemm: scale must be [N, K/16] = [{n}, {k // 16}] (or [1, {n}, {k // 16}]), got {tuple(scale.shape)}")
    check_array("scale2", scale2, np.float32, shape=(1,))
    check_array("out", out, np.float16, shape=(m, n))
    aligned = (("a", a, 16), ("scale", scale, 4), ("scale2", scale2, 4), ("out", out, 2))
    if isinstance(codes, PackedCodes):  # raw codes: the kernel reads a fresh copy
        aligned += (("packed codes", data, 16),)
    for name, arr, align in aligned:
        if arr.data.ptr % align:  # TMA sources 16 bytes, the scale copies 4
            raise ValueError(f"nvfp4_gemm: {name} {tuple(arr.shape)} must start {align}-byte aligned, got address {arr.data.ptr:#x}")
    return m, n, k


@functools.cache
def _current_cc() -> int:
    from impbench import device

    return device.compute_capability()


@functools.cache
def device_sms() -> int:
    """The current GPU's SM count, the H100's where no GPU is usable (the rule then plans for an H100)."""
    from impbench import device

    return device.sm_count() if device.cuda_available() else H100_SMS
