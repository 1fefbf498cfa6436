"""Will the engine fit? Its device memory, counted before anything is allocated, against what is free.

The engine allocates every weight and buffer up front (the prewarm), so its footprint is known
from the preset and the prompt: the weights as stored (NVFP4 groups at 0.5625 B per parameter),
every buffer of engine.buffers (KV cache, activations, routing), and a margin for what is not a
buffer (compiled modules, cuBLAS workspace, CuPy's pool rounding). A model that cannot fit is
refused with one line naming the numbers and the ways out, instead of dying in CuPy tens of GB in.
"""

from __future__ import annotations

import numpy as np

from impbench.engine.buffers import buffer_specs
from impbench.errors import InputError

MARGIN_BYTES = 1 << 30  # modules, cuBLAS workspace, graph memory
MARGIN_FRACTION = 0.05  # the pool's rounding and fragmentation


def buffer_bytes(preset, chunk_tokens: int, max_tokens: int) -> int:
    """Every buffer of engine.buffers at these sizes, as Buffers allocates them."""
    specs = buffer_specs(preset, chunk_tokens, max_tokens)
    return int(sum(int(np.prod(shape)) * dtype.itemsize for shape, dtype in specs.values()))


def packed_code_bytes(preset) -> float:
    """The second copy of the NVFP4 attention projections' codes that the dense NVFP4 GEMM reads
    (engine.weights.Nvfp4Linear.packed): 0.5 B a parameter (the presets' K fill whole 128-value stages)."""
    return 0.5 * preset.param_groups().get("attention", 0) if "attention" in preset.nvfp4_tensors else 0.0


def required_bytes(preset, chunk_tokens: int, max_tokens: int) -> dict[str, float]:
    """Bytes by part: weights (the packed NVFP4 codes included), buffers (KV cache and activations), margin;
    and their total."""
    weights = sum(preset.weight_bytes().values()) + packed_code_bytes(preset)
    buffers = buffer_bytes(preset, chunk_tokens, max_tokens)
    margin = MARGIN_BYTES + MARGIN_FRACTION * (weights + buffers)
    return {"weights": weights, "buffers": buffers, "margin": margin, "total": weights + buffers + margin}


def check_fits(preset, chunk_tokens: int, max_tokens: int, free_bytes: float) -> None:
    """InputError naming the numbers and the ways out where the engine would not fit in `free_bytes`."""
    need = required_bytes(preset, chunk_tokens, max_tokens)
    if need["total"] <= free_bytes:
        return
    per_layer = need["total"] / preset.num_layers
    layers = int((free_bytes - MARGIN_BYTES) // max(per_layer, 1))
    way_out = f"--layers {layers} (the first {layers} of {preset.num_layers} layers fit)" if layers >= 1 else "a smaller model"
    raise InputError(
        f"{preset.name} at {max_tokens:,} prompt tokens needs about {need['total'] / 1e9:.1f} GB of GPU memory "
        f"(weights {need['weights'] / 1e9:.1f}, buffers {need['buffers'] / 1e9:.1f}, margin {need['margin'] / 1e9:.1f}) "
        f"but {free_bytes / 1e9:.1f} GB are free; pass {way_out}, or a shorter --pp"
    )


def free_device_bytes() -> float:
    """Free device memory, counting the blocks CuPy's pool holds but does not use."""
    import cupy

    free, _ = cupy.cuda.runtime.memGetInfo()
    pool = cupy.get_default_memory_pool()
    return float(free + pool.total_bytes() - pool.used_bytes())
