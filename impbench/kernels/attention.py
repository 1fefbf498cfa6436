"""Causal GQA flash attention of one prefill chunk over the KV cache (kernels_cu/attention.cu), with an
optional sliding window.

The chunk's position is read from a device int32 scalar by the kernel itself, so the launch (grid,
arguments) depends only on static shapes and one captured CUDA graph serves every non-last chunk.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

from impbench.kernels.checks import check_array
from impbench.kernels.modules import get_function

HEAD_DIMS = (64, 128, 256, 512)


@dataclass(frozen=True)
class Tiling:
    """One kernel of the family and the block geometry its launch mirrors (kernels_cu/attention.cu).

    kind: "wgmma" (WgGeometry: one warpgroup of 64 (query, head) rows, the heads of one GQA group packed
    into the rows), "ring" (RingGeometry, head dim 256: two such warpgroups on one K/V stream, K and V
    in TMA-fed rings with no per-tile block barrier), "split" (SplitGeometry, head dim 512: two
    warpgroups split the head dimension of 64 rows) or "mma" (Geometry: the portable kernel, `rows`
    queries of one head per block).
    stages: shared-memory stages of one K and one V tile (ring: the K slots, beside two V slots).
    tma: K and V come in by the TMA unit through tensor maps passed by value (split, ring); cluster:
    CTAs per cluster (2: a pair on adjacent query blocks, each loading half of every tile for both).
    """

    kernel: str
    kind: str
    head_dim: int
    rows: int
    block_n: int
    stages: int
    tma: bool = False
    cluster: int = 1

    @property
    def threads(self) -> int:
        return 128 if self.kind == "mma" else 256 if self.kind == "split" else 2 * self.rows

    @property
    def smem(self) -> int:
        """Dynamic shared memory of a block; the kernel traps if it gets less."""
        d, bn = self.head_dim, self.block_n
        if self.kind == "mma":  # Q tile + two K and two V stages, rows padded by 16 bytes
            return (self.rows + 4 * bn) * (d + 8) * 2
        if self.kind == "split":  # per warpgroup: Q half, two K and two V half tiles, two FP32 partial-S tiles
            return 2 * (self.rows * d + 4 * bn * d + 2 * self.rows * bn * 4) + 1024
        if self.kind == "ring":  # Q + `stages` K slots + two V slots + alignment
            return self.rows * d * 2 + (self.stages + 2) * bn * d * 2 + 1024
        return self.rows * d * 2 + self.stages * 2 * bn * d * 2 + 1024  # Q + stages x (K + V) + alignment

    @property
    def tma_column_blocks(self) -> int:
        """64-wide column blocks of a head in one TMA box: a warpgroup's half (split) or the whole head."""
        return self.head_dim // (128 if self.kind == "split" else 64)


def _wg(prefix: str, head_dim: int, rows: int, block_n: int, stages: int) -> Tiling:
    return Tiling(f"attention_prefill_{prefix}_d{head_dim}", "wgmma", head_dim, rows, block_n, stages)


# Every variant's kernel per head dim; mma runs on any sm_80+, wgmma on cc 9.0 (sm_90a). A variant may
# cover only some head dims (a candidate tiling; supports()). Measured choices: docs/notes/attention.md.
# - wgmma (the default on cc 9.0): D <= 128 in 64-row blocks, one warpgroup, two blocks per SM; D 256 in
#   128-row blocks (two warpgroups on one K/V stream, S as m64n64k16) with K and V by TMA into rings
#   that mbarriers hand over (3 K slots, 2 V slots) and the warpgroups taking turns to issue their
#   wgmma (FlashAttention-3's ping-pong); D 512: two warpgroups split the head dimension of 64 rows,
#   K/V by TMA in 2-CTA clusters, each tile multicast to both.
# - mma: 64 queries of one head per block (32 queries and 16-key tiles at D 512, within the 99 KiB
#   of shared memory of sm_89 / sm_120).
VARIANTS: dict[str, dict[int, Tiling]] = {
    "wgmma": {64: _wg("wg", 64, 64, 64, 4), 128: _wg("wg", 128, 64, 64, 3),
              256: Tiling("attention_prefill_wgpp_d256", "ring", 256, 128, 64, 3, tma=True),
              512: Tiling("attention_prefill_wgtc_d512", "split", 512, 64, 32, 2, tma=True, cluster=2)},
    "mma": {d: Tiling(f"attention_prefill_d{d}", "mma", d, 32 if d == 512 else 64,
                      16 if d == 512 else 32 if d == 256 else 64, 2) for d in HEAD_DIMS},
}  # fmt: skip


