"""NVFP4 weights in the ModelOpt checkpoint layout: a NumPy codec (the reference of every test) and a
GPU generator of synthetic expert weights.

Layout of one [N, K] weight: ``weight`` uint8 [N, K/2] holding two E2M1 codes per byte, ``weight_scale``
uint8 [N, K/16] holding FP8 E4M3 bit patterns (one scale per 16 consecutive values along K), and
``weight_scale_2`` one float32. Value = e2m1(code) * e4m3(scale) * scale_2.

Nibble order: element 2j is the LOW nibble of byte j, element 2j+1 the high nibble. Checked against
NVIDIA/Model-Optimizer modelopt/torch/quantization/qtensor/nvfp4_tensor.py (``NVFP4QTensor.quantize``:
``packed_weight = (q_weight[..., 1::2] << 4) | q_weight[..., 0::2]``; ``dequantize`` unpacks
``unpacked[..., 0::2] = input & 0x0F``) and vllm-project/vllm tests/kernels/quantization/nvfp4_utils.py
(``break_fp4_bytes`` stacks (low, high) per byte). E2M1 code: bit 3 sign, bits 0-2 index into
(0, 0.5, 1, 1.5, 2, 3, 4, 6) -- ModelOpt's ``e2m1_values`` table.

Quantization follows ModelOpt's ``get_weights_scaling_factor_2`` / ``get_weights_scaling_factor``:
scale_2 = amax / (6 * 448); block scale = block_amax / (6 * scale_2), 1.0 where the block is all zero,
clamped below at 2^-9 (smallest e4m3 subnormal), rounded to e4m3; codes = x / (scale * scale_2) rounded
to E2M1. Both roundings here are round-to-nearest-even with saturation (448 and 6), the hardware cvt
rule; ModelOpt's searchsorted differs only on exact ties at 2.5 and 3.5.
"""

from __future__ import annotations

import numpy as np

E2M1_MAX = 6.0
E4M3_MAX = 448.0
BLOCK = 16  # values per e4m3 scale, along K

# E2M1 magnitudes by code & 7; codes 8..15 are the negatives (8 is -0).
E2M1_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0], np.float32)


def _e4m3_table() -> np.ndarray:
    """Float32 value of each of the 256 E4M3 (fn: no infinities) bit patterns; 0x7F and 0xFF are NaN."""
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    exp, man = (codes >> 3) & 0xF, codes & 0x7
    mag = np.where(exp == 0, man / 8.0 * 2.0**-6, (1.0 + man / 8.0) * 2.0 ** (exp - 7.0))
    values = (sign * mag).astype(np.float32)
    values[[0x7F, 0xFF]] = np.nan
    return values


E4M3_VALUES = _e4m3_table()
_E4M3_POSITIVE = E4M3_VALUES[:0x7F]  # codes 0..126, ascending, last = 448


# ---- scalars ----------------------------------------------------------------------------------


def e4m3_decode(bits) -> np.ndarray:
    """uint8 E4M3 bit patterns -> float32 values."""
    return E4M3_VALUES[np.asarray(bits, dtype=np.uint8)]


