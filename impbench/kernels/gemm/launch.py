"""Launching the GEMM kernels: argument checks, kernel fetches, TMA tensor maps and prepared launchers.

Every libcuda call (tensor-map encoding, cluster occupancy, cuLaunchKernelEx) goes through
impbench.kernels.driver. A prepared launcher never allocates, syncs or reads device memory on the host,
so it runs inside a CUDA-graph capture in global mode; fetching a kernel (and raising its shared-memory
limit) happens in `prepare`, outside any capture.
"""

from __future__ import annotations

import functools
from functools import lru_cache

from impbench.kernels import driver
from impbench.kernels.checks import check_array
from impbench.kernels.gemm.dispatch import (
    DEFAULT_GUARD, H100, DeviceInfo, check_shape, choose_variant, family_usable, launchable,
)
from impbench.kernels.gemm.variants import FAMILY, MAX_GRID_Y, VARIANTS, Variant
from impbench.kernels.modules import get_function, load_module


@lru_cache(maxsize=None)
def device_info() -> DeviceInfo:
    """The current device's SM count and compute capability (H100 figures where no GPU is usable)."""
    from impbench import device

    try:
        return DeviceInfo(device.sm_count(), str(device.compute_capability()), H100.sm_mhz)
    except Exception:  # no driver / no device: CPU machines plan with the H100
        return H100


def prewarm() -> None:
    """Compile the family outside any capture (each kernel is fetched as its launch is prepared)."""
    load_module(FAMILY)


def _kernel(variant: Variant):
    return get_function(FAMILY, variant.kernel_name, max_dynamic_smem=variant.smem_bytes)


