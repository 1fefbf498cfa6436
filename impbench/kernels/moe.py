"""Wrappers for kernels_cu/moe_nvfp4.cu: the grouped NVFP4 expert GEMMs of a MoE layer.

Layouts (the contract with kernels/routing.py and the engine; R = T * k permuted rows, E experts,
hidden H, expert intermediate I):
  expert_offsets int32 [E+1] on the device: rows of expert e are [offsets[e], offsets[e+1]), offsets[E] = R
  row_token int32 [R]: source token of each permuted row; row_weight fp32 [R]: its router weight
  w13 uint8 [E, 2I, H/2] (rows 0..I-1 gate_proj, I..2I-1 up_proj), w13_scale uint8 e4m3 [E, 2I, H/16],
  w13_scale2 fp32 [E]; w2 uint8 [E, H, I/2], w2_scale uint8 [E, H, I/16], w2_scale2 fp32 [E]
  (ModelOpt NVFP4, impbench/nvfp4.py: value = e2m1(nibble) * e4m3(scale) * scale2). The wgb variant takes
  the same arrays with their bytes reordered by tile_experts (uses_tiled says where).

One launch per GEMM, grid sized from static shapes only (R, E, N): every block finds its token tile
from expert_offsets on the device and a block with no work exits at once. Wrappers check dtypes,
shapes and contiguity (ValueError naming them) and never allocate, synchronize or read device memory
on the host, so both are capture-safe and a captured graph follows new offsets when replayed. Any
distribution of rows over experts is valid (empty experts, all rows in one expert).
"""

from __future__ import annotations

import functools

import numpy as np

from impbench.kernels.modules import get_function
from impbench.kernels.checks import check_array

