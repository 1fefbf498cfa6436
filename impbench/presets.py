"""Model presets: one TOML file per model in scenarios/models/, loaded into a frozen dataclass.

A preset stores only numbers a model's published config.json states (or, for the synthetic `tiny`
preset, numbers chosen for tests). Everything derived -- projection widths, parameter counts per
layer and in total, the active share -- is a property or function here, never a second stored copy
(gpt-fast's ModelArgs is the pattern).

Layer types are "full" (global causal attention), "sliding" (windowed causal attention) and
"linear" (Gated DeltaNet linear attention, the Qwen3.5/3.6 hybrid). Architectures:

- ``qwen3_moe``: Qwen3-30B-A3B family; every layer full attention with q/k RMSNorm + routed MoE.
- ``qwen3_5_moe``: Qwen3.5/3.6 hybrid MoE; 3 linear : 1 full, gated full attention (q_proj also
  produces an output gate), routed experts plus one shared expert with a sigmoid gate.
- ``gemma4``: Gemma-4 MoE (26B-A4B); 5 sliding : 1 full, full layers with wider heads, fewer KV
  heads and K = V (no v_proj), a dense GeGLU MLP next to the routed MoE in every layer.
"""

from __future__ import annotations

import json
import sys
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from impbench import resources
from impbench.errors import InputError


ARCHITECTURES = ("qwen3_moe", "qwen3_5_moe", "gemma4")
LAYER_TYPES = ("full", "sliding", "linear")
# Tensor groups a preset can mark as NVFP4; every other weight is 16-bit.
TENSOR_GROUPS = ("experts", "shared_expert", "dense_mlp", "attention", "linear_attention", "router", "lm_head")

FP16_BYTES = 2.0
# NVFP4 (ModelOpt layout): 4-bit codes (0.5 B) + one e4m3 scale per 16 values (1/16 B); the one
# fp32 global scale per tensor is negligible and left out of per-parameter sizes.
NVFP4_BYTES_PER_PARAM = 0.5 + 1.0 / 16.0

SUPPORTED_HF_TYPES = "qwen3_moe, qwen3_5_moe (Qwen3.5/3.6 hybrid MoE), gemma4 (MoE, enable_moe_block=true)"