def _check_args(a, w, out) -> tuple[int, int, int]:
    check_array("a", a, "float16", ndim=2)
    check_array("w", w, "float16", ndim=2)
    m, k = a.shape
    n, k_w = w.shape
    if k_w != k:
        raise ValueError(f"a {tuple(a.shape)} and w {tuple(w.shape)} disagree on K ({k} vs {k_w}); w is [N, K]")
    check_array("out", out, "float16", shape=(m, n))
    check_shape(m, n, k)
    for name, arr in (("a", a), ("w", w)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} {tuple(arr.shape)} must start 16-byte aligned (cp.async), got address {arr.data.ptr:#x}")
    if out.data.ptr % 2:
        raise ValueError(f"out {tuple(out.shape)} must be 2-byte aligned, got address {out.data.ptr:#x}")
    return m, n, k


def gemm(a, w, out, variant: str | None = None) -> None:
    """out[M,N] = a[M,K] . w[N,K]^T on the current stream (variant None: the small-n guard's choice)."""
    prepare(a, w, out, variant)()


def prepare(a, w, out, variant: str | None = None, group: int | None = None, tma_store: bool = True):
    """Check `gemm(a, w, out, variant)` once; return a no-argument callable that launches it.

    tsk variants (experiments): `group`, the tile order, bands of that many M tiles (tsk_group's choice if
    None); `tma_store` False stores the output from registers instead of one TMA store a CTA."""
    import numpy as np

    m, n, k = _check_args(a, w, out)
    name = variant or choose_variant(m, n, k, DEFAULT_GUARD)
    spec = VARIANTS.get(name)
    if spec is None:
        raise ValueError(f"unknown GEMM variant {name!r}; accepted: {', '.join(VARIANTS)}")
    if not family_usable(spec, device_info()):
        raise ValueError(f"GEMM variant {name!r} needs an sm_90 (Hopper) device")
    if spec.tensor_maps:
        return _tma_launcher(spec, a, w, out, m, n, k, group, tma_store)
    gx, gy = spec.grid(m, n)
    if not launchable(spec, m, n):
        raise ValueError(f"GEMM variant {name!r} cannot tile N={n} (w {tuple(w.shape)}): {gy} column tiles > {MAX_GRID_Y}")
    args = (a, w, out, np.int32(m), np.int32(n), np.int32(k))
    return functools.partial(_kernel(spec), (gx, gy), (spec.threads,), args, shared_mem=spec.smem_bytes)


# ---- tma and tsk: tensor maps and launches through the driver -----------------------------------------


def _tensor_map(arr, box_rows: int, chunks: int = 1) -> driver.TensorMap:
    """The CUtensorMap of a row-major [rows, K] FP16 matrix: box 64 (K) x box_rows, 128-byte swizzle,
    out-of-bounds elements read as zero; chunks=2 (K % 64 == 0): the 3-D view [K/64, rows, 64] (64-wide
    K chunks outermost), box 64 x box_rows x 2 chunks, which lands as two consecutive swizzled tiles.
    Host-only (no device call): safe inside a capture."""
    rows, k = arr.shape
    if chunks == 2:
        return _fp16_map(arr, (64, rows, k // 64), (2 * k, 128), (64, box_rows, 2), driver.SWIZZLE_128B)
    return _fp16_map(arr, (k, rows), (2 * k,), (64, box_rows), driver.SWIZZLE_128B)


def _store_map(out, box_cols: int, box_rows: int) -> driver.TensorMap:
    """The CUtensorMap a tsk CTA stores its FP16 output box through: [M, N] row-major (N % 8 == 0), box
    box_cols x box_rows, swizzled over the box's row (32, 64 or 128 bytes; the kernel's staging layout)."""
    m, n = out.shape
    swizzle = {32: driver.SWIZZLE_32B, 64: driver.SWIZZLE_64B, 128: driver.SWIZZLE_128B}[2 * box_cols]
    return _fp16_map(out, (n, m), (2 * n,), (box_cols, box_rows), swizzle)


def _fp16_map(arr, dims, strides, box, swizzle) -> driver.TensorMap:
    return driver.TensorMap(arr.data.ptr, driver.FLOAT16, dims, strides, box, swizzle, driver.L2_PROMOTION_256B, keep=arr)


@lru_cache(maxsize=None)
def max_clusters(name: str) -> int:
    """Clusters of a tma or tsk variant that fit on the device at once (a GPC's SMs may not pair up); a
    persistent tma grid uses no more."""
    spec = VARIANTS[name]
    fallback = device_info().sms // spec.cluster
    if spec.cluster == 1:
        return fallback
    return driver.max_active_clusters(_kernel(spec).kernel.ptr, spec.cluster, spec.threads, spec.smem_bytes, fallback)


def tsk_group(spec: Variant, m: int, n: int) -> int:
    """The tile order of a tsk launch (kernel tsk_tile): bands of this many M tiles, M fastest within.

    Consecutive clusters start on the same GPC, and the order decides which A and W lines those CTAs
    read together. On a one-wave grid at least as wide as tall, bands of 2 ask L2 for fewer sectors
    (512x1024x2048: 15% fewer, a 0.5-0.75 µs shorter loop on the H200); on taller or multi-wave grids
    M-fastest was as fast or faster (docs/notes/gemm.md)."""
    mt, nt = -(-m // spec.bm), -(-n // spec.bn)
    one_wave = spec.grid(m, n)[0] <= device_info().sms
    return 2 if one_wave and nt >= mt else mt


def _tma_launcher(spec: Variant, a, w, out, m: int, n: int, k: int, group: int | None = None,
                  tma_store: bool = True):  # fmt: skip
    """A no-argument callable launching a tma or tsk variant on the current stream (driver.launcher):
    tensor maps passed by value, the argument block built once (clusters come from the kernel's
    compile-time __cluster_dims__)."""
    import ctypes

    # tsk "p" variants read 3-D maps where K % 64 == 0 (the kernel checks the same condition)
    chunks = spec.chunks if k % 64 == 0 else 1
    map_a, map_w = _tensor_map(a, spec.bm, chunks), _tensor_map(w, spec.w_box_rows, chunks)
    args = [map_a, map_w, out, ctypes.c_int32(m), ctypes.c_int32(n), ctypes.c_int32(k)]
    if spec.family == "tsk":  # + the output's map (TMA store where rows are 16-byte multiples), order, store mode
        # only split variants stage their columns for a TMA store (gemm_tsk_body); S = 1 stores from registers
        c_tma = tma_store and spec.split_k > 1 and n % 8 == 0 and out.data.ptr % 16 == 0
        args.insert(2, _store_map(out, spec.bn // spec.split_k, spec.bm) if c_tma else map_a)
        args += [ctypes.c_int32(tsk_group(spec, m, n) if group is None else group), ctypes.c_int32(int(c_tma))]
    gx, _ = spec.grid(m, n, max_clusters(spec.name))
    return driver.launcher(_kernel(spec).kernel.ptr, (gx, 1, 1), (spec.threads, 1, 1), spec.smem_bytes, args)