def default_variant() -> str:
    """The variant prepare() runs: wgmma where the family is built for sm_90a (cc 9.0), else mma."""
    from impbench import device

    return "wgmma" if device.compute_capability() == 90 else "mma"


def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {tuple(VARIANTS)}, got {variant!r}")


def supports(head_dim: int, variant: str) -> bool:
    """Whether `variant` has a kernel for `head_dim`."""
    return head_dim in VARIANTS.get(variant, {})


def tiling(head_dim: int, variant: str | None = None) -> Tiling:
    """The kernel and block geometry of `variant` (default_variant()) at `head_dim`."""
    variant = variant or default_variant()
    _check_variant(variant)
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"q head_dim must be one of {HEAD_DIMS}, got {head_dim}")
    if not supports(head_dim, variant):
        have = ", ".join(v for v in VARIANTS if supports(head_dim, v))
        raise ValueError(f"variant {variant!r} has no head_dim {head_dim} kernel; use one of {have}")
    return VARIANTS[variant][head_dim]


def _check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 0:
        raise ValueError(f"window must be a whole number of keys >= 0 (0 = no window), got {window!r}")
    return int(window)


def smem_bytes(head_dim: int, variant: str | None = None) -> int:
    """Dynamic shared memory per block of the kernel for `head_dim` (variant: default_variant())."""
    return tiling(head_dim, variant).smem


def threads_per_block(head_dim: int, variant: str) -> int:
    """Block size: 4 warps (mma), 128 per warpgroup (wgmma; two warpgroups at head dims 256 and 512)."""
    return tiling(head_dim, variant).threads


def heads_per_block(heads: int, kv_heads: int, rows: int = 64) -> int:
    """wgmma variants: query heads per block, the largest divisor of the GQA group that fits in `rows`.

    Qwen3-Coder (32 / 4): 8 heads x 8 queries in a 64-row block, so each K/V tile is read once for
    the whole group.
    """
    group = heads // kv_heads
    return max(d for d in range(1, min(group, rows) + 1) if group % d == 0)


