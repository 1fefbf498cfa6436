"""The model preset: one frozen dataclass of a model's prefill-relevant geometry, with every derived number
(projection widths, parameter counts, weight bytes) a property or function of it.

Presets are loaded from TOML (presets.catalog) or a Hugging Face config.json (presets.hf).

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

from dataclasses import asdict, dataclass
from typing import Any

from impbench.errors import InputError
from impbench.prefill import check_chunk_tokens

ARCHITECTURES = ("qwen3_moe", "qwen3_5_moe", "gemma4")
LAYER_TYPES = ("full", "sliding", "linear")
# Tensor groups a preset can mark as NVFP4; every other weight is 16-bit.
TENSOR_GROUPS = ("experts", "shared_expert", "dense_mlp", "attention", "linear_attention", "router", "lm_head")

FP16_BYTES = 2.0
# NVFP4 (ModelOpt layout): 4-bit codes (0.5 B) + one e4m3 scale per 16 values (1/16 B); the one
# fp32 global scale per tensor is negligible and left out of per-parameter sizes.
NVFP4_BYTES_PER_PARAM = 0.5 + 1.0 / 16.0



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
    full_partial_rotary_factor: float = 1.0  # share of full layers' frequencies that rotate (Gemma-4 "proportional": 0.25)
    attention_scale: float = 0.0  # softmax scale; 0 = 1 / sqrt(head_dim) (Gemma-4: 1.0)
    activation: str = "silu"  # of the experts' and the dense MLP's gate: silu or gelu_tanh
    # Gated DeltaNet linear attention (qwen3_5_moe); 0 where the model has none.
    linear_num_key_heads: int = 0
    linear_num_value_heads: int = 0
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_conv_kernel: int = 0
    # Dense MLP next to the routed MoE in every layer (Gemma-4's `intermediate_size`); 0 = none.
    dense_intermediate_size: int = 0
    shared_expert_gate: bool = False  # the shared expert's output scaled by sigmoid(Linear(H, 1)) (Qwen3.5/3.6)
    norm_weight_offset: float = 0.0  # RMSNorm scales by (offset + w): 1.0 for Qwen3.5/3.6, whose norm weights sit near 0
    final_logit_softcapping: float | None = None
    published_params_note: str = ""  # where published figures come from, or why there are none
    unverified: tuple[str, ...] = ()  # numbers not confirmed from the published config (README lists them)

    def __post_init__(self) -> None:
        _validate(self)

    # ---- attention geometry -------------------------------------------------------------------
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

    def softmax_scale(self, layer_type: str) -> float:
        return self.attention_scale or self.attention_dims(layer_type)[2] ** -0.5

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
            if self.shared_expert_gate:
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
    for kv_heads, what in ((p.num_kv_heads, "num_kv_heads"), (p.full_kv_heads, "full_kv_heads")):
        if kv_heads and (kv_heads > p.num_attention_heads or p.num_attention_heads % kv_heads):
            raise InputError(f"{where}: {what} {kv_heads} must divide num_attention_heads {p.num_attention_heads} "
                             "(each key/value head serves a whole group of query heads)")  # fmt: skip
    if p.hidden_size % 8 or p.head_dim % 2:
        raise InputError(f"{where}: hidden_size must be a multiple of 8 and head_dim even, got {p.hidden_size} "
                         f"and {p.head_dim}")  # fmt: skip
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
    try:
        check_chunk_tokens(p.chunk_size, "chunk_size")  # the one chunk rule (impbench.prefill)
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    if p.activation not in ("silu", "gelu_tanh"):
        raise InputError(f"{where}: activation must be silu or gelu_tanh, got {p.activation!r}")
    if p.shared_expert_intermediate_size < 0 or p.dense_intermediate_size < 0:
        raise InputError(f"{where}: intermediate sizes must be >= 0")