def e4m3_encode(values) -> np.ndarray:
    """float values -> uint8 E4M3 bits: round to nearest, ties to even code, saturate at +-448."""
    x = np.asarray(values, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("e4m3_encode: NaN input")
    mag = np.minimum(np.abs(x), E4M3_MAX)
    hi = np.searchsorted(_E4M3_POSITIVE, mag, side="left").clip(0, len(_E4M3_POSITIVE) - 1)
    lo = np.maximum(hi - 1, 0)
    d_hi, d_lo = _E4M3_POSITIVE[hi] - mag, mag - _E4M3_POSITIVE[lo]
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    return np.where(np.signbit(x) & (code != 0), code | 0x80, code).astype(np.uint8)


def e2m1_encode(values) -> np.ndarray:
    """float values -> E2M1 codes 0..15: round to nearest, ties to even mantissa, saturate at +-6."""
    x = np.asarray(values, dtype=np.float32)
    if np.isnan(x).any():
        raise ValueError("e2m1_encode: NaN input")
    a = np.abs(x)
    # Midpoints of (0, .5, 1, 1.5, 2, 3, 4, 6); a tie goes to the even-mantissa side (0, 1, 2, 4).
    index = (
        (a > 0.25).astype(np.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5.0)
    ).astype(np.uint8)
    return np.where((x < 0) & (index != 0), index | 8, index).astype(np.uint8)


def e2m1_decode(codes) -> np.ndarray:
    return E2M1_VALUES[np.asarray(codes, dtype=np.uint8) & 0xF]


# ---- nibbles ----------------------------------------------------------------------------------


def pack(codes) -> np.ndarray:
    """E2M1 codes [..., K] (K even) -> bytes [..., K/2]; element 2j in the low nibble of byte j."""
    c = np.asarray(codes, dtype=np.uint8)
    if c.shape[-1] % 2:
        raise ValueError(f"pack: last dimension must be even, got shape {c.shape}")
    return ((c[..., 1::2] & 0xF) << 4 | (c[..., 0::2] & 0xF)).astype(np.uint8)


def unpack(packed) -> np.ndarray:
    """bytes [..., K/2] -> E2M1 codes [..., K] (low nibble first)."""
    p = np.asarray(packed, dtype=np.uint8)
    out = np.empty(p.shape[:-1] + (2 * p.shape[-1],), dtype=np.uint8)
    out[..., 0::2] = p & 0xF
    out[..., 1::2] = p >> 4
    return out


# ---- tensors ----------------------------------------------------------------------------------


def quantize(w) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """w float [..., K] (K % 16 == 0) -> (packed uint8 [..., K/2], scale uint8 e4m3 [..., K/16], scale2).

    One global scale for the whole tensor. An empty or all-zero tensor gets scale2 = 1.0 (ModelOpt would
    divide by zero) and all-zero codes with scale 1.0.
    """
    x = np.asarray(w, dtype=np.float32)
    if x.ndim < 1 or x.shape[-1] % BLOCK:
        raise ValueError(f"quantize: last dimension (K) must be a multiple of {BLOCK}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("quantize: weights must be finite")
    blocks = x.reshape(x.shape[:-1] + (x.shape[-1] // BLOCK, BLOCK))
    amax = float(np.abs(x).max()) if x.size else 0.0
    scale2 = np.float32(amax / (E2M1_MAX * E4M3_MAX)) if amax > 0 else np.float32(1.0)
    block_amax = np.abs(blocks).max(axis=-1) if x.size else np.zeros(blocks.shape[:-1], np.float32)
    block_scale = block_amax / (np.float32(E2M1_MAX) * scale2)
    block_scale = np.where(block_scale == 0, np.float32(1.0), block_scale)
    scale = e4m3_encode(np.maximum(block_scale, np.float32(2.0**-9)))
    divisor = (e4m3_decode(scale) * scale2)[..., None]
    codes = e2m1_encode(blocks / divisor).reshape(x.shape)
    return pack(codes), scale, scale2


def dequantize(packed, scale, scale2) -> np.ndarray:
    """(packed [..., K/2], scale [..., K/16], scale2) -> float32 [..., K].

    scale2 is a scalar, or an array over the leading dimensions (e.g. [E] for stacked experts [E, N, K/2]).
    """
    p, s = np.asarray(packed, dtype=np.uint8), np.asarray(scale, dtype=np.uint8)
    k = 2 * p.shape[-1]
    if k % BLOCK or s.shape != p.shape[:-1] + (k // BLOCK,):
        raise ValueError(
            f"dequantize: scale shape {s.shape} does not match packed shape {p.shape} "
            f"(need K = 2 * {p.shape[-1]} a multiple of {BLOCK} and scale [..., K/{BLOCK}])"
        )
    s2 = np.asarray(scale2, dtype=np.float32)
    s2 = s2.reshape(s2.shape + (1,) * (p.ndim - s2.ndim))
    values = e2m1_decode(unpack(p)).reshape(p.shape[:-1] + (k // BLOCK, BLOCK))
    return (values * e4m3_decode(s)[..., None]).reshape(p.shape[:-1] + (k,)) * s2


# ---- synthetic weights on the GPU -------------------------------------------------------------


def expert_scale2(num_experts: int, seed: int, std: float) -> np.ndarray:
    """Per-expert global scales of the generator: expert std = std * (1 +- 10%), clip at 6 std."""
    rng = np.random.default_rng(seed)
    sigma = std * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, num_experts))
    return (sigma / E4M3_MAX).astype(np.float32)  # amax 6 sigma -> (6 sigma) / (6 * 448)


def generate_experts_gpu(num_experts: int, n: int, k: int, seed: int = 0, std: float = 0.02):
    """Synthetic NVFP4 expert weights [E, n, k] built on the GPU: (codes, scales, scale2) cupy arrays.

    Each weight is drawn N(0, sigma_e^2) (counter-based hash + Box-Muller, so the result depends only
    on the seed) and quantized as ModelOpt would with amax = 6 sigma_e (kernels_cu/nvfp4_gen.cu): a whole
    30B-parameter model takes well under a second. Codes uint8 [E, n, k/2], scales uint8 e4m3
    [E, n, k/16], scale2 float32 [E].
    """
    import cupy

    from impbench.kernels import get_function

    if num_experts < 1 or n < 1 or k < BLOCK or k % BLOCK:
        raise ValueError(f"generate_experts_gpu: need E >= 1, n >= 1, k a positive multiple of {BLOCK}; got E={num_experts} n={n} k={k}")
    codes = cupy.empty((num_experts, n, k // 2), dtype=cupy.uint8)
    scales = cupy.empty((num_experts, n, k // BLOCK), dtype=cupy.uint8)
    scale2 = cupy.asarray(expert_scale2(num_experts, seed, std))
    blocks_per_expert = n * (k // BLOCK)
    total = num_experts * blocks_per_expert
    threads = 256
    grid = min((total + threads - 1) // threads, 65536)
    get_function("nvfp4_gen", "nvfp4_generate")(
        (grid,), (threads,),
        (codes, scales, scale2, np.int64(blocks_per_expert), np.int64(total), np.uint64(seed & (2**64 - 1))),
    )  # fmt: skip
    return codes, scales, scale2