def _kv_map(cache, geometry: Tiling):
    """The tensor map a TMA kernel reads a K or V cache [max_len, Hkv, D] through: the 3-D view (64 halves,
    key, 64-wide column block of every head), box 64 x block_n keys x the column blocks one copy
    brings (tma_column_blocks), 128-byte swizzle (the layout the kernel's wgmma descriptors read); keys
    past max_len read as zero. Host-only: safe inside a capture."""
    from impbench.kernels import driver

    max_len, kv_heads, head_dim = cache.shape
    return driver.TensorMap(cache.data.ptr, driver.FLOAT16, (64, max_len, kv_heads * head_dim // 64),
                            (kv_heads * head_dim * 2, 128), (64, geometry.block_n, geometry.tma_column_blocks),
                            driver.SWIZZLE_128B, driver.L2_PROMOTION_256B, keep=cache)  # fmt: skip


def _plan(q, k_cache, v_cache, pos, out, softmax_scale: float, variant: str | None = None, window: int = 0):
    """Check the arguments of attention_prefill; return (tiling, kernel, grid, block, args, shared bytes)."""
    import numpy as np

    check_array("q", q, np.float16, ndim=3)
    tokens, heads, head_dim = q.shape
    geometry = tiling(head_dim, variant)
    window = _check_window(window)
    if tokens < 1:
        raise ValueError(f"q must hold at least one token, got shape {tuple(q.shape)}")
    check_array("k_cache", k_cache, np.float16, ndim=3)
    max_len, kv_heads, k_dim = k_cache.shape
    if k_dim != head_dim:
        raise ValueError(f"k_cache head_dim {k_dim} differs from q head_dim {head_dim}")
    if kv_heads < 1 or heads % kv_heads:
        raise ValueError(f"q heads ({heads}) must be a multiple of k_cache heads ({kv_heads})")
    if max_len < tokens:
        raise ValueError(f"k_cache holds {max_len} rows, fewer than the chunk's {tokens} tokens")
    check_array("v_cache", v_cache, np.float16, shape=k_cache.shape)
    check_array("pos", pos, np.int32, shape=(1,))
    check_array("out", out, np.float16, shape=q.shape)
    for name, arr in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("out", out)):
        if arr.data.ptr % 16:
            raise ValueError(f"{name} must be 16-byte aligned (cp.async / 16-byte stores), got address {arr.data.ptr:#x}")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be finite and > 0, got {softmax_scale}")

    smem = geometry.smem
    kernel = get_function("attention", geometry.kernel, max_dynamic_smem=smem)
    if geometry.kind != "mma":
        # the largest shared-memory carveout: two 113 KiB blocks per SM (wgmma, D = 128) need all of it
        kernel.preferred_shared_memory_carveout = 100
    kv = (_kv_map(k_cache, geometry), _kv_map(v_cache, geometry)) if geometry.tma else (k_cache, v_cache)
    args = (*kv, q, pos, out) if geometry.tma else (q, *kv, pos, out)
    args += (np.int32(tokens), np.int32(heads), np.int32(kv_heads), np.int32(max_len),
             np.float32(softmax_scale * math.log2(math.e)))  # fmt: skip
    block = (geometry.threads,)
    window = 0 if window >= max_len else window  # no query of this cache is past such a window (and int32-safe)
    if geometry.kind != "mma":
        per_block = heads_per_block(heads, kv_heads, geometry.rows)
        queries = geometry.rows // per_block
        blocks = -(-tokens // queries)
        grid = (heads // per_block, -(-blocks // geometry.cluster) * geometry.cluster)  # whole clusters along y
        return geometry, kernel, grid, block, args + (np.int32(per_block), np.int32(window)), smem
    grid = (heads, (tokens + geometry.rows - 1) // geometry.rows)
    return geometry, kernel, grid, block, args + (np.int32(window),), smem


def _launcher(geometry: Tiling, kernel, grid, block, args, smem):
    """A no-argument launch: the RawKernel's own call, or through the driver where tensor maps go by value."""
    if geometry.tma:
        from impbench.kernels import driver

        return driver.launcher(kernel.kernel.ptr, grid, block, smem, args)
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def attention_prefill(q, k_cache, v_cache, pos, out, softmax_scale: float, window: int = 0) -> None:
    """out[t, h] = softmax(q[t, h] . k[lo .. i, h // group] * scale) . v[lo .. i, h // group], i = pos + t.

    lo = 0, or with a sliding window W > 0, lo = max(0, i - W + 1): key j is visible to query i iff
    i - W < j <= i (key tiles wholly below the window are skipped). q, out: fp16 [T, Hq, D];
    k_cache, v_cache: fp16 [max_len, Hkv, D] with the chunk's keys and values already at rows
    pos .. pos+T-1; pos: int32 device array [1] (read on the device only); D in 64, 128, 256, 512; Hq
    a multiple of Hkv; any scale > 0 (Gemma-4: 1.0). Launches on the current stream; never synchronizes.
    """
    prepare(q, k_cache, v_cache, pos, out, softmax_scale, window)()


def prepare(q, k_cache, v_cache, pos, out, softmax_scale: float, window: int = 0):
    """Check once; return a no-argument launcher of attention_prefill (reads pos when it runs)."""
    return _launcher(*_plan(q, k_cache, v_cache, pos, out, softmax_scale, window=window))


def prepare_variant(q, k_cache, v_cache, pos, out, softmax_scale: float, variant: str, window: int = 0):
    """prepare() with an explicit kernel variant (tests and benchmarks run several on one device)."""
    _check_variant(variant)
    return _launcher(*_plan(q, k_cache, v_cache, pos, out, softmax_scale, variant, window))


def prewarm() -> None:
    """Compile the family and raise every kernel's shared-memory limit outside any capture."""
    variants = VARIANTS if default_variant() == "wgmma" else ("mma",)
    for variant in variants:
        for geometry in VARIANTS[variant].values():
            get_function("attention", geometry.kernel, max_dynamic_smem=geometry.smem)


def causal_flops(tokens: int, pos: int, heads: int, head_dim: int, window: int = 0) -> int:
    """FLOPs of the causal attention of a chunk: 4 * visible (query, key) pairs * D * Hq (QK^T and PV);
    query i sees i + 1 keys, at most `window` of them with a window."""
    contexts = tokens * pos + tokens * (tokens + 1) // 2  # sum over t of (pos + t + 1)
    if window:
        # minus, for each query i = pos + t past the window, its i + 1 - window keys out of it
        first = max(pos, window)  # first query position with keys outside the window
        last = pos + tokens - 1
        if last >= first:
            n = last - first + 1
            contexts -= n * (first + 1 - window) + n * (n - 1) // 2
    return 4 * contexts * head_dim * heads
