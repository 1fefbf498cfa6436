"""The preset catalog: one TOML file per model in the packaged scenarios/models/ folder, loaded into
ModelPreset; lookup by name or alias; the `--layers N` cut."""

from __future__ import annotations

from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

from impbench import resources
from impbench.errors import InputError
from impbench.files import read_toml
from impbench.presets.model import ModelPreset


_FIELD_NAMES = {f.name for f in fields(ModelPreset)}
_TUPLE_FIELDS = {"aliases", "layer_types", "nvfp4_tensors", "unverified"}


def _from_mapping(data: dict[str, Any], where: str) -> ModelPreset:
    data = dict(data)
    pattern = data.pop("layer_pattern", None)
    if pattern is not None:
        if "layer_types" in data:
            raise InputError(f"{where}: give layer_types or layer_pattern, not both")
        if not isinstance(pattern, list) or not pattern:
            raise InputError(f"{where}: layer_pattern must be a non-empty list of layer types")
        layers = data.get("num_layers")
        if not isinstance(layers, int) or layers <= 0:
            raise InputError(f"{where}: num_layers must be a positive integer, got {layers!r}")
        data["layer_types"] = [pattern[i % len(pattern)] for i in range(layers)]
    unknown = sorted(set(data) - _FIELD_NAMES)
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}")
    missing = sorted(f.name for f in fields(ModelPreset) if f.name not in data and _is_required(f))
    if missing:
        raise InputError(f"{where}: missing keys {missing}")
    for name in _TUPLE_FIELDS & set(data):
        value = data[name]
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where}: {name} must be a list, got {value!r}")
        data[name] = tuple(value)
    for name in ("rms_norm_eps", "rope_theta", "partial_rotary_factor", "published_total_params",
                 "published_active_params", "full_rope_theta", "final_logit_softcapping"):
        if isinstance(data.get(name), int) and not isinstance(data[name], bool):  # TOML 10000 -> 10000.0
            data[name] = float(data[name])
    return ModelPreset(**data)


def _is_required(f) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def load_preset_file(path: str | Path) -> ModelPreset:
    """A preset from one TOML file (scenarios/models/*.toml layout); bad content -> InputError."""
    path = Path(path)
    data = read_toml(path, "preset file")
    # TOML has no null: these optional fields are written as 0 / "" when absent.
    for name in ("sliding_window", "published_total_params", "published_active_params", "full_rope_theta",
                 "final_logit_softcapping"):
        if data.get(name) in (0, 0.0, ""):
            data[name] = None
    data.setdefault("sliding_window", None)
    data.setdefault("published_total_params", None)
    data.setdefault("published_active_params", None)
    return _from_mapping(data, f"preset file {path}")


def _load_all() -> list[ModelPreset]:
    presets = [load_preset_file(p) for p in sorted(resources.model_presets_dir().glob("*.toml"))]
    seen: dict[str, str] = {}
    for preset in presets:
        for key in (preset.name, *preset.aliases):
            if key in seen:
                raise InputError(f"preset name or alias {key!r} is used by both {seen[key]} and {preset.name}")
            seen[key] = preset.name
    return presets


def list_presets() -> list[ModelPreset]:
    """Every preset in scenarios/models/, real models by name, then synthetic ones (tiny) last."""
    return sorted(_load_all(), key=lambda p: (p.synthetic, p.name))


def get_preset(name_or_alias: str) -> ModelPreset:
    """The preset called `name_or_alias` (its name or an alias); unknown -> InputError naming the accepted ones."""
    key = name_or_alias.strip().lower()
    presets = list_presets()
    for preset in presets:
        if key == preset.name.lower() or key in (a.lower() for a in preset.aliases):
            return preset
    accepted = ", ".join(f"{p.name} ({', '.join(p.aliases)})" if p.aliases else p.name for p in presets)
    raise InputError(f"unknown model {name_or_alias!r}; accepted: {accepted}; or pass --model-config path/config.json")


def replace_layers(preset: ModelPreset, num_layers: int) -> ModelPreset:
    """The same model cut to its first `num_layers` layers (the `--layers N` option).

    Published parameter figures describe the whole model, so the cut preset carries none.
    """
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or not 1 <= num_layers <= preset.num_layers:
        raise InputError(f"--layers must be between 1 and {preset.num_layers} for {preset.name}, got {num_layers!r}")
    if num_layers == preset.num_layers:
        return preset
    return replace(
        preset,
        num_layers=num_layers,
        layer_types=preset.layer_types[:num_layers],
        published_total_params=None,
        published_active_params=None,
        published_params_note=f"cut to {num_layers} of {preset.num_layers} layers; published figures do not apply",
    )



