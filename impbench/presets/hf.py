"""Hugging Face config.json readers (qwen3_moe, qwen3_5_moe, gemma4 MoE) into ModelPreset, and the
inverse exporter used by tests and `--model-config` round trips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from impbench.errors import InputError
from impbench.files import read_json
from impbench.presets.model import ModelPreset

SUPPORTED_HF_TYPES = "qwen3_moe, qwen3_5_moe (Qwen3.5/3.6 hybrid MoE), gemma4 (MoE, enable_moe_block=true)"


def from_hf_config(path: str | Path, name: str | None = None) -> ModelPreset:
    """A preset from a Hugging Face config.json of a supported MoE architecture.

    Supported model_type values: qwen3_moe; qwen3_5_moe / qwen3_5_moe_text (Qwen3.5 and Qwen3.6
    hybrid MoE); gemma4 / gemma4_text with enable_moe_block. Anything else, unreadable or malformed
    JSON, or a missing required key raises InputError naming what is supported or missing. `name`
    (the --name option) names the model; default: config_name.
    """
    path = Path(path)
    raw = read_json(path, "config.json", "a Hugging Face config.json")
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
    fields_ = builders[model_type](reader)
    if name is not None and not str(name).strip():
        raise InputError("--name must not be empty")
    fields_.update(
        name=str(name).strip() if name is not None else config_name(raw, path, fields_),
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


_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def config_name(raw: dict, path: Path, fields_: dict) -> str:
    """A config's model name: its _name_or_path; else its folder (plus the file's stem where that is not
    "config", so two configs in one folder differ), unless the folder is a Hugging Face cache snapshot
    (a commit hash), where the architecture and geometry name it."""
    given = str(raw.get("_name_or_path") or "").strip().rstrip("/")
    if given:
        return given
    folder = path.resolve().parent.name
    if folder and not _HASH.fullmatch(folder):
        return folder if path.stem == "config" else f"{folder}/{path.stem}"
    return (f"{fields_['architecture']}-L{fields_['num_layers']}-H{fields_['hidden_size']}-"
            f"E{fields_['num_experts']}x{fields_['experts_per_token']}")


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
        shared_expert_gate=True,  # Qwen3_5MoeSparseMoeBlock: shared_expert_gate = Linear(H, 1)
        norm_weight_offset=1.0,  # Qwen3_5MoeRMSNorm: x * (1 + weight); the gated norm is plain
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
    full_theta, full_factor = r.rope("full_attention", default=1_000_000.0)
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
        full_partial_rotary_factor=full_factor,
        attention_scale=1.0,  # Gemma4TextAttention: scaling 1.0 (q and k are RMS-normed per head)
        activation="gelu_tanh",  # hidden_activation gelu_pytorch_tanh
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
                    "full_attention": {"rope_type": "proportional", "partial_rotary_factor": p.full_partial_rotary_factor,
                                       "rope_theta": p.full_rope_theta or p.rope_theta},
                })
    return {"model_type": "gemma4", "architectures": ["Gemma4ForConditionalGeneration"], "_name_or_path": p.name,
            "text_config": text}