@dataclass(frozen=True)
class ModelPreset:
    """One model's prefill-relevant geometry. Field names are a contract other modules code against."""

    name: str
    aliases: tuple[str, ...]
    architecture: str
    source: str
    synthetic: bool
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    qk_norm: bool
    tie_word_embeddings: bool
    num_experts: int
    experts_per_token: int
    moe_intermediate_size: int
    shared_expert_intermediate_size: int  # 0 = no shared expert
    norm_topk_prob: bool
    layer_types: tuple[str, ...]  # one entry per layer: "full" | "sliding" | "linear"
    sliding_window: int | None
    nvfp4_tensors: tuple[str, ...]  # tensor groups stored as NVFP4 (TENSOR_GROUPS)
    chunk_size: int  # prefill chunk in tokens; 0 = the whole prompt in one chunk
    published_total_params: float | None
    published_active_params: float | None
    # Full-attention layers that differ from the others (Gemma-4): 0 = same as head_dim / num_kv_heads.
    full_head_dim: int = 0
    full_kv_heads: int = 0
    attention_k_eq_v: bool = False  # full layers project K once and use it as V (no v_proj)
    attn_output_gate: bool = False  # q_proj also emits a per-channel output gate (Qwen3.5/3.6)
    partial_rotary_factor: float = 1.0
    full_rope_theta: float | None = None  # RoPE base of full layers where it differs (Gemma-4)
    # Gated DeltaNet linear attention (qwen3_5_moe); 0 where the model has none.
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 0
    # Dense MLP next to the routed MoE in every layer (Gemma-4's `intermediate_size`); 0 = none.
    dense_intermediate_size: int = 0
    final_logit_softcapping: float | None = None
    published_params_note: str = ""  # where published figures come from, or why there are none
    unverified: tuple[str, ...] = ()  # numbers not confirmed from the published config (README lists them)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- attention geometry -------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        """Query width of a standard (non-full-override) attention layer: heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """K (or V) width of a standard attention layer: KV heads x head_dim."""
        return self.num_kv_heads * self.head_dim

    def attention_dims(self, layer_type: str) -> tuple[int, int, int]:
        """(query heads, KV heads, head_dim) of a full or sliding layer."""
        if layer_type == "full":
            return (
                self.num_attention_heads,
                self.full_kv_heads or self.num_kv_heads,
                self.full_head_dim or self.head_dim,
            )
        if layer_type == "sliding":
            return self.num_attention_heads, self.num_kv_heads, self.head_dim
        raise ValueError(f"layer type {layer_type!r} has no softmax attention")

    def has_v_proj(self, layer_type: str) -> bool:
        return not (self.attention_k_eq_v and layer_type == "full")

    def qkv_width(self, layer_type: str) -> int:
        """Output width of the fused q/k/v projection of a full or sliding layer (gate included)."""
        heads, kv_heads, dim = self.attention_dims(layer_type)
        q = heads * dim * (2 if self.attn_output_gate else 1)
        return q + kv_heads * dim * (2 if self.has_v_proj(layer_type) else 1)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def linear_conv_dim(self) -> int:
        """Channels of the causal conv (and of in_proj_qkv): q and k at key width, v at value width."""
        return 2 * self.linear_key_dim + self.linear_value_dim

    # ---- layout -------------------------------------------------------------------------------
    def layer_counts(self) -> dict[str, int]:
        """Number of layers of each type present, local types (sliding, linear) before full."""
        order = ("sliding", "linear", "full")
        return {t: self.layer_types.count(t) for t in order if t in self.layer_types}

    @property
    def attention_layout(self) -> str:
        """Short human description, e.g. '25 sliding(1024) + 5 full'."""
        parts = []
        for layer_type, count in self.layer_counts().items():
            label = f"sliding({self.sliding_window})" if layer_type == "sliding" else layer_type
            parts.append(f"{count} {label}")
        return " + ".join(parts)

    # ---- parameters ---------------------------------------------------------------------------
    def layer_params(self, layer_type: str) -> dict[str, int]:
        """Parameters of one layer of `layer_type`, by tensor group (TENSOR_GROUPS + 'norms')."""
        h = self.hidden_size
        groups = {g: 0 for g in ("attention", "linear_attention", "router", "experts", "shared_expert", "dense_mlp", "norms")}
        if layer_type == "linear":
            conv = self.linear_conv_dim
            groups["linear_attention"] = (
                h * conv  # in_proj_qkv
                + h * self.linear_value_dim  # in_proj_z
                + 2 * h * self.linear_num_value_heads  # in_proj_b, in_proj_a
                + conv * self.linear_conv_kernel  # depthwise causal conv, no bias
                + 2 * self.linear_num_value_heads  # dt_bias, A_log
                + self.linear_value_head_dim  # gated RMSNorm weight
                + self.linear_value_dim * h  # out_proj
            )
        else:
            heads, _, dim = self.attention_dims(layer_type)
            groups["attention"] = h * self.qkv_width(layer_type) + heads * dim * h
            if self.qk_norm:
                groups["norms"] += 2 * dim
        groups["router"] = self.num_experts * h
        groups["experts"] = self.num_experts * 3 * h * self.moe_intermediate_size
        if self.shared_expert_intermediate_size:
            groups["shared_expert"] = 3 * h * self.shared_expert_intermediate_size
            if self.architecture == "qwen3_5_moe":
                groups["router"] += h  # shared_expert_gate: Linear(H, 1)
        if self.dense_intermediate_size:
            groups["dense_mlp"] = 3 * h * self.dense_intermediate_size
        groups["norms"] += _NORMS_PER_LAYER[self.architecture] * h
        if self.architecture == "gemma4":
            groups["router"] += h + self.num_experts  # router input scale, per-expert scale
        return groups

    def layer_active_params(self, layer_type: str) -> dict[str, int]:
        """Parameters one token touches in a layer: routed experts scaled to top-k of E."""
        groups = self.layer_params(layer_type)
        groups["experts"] = self.experts_per_token * 3 * self.hidden_size * self.moe_intermediate_size
        return groups

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def param_groups(self, active: bool = False) -> dict[str, int]:
        """Whole-model parameters by group (embed, lm_head, norms incl. the final norm, ...)."""
        totals: dict[str, int] = {"embed": self.embedding_params, "lm_head": self.lm_head_params}
        per_layer = self.layer_active_params if active else self.layer_params
        for layer_type, count in self.layer_counts().items():
            for group, value in per_layer(layer_type).items():
                totals[group] = totals.get(group, 0) + count * value
        totals["norms"] = totals.get("norms", 0) + self.hidden_size  # final norm
        return totals

    @property
    def total_params(self) -> int:
        return sum(self.param_groups().values())

    @property
    def active_params(self) -> int:
        return sum(self.param_groups(active=True).values())

    def weight_bytes_per_param(self, group: str) -> float:
        """Stored bytes per parameter of a tensor group: NVFP4 groups 0.5625, the others FP16."""
        return NVFP4_BYTES_PER_PARAM if group in self.nvfp4_tensors else FP16_BYTES

    def weight_bytes(self) -> dict[str, float]:
        """Bytes of weights by group as impbench stores them."""
        return {group: params * self.weight_bytes_per_param(group) for group, params in self.param_groups().items()}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NORMS_PER_LAYER = {
    "qwen3_moe": 2,  # input_layernorm, post_attention_layernorm
    "qwen3_5_moe": 2,
    "gemma4": 7,  # input, post-attention, pre/post-feedforward, and three more around the MoE branch
}