FAMILY = "moe_nvfp4"
TOKENS_PER_TILE = 64  # BT in kernels_cu/moe_nvfp4.cu
BK_CODE_BYTES = 64  # code bytes of a weight row per pipeline stage (BK = 128 K)
SMEM_BYTES = 3 * (256 * 128 // 2 + 256 * 128 // 16 + 64 * 128 * 2)  # STAGES * STAGE_BYTES = 104448
# impmoe::wg::WQ_SMEM = 107520: 3 stages of token tile + codes, a 2-slot scale ring, alignment slack
WG_SMEM_BYTES = 3 * (64 * 128 * 2 + 256 * 128 // 2) + 2 * 256 * 16 + 1024
# Kernel variants (entry-point suffix, threads per block, dynamic shared bytes); see the header of
# kernels_cu/moe_nvfp4.cu. Superseded ones are in git history and results/NOTES.md.
VARIANTS = {
    "cvt": ("_cvt", 256, SMEM_BYTES),  # 8 warps x 2 m16 tiles, mma.sync, E2M1 decoded through the e4m3x2 -> f16x2 conversion
    "wgq": ("_wgq", 256, WG_SMEM_BYTES),  # cvt decode, wgmma (A from registers), 64-byte weight-row copies, sm_90a
    "wgp": ("_wgp", 256, WG_SMEM_BYTES),  # wgq with x / h K-permuted in memory (kperm); H, I % 128 == 0 (else wgq)
    "wgb": ("_wgb", 256, WG_SMEM_BYTES),  # wgp with tile-major weights (tile_experts), each stage one TMA bulk copy; H, I % 256 == 0 (else wgp)
}
SM90A_VARIANTS = ("wgq", "wgp", "wgb")  # compiled only for compute capability 9.0; elsewhere they resolve to FALLBACK
FALLBACK_VARIANT = "cvt"
# wgp reads its activations (x for gate_up, h for down) in the kperm order below and its gate_up writes h
# in it, so no thread permutes the token tile in shared memory; a layer runs it only where both K (H and
# I) are multiples of KPERM_BLOCK, else KPERM_FALLBACK with every activation in natural order.
KPERM_VARIANTS = ("wgp", "wgb")
KPERM_BLOCK = 128
KPERM_FALLBACK = "wgq"
# wgb reads the expert weights tile-major (tile_experts): per block of 256 weight rows and pipeline stage one
# contiguous 16 KiB of codes (and per stage pair 4 KiB of scales) instead of 64 bytes from each of 256 rows
# 1 KiB or more apart, the same bytes in longer DRAM runs. A layer runs it where tiled_fits, else TILED_FALLBACK
# with the weights in the checkpoint's layout.
TILED_VARIANTS = ("wgb",)
TILED_FALLBACK = "wgp"
TILE_K = 256  # K multiple: whole 16-byte scale pairs per row (and kperm blocks)
TILE_ROWS = 256  # weight rows per block: gate_up 128 gate + the 128 matching up rows, down 256 output columns
# The default is the fastest correct variant of the last recorded run (results/moe_h100.md, NOTES.md MoE v5):
# wgq 139.2 / 77.9 µs (gate_up / down, uniform) against wgt 138.9 / 80.7, wgw 150.4 / 83.2, cvt 195.1 / 97.5.
DEFAULT_VARIANT = "wgq"
# The engine's expert GEMMs (one layer's gate_up / down pair): wgb where uses_tiled (weights stored tile-major by
# engine.weights), else wgp where uses_kperm, the layer's x written in kperm order by its ffn_norm launch
# (ops.add_rmsnorm out_kperm). results/NOTES.md MoE v8, one H200 run: wgb 95.2 / 54.3 µs, wgx 99.5 / 58.3, wgp
# 109.1 / 61.9, wgq 128.9 / 74.4. DEFAULT_VARIANT stays the natural-order kernel that every other caller gets.
EXPERT_VARIANT = "wgb"
GATE_UP_COLS = 128  # output columns per block (128 gate + 128 up weight rows)
DOWN_COLS = 256
K_MULTIPLE = 64  # K (H for gate_up, I for down) must be a multiple: whole 16-value scale words per copy
N_MULTIPLE = 16  # I and H must be multiples (16-byte output segments, gate/up halves)


def token_tiles(rows: int, experts: int) -> int:
    """Most token tiles any distribution of `rows` rows over `experts` experts can need."""
    return (rows + min(experts, rows) * (TOKENS_PER_TILE - 1)) // TOKENS_PER_TILE


def resolve_variant(variant: str) -> str:
    """The variant that runs for `variant` on the current device: an sm_90a-only variant (wgmma) is
    replaced by FALLBACK_VARIANT on a GPU that is not compute capability 9.0, where it compiles to a trap."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown MoE kernel variant {variant!r}; accepted: {', '.join(VARIANTS)}")
    if variant in SM90A_VARIANTS and not _is_sm90():
        return FALLBACK_VARIANT
    return variant


def kperm_fits(hidden: int, inter: int) -> bool:
    """Whether a layer's activations can be K-permuted: both GEMM depths (H, I) whole KPERM_BLOCKs."""
    return hidden % KPERM_BLOCK == 0 and inter % KPERM_BLOCK == 0


def uses_kperm(variant: str, hidden: int, inter: int) -> bool:
    """Whether `variant` runs on a layer of hidden H / intermediate I with its activations in kperm order:
    x given to moe_gate_up and h given to moe_down K-permuted (to_kperm), and moe_gate_up's output too."""
    return resolve_variant(variant) in KPERM_VARIANTS and kperm_fits(hidden, inter)


def tiled_fits(hidden: int, inter: int) -> bool:
    """Whether a layer's expert weights can be stored tile-major: both GEMM depths whole TILE_Ks, gate_up's I
    whole 128-column tiles and down's H whole 256-column tiles."""
    return hidden % TILE_K == 0 and inter % TILE_K == 0


def uses_tiled(variant: str, hidden: int, inter: int) -> bool:
    """Whether `variant` runs on a layer of hidden H / intermediate I with tile-major expert weights
    (tile_experts of w13 and of w2); its activations are then in kperm order too (uses_kperm)."""
    return resolve_variant(variant) in TILED_VARIANTS and tiled_fits(hidden, inter)


def _tile_view(a, gate_up: bool, unit: int):
    """a [E, N, W] as [E, tiles, W / unit, block row, unit] axes before / after tiling (see tile_experts)."""
    e, n, w = a.shape
    if gate_up:  # block row = half (gate, up) * 128 + row: [E, 2, N/256, 128, W/unit, unit]
        return a.reshape(e, 2, n // TILE_ROWS, TILE_ROWS // 2, w // unit, unit), (0, 2, 4, 1, 3, 5)
    return a.reshape(e, n // TILE_ROWS, TILE_ROWS, w // unit, unit), (0, 1, 3, 2, 4)


def _swap_slots(codes):
    """Tile-major codes with the 16-byte slots of every block row r with r & 2 swapped in pairs (0 <-> 2,
    1 <-> 3): the kernels' shared-memory swizzle (slot = piece ^ (r & 2)), applied in memory so a stage is
    copied as it is. Its own inverse."""
    v = codes.reshape(-1, 4, 4, 16)  # (row groups of 4, row % 4, slot, bytes); 256-row tiles: whole groups
    out = v.copy()
    out[:, 2:4] = v[:, 2:4][:, :, [2, 3, 0, 1]]
    return out.reshape(codes.shape)


def tile_experts(codes, scale, gate_up: bool):
    """(codes [E, N, K/2], scale [E, N, K/16]) in the checkpoint layout -> new arrays of the same shapes in
    wgb's tile-major layout: for each expert, block tile t (gate_up: gate rows 128 t .. + 127 then the
    same up rows; down: rows 256 t .. + 255), then stage c (64 code bytes = 128 K of every row, in 16-byte
    slots swizzled as in shared memory, _swap_slots), then the tile's rows; scales the same with 16-byte
    pairs of stages. NumPy or CuPy."""
    out = []
    for a, unit in ((codes, BK_CODE_BYTES), (scale, 16)):
        view, axes = _tile_view(a, gate_up, unit)
        out.append(view.transpose(axes).reshape(a.shape).copy())
    return _swap_slots(out[0]), out[1]


def tiled_weight(weight, gate_up: bool) -> tuple:
    """One GEMM's expert weight (codes, scale, scale2) with codes and scales tile-major (tile_experts)."""
    return tile_experts(weight[0], weight[1], gate_up) + (weight[2],)


def untile_experts(codes, scale, gate_up: bool):
    """The inverse of tile_experts: the checkpoint layout back."""
    out = []
    for a, unit in ((_swap_slots(codes), BK_CODE_BYTES), (scale, 16)):
        view, axes = _tile_view(a, gate_up, unit)
        tiled_shape = tuple(view.shape[i] for i in axes)
        out.append(a.reshape(tiled_shape).transpose(np.argsort(axes)).reshape(a.shape).copy())
    return tuple(out)


def _layer_variant(variant: str, hidden: int, inter: int) -> str:
    variant = resolve_variant(variant)
    if variant in TILED_VARIANTS and not tiled_fits(hidden, inter):
        variant = TILED_FALLBACK
    if variant in KPERM_VARIANTS and not uses_kperm(variant, hidden, inter):
        return KPERM_FALLBACK
    return variant


@functools.cache
def kperm_order(k: int) -> np.ndarray:
    """int64 [k]: a K-permuted row holds element kperm_order(k)[i] of the natural row at position i. Inside
    each 128-wide block, logical 16-byte unit 4i + q holds, for j = 0..3, halves {1,3}, {0,2}, {5,7} or
    {4,6} (q = 0..3) of physical unit i + 4j: the order in which the wgmma kernels pair K with the decoded
    weights (kernels_cu/moe_nvfp4.cu, kperm_slot)."""
    if k % KPERM_BLOCK:
        raise ValueError(f"kperm needs K to be a multiple of {KPERM_BLOCK}, got {k}")
    p = np.arange(KPERM_BLOCK)
    unit, e = p >> 3, p & 7
    slot = 8 * (4 * (unit & 3) + 2 * (e >> 2) + ((e & 1) ^ 1)) + 2 * (unit >> 2) + ((e >> 1) & 1)
    block = np.empty(KPERM_BLOCK, np.int64)
    block[slot] = p
    order = (np.arange(0, k, KPERM_BLOCK)[:, None] + block[None, :]).reshape(-1)
    order.setflags(write=False)  # cached: shared by every caller
    return order


def to_kperm(a, out=None):
    """a [..., K] (NumPy or CuPy) in kperm order along its last axis (a new array, or into `out`)."""
    return _take_last(a, kperm_order(a.shape[-1]), out)


def from_kperm(a, out=None):
    """The inverse of to_kperm."""
    return _take_last(a, np.argsort(kperm_order(a.shape[-1])), out)


def _take_last(a, index, out):
    if not isinstance(a, np.ndarray):
        import cupy

        index = cupy.asarray(index)
    if out is None:
        return a[..., index]
    out[...] = a[..., index]
    return out


@functools.cache
def _is_sm90() -> bool:
    import cupy

    return cupy.cuda.Device().compute_capability == "90"


def _kernel(op: str, variant: str):
    suffix, _, smem = VARIANTS[variant]
    return get_function(FAMILY, f"moe_nvfp4_{op}{suffix}", max_dynamic_smem=smem)


def _check_experts(prefix: str, w, scale, scale2, n: int, k: int, experts: int) -> None:
    check_array(prefix, w, np.uint8, ndim=3)
    if tuple(w.shape) != (experts, n, k // 2):
        raise ValueError(f"{prefix} must have shape {(experts, n, k // 2)} (E, N, K/2), got {tuple(w.shape)}")
    check_array(f"{prefix}_scale", scale, np.uint8, shape=(experts, n, k // 16))
    check_array(f"{prefix}_scale2", scale2, np.float32, shape=(experts,))


def _check_aligned(op: str, **arrays) -> None:
    for name, arr in arrays.items():  # cp.async and the epilogue's 16-byte stores
        if arr.data.ptr % 16:
            raise ValueError(f"{op}: {name} {tuple(arr.shape)} must start 16-byte aligned, got address {arr.data.ptr:#x}")


def _check_dims(op: str, hidden: int, inter: int) -> None:
    if hidden % K_MULTIPLE or hidden < K_MULTIPLE or inter % K_MULTIPLE or inter < K_MULTIPLE:
        raise ValueError(
            f"{op}: hidden H={hidden} and intermediate I={inter} must be positive multiples of {K_MULTIPLE} "
            f"(each is the K of one of the two GEMMs)"
        )


def _plan_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant=DEFAULT_VARIANT):
    check_array("x", x, np.float16, ndim=2)
    check_array("row_token", row_token, np.int32, ndim=1)
    check_array("expert_offsets", expert_offsets, np.int32, ndim=1)
    check_array("w13", w13, np.uint8, ndim=3)
    tokens, hidden = x.shape
    rows, experts = row_token.shape[0], expert_offsets.shape[0] - 1
    if experts < 1:
        raise ValueError(f"moe_gate_up: expert_offsets must be [E+1] with E >= 1, got {tuple(expert_offsets.shape)}")
    if w13.shape[1] % 2:
        raise ValueError(f"moe_gate_up: w13 {tuple(w13.shape)} must have 2I rows per expert (gate then up)")
    inter = w13.shape[1] // 2
    if 2 * w13.shape[2] != hidden:
        raise ValueError(f"moe_gate_up: w13 {tuple(w13.shape)} holds K = {2 * w13.shape[2]} but x {tuple(x.shape)} has H = {hidden}")
    _check_dims("moe_gate_up", hidden, inter)
    _check_experts("w13", w13, w13_scale, w13_scale2, 2 * inter, hidden, experts)
    check_array("out", out, np.float16, shape=(rows, inter))
    _check_aligned("moe_gate_up", x=x, w13=w13, w13_scale=w13_scale, out=out)
    variant = _layer_variant(variant, hidden, inter)
    if tokens < 1 or rows < 1:
        return None
    n_tiles = -(-inter // GATE_UP_COLS)
    grid = (token_tiles(rows, experts) * n_tiles,)
    args = (x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out,
            np.int32(experts), np.int32(hidden), np.int32(inter), np.int32(n_tiles))  # fmt: skip
    return _kernel("gate_up", variant), grid, (VARIANTS[variant][1],), args, VARIANTS[variant][2]


def _plan_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight=None, variant=DEFAULT_VARIANT):
    check_array("h", h, np.float16, ndim=2)
    check_array("expert_offsets", expert_offsets, np.int32, ndim=1)
    check_array("w2", w2, np.uint8, ndim=3)
    rows, inter = h.shape
    experts, hidden = expert_offsets.shape[0] - 1, w2.shape[1]
    if experts < 1:
        raise ValueError(f"moe_down: expert_offsets must be [E+1] with E >= 1, got {tuple(expert_offsets.shape)}")
    if 2 * w2.shape[2] != inter:
        raise ValueError(f"moe_down: w2 {tuple(w2.shape)} holds K = {2 * w2.shape[2]} but h {tuple(h.shape)} has I = {inter}")
    _check_dims("moe_down", hidden, inter)
    _check_experts("w2", w2, w2_scale, w2_scale2, hidden, inter, experts)
    check_array("out", out, np.float16, shape=(rows, hidden))
    if row_weight is not None:
        check_array("row_weight", row_weight, np.float32, shape=(rows,))
    _check_aligned("moe_down", h=h, w2=w2, w2_scale=w2_scale, out=out)
    variant = _layer_variant(variant, hidden, inter)
    if rows < 1:
        return None
    n_tiles = -(-hidden // DOWN_COLS)
    grid = (token_tiles(rows, experts) * n_tiles,)
    weight = row_weight if row_weight is not None else np.uint64(0)  # null pointer: no scaling
    args = (h, expert_offsets, w2, w2_scale, w2_scale2, weight, out,
            np.int32(experts), np.int32(inter), np.int32(hidden), np.int32(n_tiles))  # fmt: skip
    return _kernel("down", variant), grid, (VARIANTS[variant][1],), args, VARIANTS[variant][2]


def _launcher(plan):
    if plan is None:  # no rows: nothing to launch
        return lambda: None
    kernel, grid, block, args, smem = plan
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def moe_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant=DEFAULT_VARIANT) -> None:
    """out[r] = SiLU(x[row_token[r]] . gate_e^T) * (x[row_token[r]] . up_e^T) for every permuted row r,
    e its expert. x fp16 [T, H]; out fp16 [R, I]; FP32 accumulation, one FP16 rounding. Where
    uses_kperm(variant, H, I), x and out are in kperm order."""
    _launcher(_plan_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant))()


def moe_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight=None, variant=DEFAULT_VARIANT) -> None:
    """out[r] = (h[r] . down_e^T) * row_weight[r] (no scaling when row_weight is None) for every
    permuted row r, e its expert. h fp16 [R, I]; out fp16 [R, H]. Where uses_kperm(variant, H, I), h is
    in kperm order."""
    _launcher(_plan_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight, variant))()


_PLANS = {moe_gate_up: _plan_gate_up, moe_down: _plan_down}


def prepare(op, *args, **kwargs):
    """Check `op(*args, **kwargs)` once and return a no-argument callable that launches it (see ops.prepare)."""
    return _launcher(_PLANS[op](*args, **kwargs))


def prewarm() -> None:
    """Compile the family and fetch every kernel (raising its shared-memory limit) outside any capture."""
    for variant in dict.fromkeys(resolve_variant(v) for v in VARIANTS):
        _kernel("gate_up", variant)
        _kernel("down", variant)
