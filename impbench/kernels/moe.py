"""Wrappers for kernels_cu/moe_nvfp4.cu: the grouped NVFP4 expert GEMMs of a MoE layer.

Layouts (the contract with kernels/routing.py and the engine; R = T * k permuted rows, E experts,
hidden H, expert intermediate I):
  expert_offsets int32 [E+1] on the device: rows of expert e are [offsets[e], offsets[e+1]), offsets[E] = R
  row_token int32 [R]: source token of each permuted row; row_weight fp32 [R]: its router weight
  w13 uint8 [E, 2I, H/2] (rows 0..I-1 gate_proj, I..2I-1 up_proj), w13_scale uint8 e4m3 [E, 2I, H/16],
  w13_scale2 fp32 [E]; w2 uint8 [E, H, I/2], w2_scale uint8 [E, H, I/16], w2_scale2 fp32 [E]
  (ModelOpt NVFP4, impbench/nvfp4.py: value = e2m1(nibble) * e4m3(scale) * scale2). A variant may
  read the expert arrays with their bytes reordered by tile_experts and x / h (and write h) in the order of
  to_kperm: VARIANTS[name].tiled / .kperm say which; choose_variant picks the variant for a layer and GPU.

One launch per GEMM, grid sized from static shapes only (R, E, N): every block finds its token tile
from expert_offsets on the device and a block with no work exits at once. Wrappers check dtypes,
shapes and contiguity (ValueError naming them) and never allocate, synchronize or read device memory
on the host, so both are capture-safe and a captured graph follows new offsets when replayed. Any
distribution of rows over experts is valid (empty experts, all rows in one expert).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from impbench.kernels.modules import MIN_COMPUTE_CAPABILITY, get_function
from impbench.kernels.checks import check_array

FAMILY = "moe_nvfp4"
THREADS = 256  # per block, every variant: 8 warps
TOKENS_PER_TILE = 64  # BT in kernels_cu/moe_nvfp4.cu
BK_CODE_BYTES = 64  # code bytes of a weight row per pipeline stage (BK = 128 K)
SMEM_BYTES = 3 * (256 * 128 // 2 + 256 * 128 // 16 + 64 * 128 * 2)  # cvt: STAGES * STAGE_BYTES = 104448
# impmoe::wg::WQ_SMEM = 107520: 3 stages of token tile + codes, a 2-slot scale ring, alignment slack
WG_SMEM_BYTES = 3 * (64 * 128 * 2 + 256 * 128 // 2) + 2 * 256 * 16 + 1024
HOPPER_CC = 90  # the wgmma variants exist only where the family is compiled for sm_90a (modules.ARCH_MARKER)
# The kperm variants read their activations (x for gate_up, h for down) in the order of kperm_order, and
# their gate_up writes h in it, so no thread permutes the token tile in shared memory; both K (H and I) must
# be whole KPERM_BLOCKs.
KPERM_BLOCK = 128
# The tiled variant reads the expert weights tile-major (tile_experts): per block of 256 weight rows and
# pipeline stage one contiguous 16 KiB of codes (and per stage pair 4 KiB of scales) instead of 64 bytes from
# each of 256 rows 1 KiB or more apart: the same bytes in longer DRAM runs, one bulk copy per stage.
TILE_K = 256  # K multiple: whole 16-byte scale pairs per row (and kperm blocks)
TILE_ROWS = 256  # weight rows per block: gate_up 128 gate + the 128 matching up rows, down 256 output columns
GATE_UP_COLS = 128  # output columns per block (128 gate + 128 up weight rows)
DOWN_COLS = 256
K_MULTIPLE = 64  # K (H for gate_up, I for down) must be a multiple: whole 16-value scale words per copy
# gate_up's activation of the gate, by the index its kernels take (kernels_cu/moe_nvfp4.cu gate_act): a preset's
# `activation` (Qwen3 SiLU, Gemma-4 GELU with the tanh form)
ACTIVATIONS = ("silu", "gelu_tanh")


@dataclass(frozen=True)
class Variant:
    """One kernel pair of kernels_cu/moe_nvfp4.cu; its traits struct there (VariantCvt, ...) says the same."""

    suffix: str  # entry points moe_nvfp4_gate_up<suffix> and moe_nvfp4_down<suffix>
    smem_bytes: int  # dynamic shared memory per block
    wgmma: bool  # wgmma.mma_async, compute capability 9.0 only (a trap elsewhere); else mma.sync
    kperm: bool  # reads x / h K-permuted (to_kperm) and its gate_up writes h so; H, I % KPERM_BLOCK == 0
    tiled: bool  # reads the expert weights tile-major (tile_experts); H, I % TILE_K == 0


# Every variant, one pair of entry points each (kernels_cu/moe_nvfp4.cu says how each works; earlier ones
# are in git history and docs/notes/moe.md). choose_variant picks among them.
VARIANTS = {
    "cvt": Variant("_cvt", SMEM_BYTES, wgmma=False, kperm=False, tiled=False),  # mma.sync: any GPU of the family
    "wgq": Variant("_wgq", WG_SMEM_BYTES, wgmma=True, kperm=False, tiled=False),  # activations in natural order
    "wgp": Variant("_wgp", WG_SMEM_BYTES, wgmma=True, kperm=True, tiled=False),
    "wgb": Variant("_wgb", WG_SMEM_BYTES, wgmma=True, kperm=True, tiled=True),
}


def choose_variant(hidden: int, inter: int, *, tiled: bool, kperm: bool, device_cc: int | None = None) -> str:
    """The variant for a layer of hidden H / intermediate I on a GPU of compute capability `device_cc` (90 for
    9.0; default: the current device's), for a caller that can give the expert weights tile-major (`tiled`,
    tile_experts) and the activations K-permuted (`kperm`, to_kperm). On 9.0: wgb where the caller can give
    both and H and I are whole TILE_Ks, else wgp where it can give kperm activations and H and I are whole
    KPERM_BLOCKs, else wgq; cvt on any other GPU. VARIANTS[name].tiled / .kperm say what the caller then gives."""
    cc = _current_cc() if device_cc is None else device_cc
    _check_family_runs(cc)
    if cc != HOPPER_CC:
        return "cvt"
    if tiled and kperm and tiled_fits(hidden, inter):
        return "wgb"
    if kperm and kperm_fits(hidden, inter):
        return "wgp"
    return "wgq"


def cannot_run(variant: str, hidden: int, inter: int, *, device_cc: int | None = None) -> str | None:
    """Why `variant` cannot run a layer of hidden H / intermediate I on that GPU (default: the current one),
    or None where it can: an explicit choice (benchmarks, tests) is checked against the table, never replaced."""
    if variant not in VARIANTS:
        return f"unknown MoE kernel variant {variant!r}; accepted: {', '.join(VARIANTS)}"
    spec, cc = VARIANTS[variant], _current_cc() if device_cc is None else device_cc
    _check_family_runs(cc)
    if spec.wgmma and cc != HOPPER_CC:
        return f"MoE kernel variant {variant} uses wgmma: compute capability 9.0 only, this GPU is {cc // 10}.{cc % 10}"
    if spec.tiled and not tiled_fits(hidden, inter):
        return f"MoE kernel variant {variant} reads tile-major weights: H and I must be multiples of {TILE_K}, got H={hidden}, I={inter}"
    if spec.kperm and not kperm_fits(hidden, inter):
        return f"MoE kernel variant {variant} reads K-permuted activations: H and I must be multiples of {KPERM_BLOCK}, got H={hidden}, I={inter}"
    return None


def token_tiles(rows: int, experts: int) -> int:
    """Most token tiles any distribution of `rows` rows over `experts` experts can need."""
    return (rows + min(experts, rows) * (TOKENS_PER_TILE - 1)) // TOKENS_PER_TILE


def kperm_fits(hidden: int, inter: int) -> bool:
    """Whether a layer's activations can be K-permuted: both GEMM depths (H, I) whole KPERM_BLOCKs."""
    return hidden % KPERM_BLOCK == 0 and inter % KPERM_BLOCK == 0