def _validate(p: ModelPreset) -> None:
    where = f"preset {p.name!r}"
    if p.architecture not in ARCHITECTURES:
        raise InputError(f"{where}: architecture {p.architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    for name in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads", "head_dim", "vocab_size",
                 "num_experts", "experts_per_token", "moe_intermediate_size"):
        value = getattr(p, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{where}: {name} must be a positive integer, got {value!r}")
    if p.experts_per_token > p.num_experts:
        raise InputError(f"{where}: experts_per_token {p.experts_per_token} exceeds num_experts {p.num_experts}")
    if len(p.layer_types) != p.num_layers:
        raise InputError(f"{where}: layer_types has {len(p.layer_types)} entries for {p.num_layers} layers")
    bad = sorted(set(p.layer_types) - set(LAYER_TYPES))
    if bad:
        raise InputError(f"{where}: unknown layer types {bad}; accepted: {', '.join(LAYER_TYPES)}")
    if "sliding" in p.layer_types and not p.sliding_window:
        raise InputError(f"{where}: sliding layers need a sliding_window")
    if "linear" in p.layer_types and not all(
        (p.linear_num_key_heads, p.linear_num_value_heads, p.linear_key_head_dim, p.linear_value_head_dim, p.linear_conv_kernel)
    ):
        raise InputError(f"{where}: linear layers need linear_num_key_heads/value_heads/key_head_dim/value_head_dim/conv_kernel")
    bad = sorted(set(p.nvfp4_tensors) - set(TENSOR_GROUPS))
    if bad:
        raise InputError(f"{where}: unknown nvfp4_tensors {bad}; accepted: {', '.join(TENSOR_GROUPS)}")
    if not isinstance(p.chunk_size, int) or p.chunk_size < 0 or p.chunk_size % 16:
        raise InputError(f"{where}: chunk_size must be 0 or a positive multiple of 16, got {p.chunk_size!r}")
    if p.shared_expert_intermediate_size < 0 or p.dense_intermediate_size < 0:
        raise InputError(f"{where}: intermediate sizes must be >= 0")


# ---- loading ------------------------------------------------------------------------------------

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
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read preset file {path}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"preset file {path} is not valid TOML: {exc}") from None
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


# ---- Hugging Face config.json -------------------------------------------------------------------

