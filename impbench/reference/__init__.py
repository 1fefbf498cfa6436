"""NumPy float64 references of every forward the engine runs: the oracles its kernels and its layers are
tested against. `blocks` holds what every architecture shares; one module per architecture holds its
layers, a random-weight generator and the sublayer-by-sublayer comparison."""

from impbench.reference.blocks import causal_attention, moe, rms_norm, rope, route  # noqa: F401
from impbench.reference.qwen3_moe import (  # noqa: F401
    LAYER_KEYS,
    PLANTS,
    attention_sublayer,
    layer_weights,
    moe_sublayer,
    random_weights,
    reference_forward,
    reference_hidden,
    reference_trace,
    sublayer_errors,
)


def for_preset(preset):
    """The reference module of a preset's architecture: qwen3_moe, qwen3_5_moe or gemma4."""
    import importlib

    return importlib.import_module(f"impbench.reference.{preset.architecture}")