def tiled_fits(hidden: int, inter: int) -> bool:
    """Whether a layer's expert weights can be stored tile-major: both GEMM depths whole TILE_Ks, gate_up's I
    whole 128-column tiles and down's H whole 256-column tiles."""
    return hidden % TILE_K == 0 and inter % TILE_K == 0


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
def _current_cc() -> int:
    from impbench import device

    return device.compute_capability()


def _check_family_runs(cc: int) -> None:
    need = MIN_COMPUTE_CAPABILITY[FAMILY]  # the e4m3x2 -> f16x2 conversion of every decode
    if cc < need:
        raise ValueError(f"the NVFP4 MoE kernels need compute capability {need // 10}.{need % 10} or later, this GPU is {cc // 10}.{cc % 10}")


def _run_variant(op: str, variant: str | None, hidden: int, inter: int) -> str:
    """`variant` where it can run this layer here (ValueError saying why not), or the rule's choice for
    arrays in natural order."""
    if variant is None:
        return choose_variant(hidden, inter, tiled=False, kperm=False)
    reason = cannot_run(variant, hidden, inter)
    if reason:
        raise ValueError(f"{op}: {reason}")
    return variant


def _kernel(op: str, variant: str):
    spec = VARIANTS[variant]
    return get_function(FAMILY, f"moe_nvfp4_{op}{spec.suffix}", max_dynamic_smem=spec.smem_bytes)


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