def from_hf_config(path: str | Path) -> ModelPreset:
    """A preset from a Hugging Face config.json of a supported MoE architecture.

    Supported model_type values: qwen3_moe; qwen3_5_moe / qwen3_5_moe_text (Qwen3.5 and Qwen3.6
    hybrid MoE); gemma4 / gemma4_text with enable_moe_block. Anything else, unreadable or malformed
    JSON, or a missing required key raises InputError naming what is supported or missing.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); expected a Hugging Face config.json") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path} holds a JSON {type(raw).__name__}, not an object; expected a Hugging Face config.json")
    model_type = raw.get("model_type")
    cfg = dict(raw)
    if isinstance(raw.get("text_config"), dict):  # multimodal wrappers nest the language model
        cfg.update(raw["text_config"])
        model_type = raw.get("model_type") or raw["text_config"].get("model_type")
    builders = {
        "qwen3_moe": _qwen3_moe_from_hf,
        "qwen3_5_moe": _qwen3_5_moe_from_hf,
        "qwen3_5_moe_text": _qwen3_5_moe_from_hf,
        "gemma4": _gemma4_from_hf,
        "gemma4_text": _gemma4_from_hf,
    }
    if model_type not in builders:
        raise InputError(f"{path}: model_type {model_type!r} is not supported; supported: {SUPPORTED_HF_TYPES}")
    reader = _HFReader(cfg, path, model_type)
    name = str(raw.get("_name_or_path") or path.resolve().parent.name or path.stem)
    fields_ = builders[model_type](reader)
    fields_.update(
        name=name,
        aliases=(),
        source=f"config.json at {path}",
        synthetic=False,
        nvfp4_tensors=_nvfp4_groups_from_hf(raw),
        published_total_params=None,
        published_active_params=None,
        published_params_note="built from a config.json; no published figures attached",
    )
    if "chunk_size" not in fields_:
        fields_["chunk_size"] = 0 if "sliding" in fields_["layer_types"] else 512
    try:
        return ModelPreset(**fields_)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None


class _HFReader:
    def __init__(self, cfg: dict, path: Path, model_type: str):
        self.cfg, self.path, self.model_type = cfg, path, model_type

    def int(self, key: str, default: int | None = None) -> int:
        value = self.cfg.get(key, default)
        if value is None:
            raise InputError(f"{self.path}: {self.model_type} config lacks {key!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(f"{self.path}: {key!r} must be an integer, got {value!r}")
        return value

    def float(self, key: str, default: float | None = None) -> float:
        value = self.cfg.get(key, default)
        if value is None:
            raise InputError(f"{self.path}: {self.model_type} config lacks {key!r}")
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InputError(f"{self.path}: {key!r} must be a number, got {value!r}")
        return float(value)

    def bool(self, key: str, default: bool) -> bool:
        value = self.cfg.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise InputError(f"{self.path}: {key!r} must be true or false, got {value!r}")
        return value

    def layer_types(self, num_layers: int, default_pattern: list[str]) -> tuple[str, ...]:
        names = {"full_attention": "full", "sliding_attention": "sliding", "linear_attention": "linear"}
        raw = self.cfg.get("layer_types")
        if raw is None:
            return tuple(default_pattern[i % len(default_pattern)] for i in range(num_layers))
        if not isinstance(raw, list) or len(raw) != num_layers:
            raise InputError(f"{self.path}: layer_types must list one type per layer ({num_layers})")
        unknown = sorted({t for t in raw if t not in names}, key=str)
        if unknown:
            raise InputError(f"{self.path}: unknown layer_types {unknown}; accepted: {', '.join(names)}")
        return tuple(names[t] for t in raw)

    def rope(self, layer_kind: str | None = None, default: float = 10000.0) -> tuple[float, float]:
        """(rope_theta, partial_rotary_factor) from rope_theta or rope_parameters (optionally per layer kind)."""
        params = self.cfg.get("rope_parameters")
        if isinstance(params, dict) and layer_kind and isinstance(params.get(layer_kind), dict):
            params = params[layer_kind]
        theta = self.cfg.get("rope_theta")
        factor = self.cfg.get("partial_rotary_factor", 1.0)
        if isinstance(params, dict):
            theta = params.get("rope_theta", theta)
            factor = params.get("partial_rotary_factor", factor)
        theta = default if theta is None else theta
        if not isinstance(theta, (int, float)) or not isinstance(factor, (int, float)):
            raise InputError(f"{self.path}: rope_theta / partial_rotary_factor must be numbers")
        return float(theta), float(factor)


def _qwen3_moe_from_hf(r: _HFReader) -> dict[str, Any]:
    layers = r.int("num_hidden_layers")
    heads = r.int("num_attention_heads")
    hidden = r.int("hidden_size")
    if r.cfg.get("mlp_only_layers") or r.cfg.get("decoder_sparse_step", 1) not in (1, None):
        raise InputError(f"{r.path}: qwen3_moe configs with dense (mlp_only) layers are not supported")
    theta, factor = r.rope()
    return dict(
        architecture="qwen3_moe",
        num_layers=layers,
        hidden_size=hidden,
        num_attention_heads=heads,
        num_kv_heads=r.int("num_key_value_heads", heads),
        head_dim=r.int("head_dim", hidden // heads),
        vocab_size=r.int("vocab_size"),
        rms_norm_eps=r.float("rms_norm_eps", 1e-6),
        rope_theta=theta,
        partial_rotary_factor=factor,
        qk_norm=r.bool("use_qk_norm", True),  # Qwen3 attention always has q_norm/k_norm
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        moe_intermediate_size=r.int("moe_intermediate_size"),
        shared_expert_intermediate_size=r.int("shared_expert_intermediate_size", 0),
        norm_topk_prob=r.bool("norm_topk_prob", False),
        layer_types=tuple("full" for _ in range(layers)),
        sliding_window=None,
    )


def _qwen3_5_moe_from_hf(r: _HFReader) -> dict[str, Any]:
    layers = r.int("num_hidden_layers")
    interval = r.int("full_attention_interval", 4)
    theta, factor = r.rope(default=10_000_000.0)
    return dict(
        architecture="qwen3_5_moe",
        num_layers=layers,
        hidden_size=r.int("hidden_size"),
        num_attention_heads=r.int("num_attention_heads"),
        num_kv_heads=r.int("num_key_value_heads"),
        head_dim=r.int("head_dim"),
        vocab_size=r.int("vocab_size"),
        rms_norm_eps=r.float("rms_norm_eps", 1e-6),
        rope_theta=theta,
        partial_rotary_factor=r.float("partial_rotary_factor", factor),
        qk_norm=True,
        attn_output_gate=r.bool("attn_output_gate", True),
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("num_experts_per_tok"),
        moe_intermediate_size=r.int("moe_intermediate_size"),
        shared_expert_intermediate_size=r.int("shared_expert_intermediate_size", 0),
        norm_topk_prob=True,  # the Qwen3.5-MoE router always renormalises its top-k weights
        layer_types=r.layer_types(layers, ["linear"] * (interval - 1) + ["full"]),
        sliding_window=None,
        linear_num_key_heads=r.int("linear_num_key_heads"),
        linear_num_value_heads=r.int("linear_num_value_heads"),
        linear_key_head_dim=r.int("linear_key_head_dim"),
        linear_value_head_dim=r.int("linear_value_head_dim"),
        linear_conv_kernel=r.int("linear_conv_kernel_dim"),
    )


def _gemma4_from_hf(r: _HFReader) -> dict[str, Any]:
    if not r.bool("enable_moe_block", False):
        raise InputError(f"{r.path}: gemma4 config has enable_moe_block=false (a dense Gemma-4); supported: {SUPPORTED_HF_TYPES}")
    layers = r.int("num_hidden_layers")
    sliding_theta, sliding_factor = r.rope("sliding_attention")
    full_theta, _ = r.rope("full_attention", default=1_000_000.0)
    kv_heads = r.int("num_key_value_heads")
    return dict(
        architecture="gemma4",
        num_layers=layers,
        hidden_size=r.int("hidden_size"),
        num_attention_heads=r.int("num_attention_heads"),
        num_kv_heads=kv_heads,
        head_dim=r.int("head_dim"),
        full_head_dim=r.int("global_head_dim", 512),
        full_kv_heads=r.int("num_global_key_value_heads", kv_heads),
        attention_k_eq_v=r.bool("attention_k_eq_v", False),
        vocab_size=r.int("vocab_size"),
        rms_norm_eps=r.float("rms_norm_eps", 1e-6),
        rope_theta=sliding_theta,
        partial_rotary_factor=sliding_factor,
        full_rope_theta=full_theta,
        qk_norm=True,
        tie_word_embeddings=r.bool("tie_word_embeddings", True),
        num_experts=r.int("num_experts"),
        experts_per_token=r.int("top_k_experts"),
        moe_intermediate_size=r.int("moe_intermediate_size"),
        shared_expert_intermediate_size=0,
        dense_intermediate_size=r.int("intermediate_size"),
        norm_topk_prob=True,  # Gemma4TextRouter renormalises the top-k weights
        layer_types=r.layer_types(layers, ["sliding"] * 5 + ["full"]),
        sliding_window=r.int("sliding_window"),
        final_logit_softcapping=r.cfg.get("final_logit_softcapping"),
    )


def _nvfp4_groups_from_hf(raw: dict) -> tuple[str, ...]:
    """Tensor groups a ModelOpt NVFP4 quantization_config covers; ('experts',) otherwise (impbench's default)."""
    quant = raw.get("quantization_config")
    if not isinstance(quant, dict) or str(quant.get("quant_algo", "")).upper() != "NVFP4":
        return ("experts",)
    excluded = " ".join(str(m) for m in quant.get("exclude_modules") or quant.get("ignore") or [])
    groups = ["experts"]
    if "self_attn" not in excluded:
        groups.append("attention")
    return tuple(groups)


def to_hf_config(preset: ModelPreset) -> dict[str, Any]:
    """A minimal Hugging Face config.json for `preset` (inverse of from_hf_config, for tests and export)."""
    p = preset
    types = {"full": "full_attention", "sliding": "sliding_attention", "linear": "linear_attention"}
    common = dict(
        hidden_size=p.hidden_size,
        num_hidden_layers=p.num_layers,
        num_attention_heads=p.num_attention_heads,
        num_key_value_heads=p.num_kv_heads,
        head_dim=p.head_dim,
        vocab_size=p.vocab_size,
        rms_norm_eps=p.rms_norm_eps,
        tie_word_embeddings=p.tie_word_embeddings,
        num_experts=p.num_experts,
        moe_intermediate_size=p.moe_intermediate_size,
    )
    if p.architecture == "qwen3_moe":
        return dict(common, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"], rope_theta=p.rope_theta,
                    num_experts_per_tok=p.experts_per_token, norm_topk_prob=p.norm_topk_prob,
                    shared_expert_intermediate_size=p.shared_expert_intermediate_size, use_qk_norm=p.qk_norm,
                    mlp_only_layers=[], decoder_sparse_step=1, _name_or_path=p.name)
    if p.architecture == "qwen3_5_moe":
        text = dict(common, model_type="qwen3_5_moe_text", num_experts_per_tok=p.experts_per_token,
                    shared_expert_intermediate_size=p.shared_expert_intermediate_size,
                    layer_types=[types[t] for t in p.layer_types], attn_output_gate=p.attn_output_gate,
                    linear_num_key_heads=p.linear_num_key_heads, linear_num_value_heads=p.linear_num_value_heads,
                    linear_key_head_dim=p.linear_key_head_dim, linear_value_head_dim=p.linear_value_head_dim,
                    linear_conv_kernel_dim=p.linear_conv_kernel,
                    rope_parameters={"rope_theta": p.rope_theta, "partial_rotary_factor": p.partial_rotary_factor})
        return {"model_type": "qwen3_5_moe", "architectures": ["Qwen3_5MoeForConditionalGeneration"],
                "_name_or_path": p.name, "text_config": text}
    text = dict(common, model_type="gemma4_text", enable_moe_block=True, top_k_experts=p.experts_per_token,
                intermediate_size=p.dense_intermediate_size, global_head_dim=p.full_head_dim or p.head_dim,
                num_global_key_value_heads=p.full_kv_heads or p.num_kv_heads, attention_k_eq_v=p.attention_k_eq_v,
                sliding_window=p.sliding_window, layer_types=[types[t] for t in p.layer_types],
                final_logit_softcapping=p.final_logit_softcapping,
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": p.rope_theta},
                    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                       "rope_theta": p.full_rope_theta or p.rope_theta},
                })
    return {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"], "_name_or_path": p.name,
            "text_config": text}


def resolve_model(model: str | None, model_config: str | Path | None) -> ModelPreset:
    """The preset a command works on: --model-config wins over --model; neither -> InputError."""
    if model_config:
        return from_hf_config(model_config)
    if not model:
        raise InputError("pass --model NAME (see `impbench models`) or --model-config path/config.json")
    return get_preset(model)


__all__ = [
    "ARCHITECTURES",
    "LAYER_TYPES",
    "TENSOR_GROUPS",
    "ModelPreset",
    "from_hf_config",
    "get_preset",
    "list_presets",
    "load_preset_file",
    "replace_layers",
    "resolve_model",
    "to_hf_config",
]
