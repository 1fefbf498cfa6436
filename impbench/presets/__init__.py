"""Model presets: the dataclass (model), the TOML catalog (catalog) and Hugging Face configs (hf)."""

from impbench.presets.catalog import get_preset, list_presets, load_preset_file, replace_layers
from impbench.presets.hf import SUPPORTED_HF_TYPES, from_hf_config, to_hf_config
from impbench.presets.model import (ARCHITECTURES, FP16_BYTES, LAYER_TYPES, NVFP4_BYTES_PER_PARAM, TENSOR_GROUPS,
                                    ModelPreset)

__all__ = [
    "ARCHITECTURES",
    "FP16_BYTES",
    "LAYER_TYPES",
    "NVFP4_BYTES_PER_PARAM",
    "SUPPORTED_HF_TYPES",
    "TENSOR_GROUPS",
    "ModelPreset",
    "from_hf_config",
    "get_preset",
    "list_presets",
    "load_preset_file",
    "replace_layers",
    "to_hf_config",
]