def _plan_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant=None, activation="silu"):
    if activation not in ACTIVATIONS:
        raise ValueError(f"moe_gate_up: activation must be one of {ACTIVATIONS}, got {activation!r}")
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
    variant = _run_variant("moe_gate_up", variant, hidden, inter)
    if tokens < 1 or rows < 1:
        return None
    n_tiles = -(-inter // GATE_UP_COLS)
    grid = (token_tiles(rows, experts) * n_tiles,)
    args = (x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out,
            np.int32(experts), np.int32(hidden), np.int32(inter), np.int32(n_tiles),
            np.int32(ACTIVATIONS.index(activation)))  # fmt: skip
    return _kernel("gate_up", variant), grid, (THREADS,), args, VARIANTS[variant].smem_bytes


def _plan_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight=None, variant=None):
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
    variant = _run_variant("moe_down", variant, hidden, inter)
    if rows < 1:
        return None
    n_tiles = -(-hidden // DOWN_COLS)
    grid = (token_tiles(rows, experts) * n_tiles,)
    weight = row_weight if row_weight is not None else np.uint64(0)  # null pointer: no scaling
    args = (h, expert_offsets, w2, w2_scale, w2_scale2, weight, out,
            np.int32(experts), np.int32(inter), np.int32(hidden), np.int32(n_tiles))  # fmt: skip
    return _kernel("down", variant), grid, (THREADS,), args, VARIANTS[variant].smem_bytes


def _launcher(plan):
    if plan is None:  # no rows: nothing to launch
        return lambda: None
    kernel, grid, block, args, smem = plan
    return functools.partial(kernel, grid, block, args, shared_mem=smem)


def moe_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant: str | None = None,
                activation: str = "silu") -> None:  # fmt: skip
    """out[r] = act(x[row_token[r]] . gate_e^T) * (x[row_token[r]] . up_e^T) for every permuted row r,
    e its expert, act SiLU or (activation "gelu_tanh") GELU with the tanh form. x fp16 [T, H]; out fp16
    [R, I]; FP32 accumulation, one FP16 rounding. `variant`: a name of VARIANTS (ValueError where
    cannot_run), or None: choose_variant's for arrays in natural order. Where the variant is kperm, x and
    out are in kperm order; where it is tiled, w13 is tile-major."""
    _launcher(_plan_gate_up(x, row_token, expert_offsets, w13, w13_scale, w13_scale2, out, variant, activation))()


def moe_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight=None, variant: str | None = None) -> None:
    """out[r] = (h[r] . down_e^T) * row_weight[r] (no scaling when row_weight is None) for every
    permuted row r, e its expert. h fp16 [R, I]; out fp16 [R, H]. `variant` as in moe_gate_up; where it
    is kperm, h is in kperm order; where it is tiled, w2 is tile-major."""
    _launcher(_plan_down(h, expert_offsets, w2, w2_scale, w2_scale2, out, row_weight, variant))()


_PLANS = {moe_gate_up: _plan_gate_up, moe_down: _plan_down}


def prepare(op, *args, **kwargs):
    """Check `op(*args, **kwargs)` once and return a no-argument callable that launches it (see ops.prepare)."""
    return _launcher(_PLANS[op](*args, **kwargs))


def prewarm() -> None:
    """Compile the family and fetch every kernel that choose_variant can pick on this GPU (raising its
    shared-memory limit), outside any capture."""
    for variant in _choosable(_current_cc()):
        _kernel("gate_up", variant)
        _kernel("down", variant)


def _choosable(cc: int) -> tuple[str, ...]:
    """Every variant choose_variant returns on a GPU of compute capability cc, for some layer and layout."""
    layouts = [(tiled, kperm) for tiled in (True, False) for kperm in (True, False)]
    return tuple(dict.fromkeys(choose_variant(TILE_K, TILE_K, tiled=t, kperm=k, device_cc=cc) for t, k in layouts))
