"""The prefill plan of a model: every op, its FLOPs and bytes, and its floor time on a GPU.

No GPU is needed. For each op of the prefill (dense GEMMs, grouped expert GEMMs, attention, linear
attention, small element-wise ops) and each prefill chunk, the plan counts

- FLOPs: tensor FLOPs, 2*M*N*K for a GEMM; attention counts QK^T and PV (4 * heads * head_dim per
  query-key pair); element-wise ops count a few FLOPs per element and never matter;
- bytes that must move: every input read once, every output written once, weights read once per
  call (NVFP4 weights at 0.5625 B/param with their e4m3 block scales, FP16 at 2 B);
- the floor: max(FLOPs / compute ceiling, bytes / memory ceiling) per call, summed over calls.

Grouped expert GEMMs read only the experts a chunk routes to: with M tokens and top-k of E experts
under uniform routing, E * (1 - (1 - k/E)^M) distinct experts in expectation. Real routing is skewed,
which touches fewer experts and moves fewer bytes; the uniform figure is the usual planning number.
Gated DeltaNet's core is counted as the chunked (WY) form a GPU kernel computes (gdn_chunk_flops:
every product of impbench.reference.gated_delta's chunked algorithm, in chunks of 64 tokens, about
1.6x the recurrence's 7 * dk * dv per token and value head at dk = dv = 128); its bytes are q, k, v,
decay and write strength read, the output written, and the fp32 state read and written once per prefill
chunk: a kernel that carries the state across its WY chunks on chip (ours, kernels_cu/gated_delta.cu)
needs no more. flash-linear-attention's kernels also store the state of every WY chunk between their
passes (2 x 2 MB per 64 tokens and layer at Qwen3.6's 32 x 128 x 128): that is their cost, not the floor's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Callable

from impbench.gpus import GpuCeilings, get_gpu
from impbench.prefill import PrefillSpec, chunk_spans
from impbench.presets import ModelPreset

FP16 = 2  # bytes per activation element
FP32 = 4


@dataclass(frozen=True)
class GemmShape:
    """One dense GEMM of the model: out[M, N] = in[M, K] @ W[N, K]^T, M = tokens of the call.

    `layers` counts how many layers run it per forward (the lm_head runs once, on the last token:
    `last_token_only`). `layer_type` names where it runs ("full", "sliding", "linear", joined with
    "+" when several types share the shape; "model" for the lm_head).
    """

    op: str
    n: int
    k: int
    layer_type: str = "model"
    layers: int = 1
    nvfp4: bool = False
    last_token_only: bool = False


@dataclass(frozen=True)
class _Op:
    """One op of one layer type; `cost(start, length, last)` -> (flops, bytes moved, bytes written)."""

    op: str
    kind: str  # gemm | grouped_gemm | attention | linear_attention | small
    layer_type: str
    cost: Callable[[int, int, bool], tuple[float, float, float]]
    n: int = 0
    k: int = 0
    last_only: bool = False  # runs in the last chunk only (final norm, lm_head)
    group: str = ""  # weight tensor group of a GEMM (presets.TENSOR_GROUPS)


@dataclass
class OpRow:
    op: str
    layer_type: str
    kind: str
    calls: int
    tokens: str  # M per call: chunk lengths, or 1 for last-token ops
    n: int
    k: int
    flops: float
    bytes_moved: float
    compute_us: float
    memory_us: float
    floor_us: float
    bound: str


@dataclass
class ChunkRow:
    chunk: int
    start: int
    tokens: int
    last: bool
    flops: float
    bytes_moved: float
    compute_us: float
    memory_us: float
    floor_us: float


@dataclass
class Plan:
    model: str
    architecture: str
    gpu: GpuCeilings
    prompt_tokens: int
    chunk_size: int  # as used: 0 = one chunk
    layers: int
    attention_layout: str
    nvfp4_tensors: tuple[str, ...]
    total_params: int
    active_params: int
    published_total_params: float | None
    published_active_params: float | None
    weight_bytes: dict[str, float]
    kv_cache_bytes: float
    activation_bytes: float
    ops: list[OpRow] = field(default_factory=list)
    chunks: list[ChunkRow] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.chunks)

    @property
    def bytes_moved(self) -> float:
        return sum(c.bytes_moved for c in self.chunks)

    @property
    def floor_us(self) -> float:
        return sum(c.floor_us for c in self.chunks)

    @property
    def floor_tok_s(self) -> float:
        return self.prompt_tokens / (self.floor_us * 1e-6) if self.floor_us else float("inf")

    @property
    def weight_total_bytes(self) -> float:
        return sum(self.weight_bytes.values())

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "architecture": self.architecture,
            "gpu": asdict(self.gpu),
            "prompt_tokens": self.prompt_tokens,
            "chunk_size": self.chunk_size,
            "layers": self.layers,
            "attention_layout": self.attention_layout,
            "nvfp4_tensors": list(self.nvfp4_tensors),
            "params": {
                "total": self.total_params,
                "active": self.active_params,
                "published_total": self.published_total_params,
                "published_active": self.published_active_params,
            },
            "memory_bytes": {
                "weights": self.weight_total_bytes,
                "weights_by_group": self.weight_bytes,
                "kv_cache": self.kv_cache_bytes,
                "activations": self.activation_bytes,
            },
            "totals": {
                "flops": self.flops,
                "bytes_moved": self.bytes_moved,
                "floor_us": self.floor_us,
                "floor_tok_s": self.floor_tok_s,
            },
            "ops": [asdict(r) for r in self.ops],
            "chunks": [asdict(c) for c in self.chunks],
        }


# ---- the ops of one layer ---------------------------------------------------------------------------

def _gemm(preset: ModelPreset, op: str, layer_type: str, n: int, k: int, group: str, last_only: bool = False) -> _Op:
    weight_bpp = preset.weight_bytes_per_param(group)

    def cost(start: int, length: int, last: bool) -> tuple[float, float, float]:
        m = 1 if last_only else length
        written = m * n * FP16
        return 2.0 * m * n * k, m * k * FP16 + n * k * weight_bpp + written, written

    return _Op(op, "gemm", layer_type, cost, n=n, k=k, last_only=last_only, group=group)


def experts_touched(preset: ModelPreset, tokens: int) -> float:
    """Expected distinct experts `tokens` tokens route to under uniform top-k routing."""
    e, k = preset.num_experts, preset.experts_per_token
    return e * (1.0 - (1.0 - k / e) ** tokens)


def _grouped(op: str, layer_type: str, preset: ModelPreset, n: int, k: int, out_width: int) -> _Op:
    """A grouped expert GEMM: rows = tokens * top-k, each against its expert's [n, k] weight."""
    bpp = preset.weight_bytes_per_param("experts")

    def cost(start: int, length: int, last: bool) -> tuple[float, float, float]:
        rows = length * preset.experts_per_token
        written = rows * out_width * FP16
        weights = experts_touched(preset, length) * n * k * bpp
        return 2.0 * rows * n * k, rows * k * FP16 + weights + written, written

    return _Op(op, "grouped_gemm", layer_type, cost, n=n, k=k)


def _small(op: str, layer_type: str, read_per_token: float, write_per_token: float, flops_per_token: float,
           fixed_bytes: float = 0.0, last_only: bool = False) -> _Op:
    def cost(start: int, length: int, last: bool) -> tuple[float, float, float]:
        m = 1 if last_only else length
        written = m * write_per_token
        return m * flops_per_token, m * read_per_token + written + fixed_bytes, written

    return _Op(op, "small", layer_type, cost, last_only=last_only)


def _attention(preset: ModelPreset, layer_type: str) -> _Op:
    heads, kv_heads, dim = preset.attention_dims(layer_type)
    window = preset.sliding_window if layer_type == "sliding" else None

    def cost(start: int, length: int, last: bool) -> tuple[float, float, float]:
        # query at absolute position p sees p + 1 keys, or at most `window` on sliding layers
        pairs = visible_pairs(start, length, window)
        keys = start + length if window is None else min(start + length, window + length - 1)
        written = length * heads * dim * FP16
        moved = length * heads * dim * FP16 + keys * kv_heads * dim * 2 * FP16 + written
        return 4.0 * heads * dim * pairs, moved, written

    return _Op("attention", "attention", layer_type, cost)


def visible_pairs(start: int, length: int, window: int | None) -> float:
    """Sum over queries at positions start..start+length-1 of the keys each sees: min(p + 1, window)."""
    first, last = start + 1, start + length
    if window is None or last <= window:
        return (first + last) * length / 2
    if first > window:
        return float(window) * length
    return (first + window) * (window - first + 1) / 2 + float(window) * (last - window)


GDN_CHUNK = 64  # tokens per WY chunk of the gated delta rule (flash-linear-attention's chunk_gated_delta_rule)


def gdn_chunk_flops(tokens: int, dk: int, dv: int, chunk: int = GDN_CHUNK) -> float:
    """FLOPs of the chunked gated delta rule for one value head over `tokens` tokens: per WY chunk of C
    tokens, K K^T (2 C^2 dk), the triangular solve (2 C^3 / 3), U and W (2 C^2 (dv + dk)), W S0 and
    Q S0 (2 * 2 C dk dv), Q K^T (2 C^2 dk), the intra-chunk output (2 C^2 dv) and the state update
    (2 C dk dv)."""
    total = 0.0
    for start in range(0, tokens, chunk):
        c = min(chunk, tokens - start)
        total += 2 * c * c * (2 * dk + 2 * dv) + 2 * c**3 / 3 + 6 * c * dk * dv
    return total


def _gdn_core(preset: ModelPreset) -> _Op:
    hv, dk, dv = preset.linear_num_value_heads, preset.linear_key_head_dim, preset.linear_value_head_dim
    state_bytes = hv * dk * dv * FP32

    def cost(start: int, length: int, last: bool) -> tuple[float, float, float]:
        written = length * preset.linear_value_dim * FP16
        read = length * (preset.linear_conv_dim * FP16 + 2 * hv * FP32)  # q, k, v; decay g and beta in fp32
        return hv * gdn_chunk_flops(length, dk, dv), read + written + 2 * state_bytes, written  # state in and out

    return _Op("gated_delta_rule", "linear_attention", "linear", cost)


def _layer_ops(preset: ModelPreset, layer_type: str) -> list[_Op]:
    """Every op of one layer of `layer_type`, in forward order (fused as a lean engine would run them)."""
    p, h, lt = preset, preset.hidden_size, layer_type
    ops: list[_Op] = [_small("attn_norm", lt, h * FP16, h * FP16, 4 * h, fixed_bytes=h * FP16)]
    if lt == "linear":
        conv, vd, hv = p.linear_conv_dim, p.linear_value_dim, p.linear_num_value_heads
        la = "linear_attention"
        ops += [
            _gemm(p, "in_proj_qkvz", lt, conv + vd, h, la),  # in_proj_qkv and in_proj_z, one merged GEMM
            _gemm(p, "in_proj_b", lt, hv, h, la),
            _gemm(p, "in_proj_a", lt, hv, h, la),
            # fixed: the conv weights, and the carried state (the last K - 1 raw rows) read and written
            _small("conv1d", lt, conv * FP16, conv * FP16, 2 * conv * p.linear_conv_kernel + 4 * conv,
                   fixed_bytes=(3 * p.linear_conv_kernel - 2) * conv * FP16),
            _gdn_core(p),
            _small("gated_norm", lt, 2 * vd * FP16, vd * FP16, 8 * vd),
            _gemm(p, "out_proj", lt, h, vd, la),
        ]
    else:
        heads, _, dim = p.attention_dims(lt)
        width = p.qkv_width(lt)
        q = heads * dim
        ops += [
            _gemm(p, "qkv_proj", lt, width, h, "attention"),
            _small("qkv_post", lt, width * FP16, width * FP16, 6 * width),  # q/k norm, RoPE, K/V to cache
            _attention(p, lt),
        ]
        if p.attn_output_gate:
            ops.append(_small("attn_gate", lt, 2 * q * FP16, q * FP16, 5 * q))
        ops.append(_gemm(p, "o_proj", lt, h, q, "attention"))
    if p.architecture == "gemma4":
        # post-attention norm + residual add, then the pre-feedforward norms of both branches
        ops.append(_small("ffn_norm", lt, 2 * h * FP16, 3 * h * FP16, 12 * h, fixed_bytes=3 * h * FP16))
        i = p.dense_intermediate_size
        ops += [
            _gemm(p, "mlp_gate_up", lt, 2 * i, h, "dense_mlp"),
            _small("mlp_act", lt, 2 * i * FP16, i * FP16, 10 * i),
            _gemm(p, "mlp_down", lt, h, i, "dense_mlp"),
        ]
    else:
        ops.append(_small("ffn_norm", lt, 2 * h * FP16, 2 * h * FP16, 5 * h, fixed_bytes=h * FP16))
    e, top = p.num_experts, p.experts_per_token
    inter = p.moe_intermediate_size
    ops += [
        _gemm(p, "router", lt, e, h, "router"),
        _small("topk", lt, e * FP16, top * (FP32 + 4), 5 * e),
        _small("permute", lt, top * (FP32 + 4), 3 * top * 4, 0, fixed_bytes=(e + 1) * 4),
        _grouped("moe_gate_up", lt, p, 2 * inter, h, inter),  # SiLU/GELU(gate) * up fused: writes rows x I
        _grouped("moe_down", lt, p, h, inter, h),
        _small("combine", lt, (top + 1) * h * FP16, h * FP16, 2 * top * h),
    ]
    if p.shared_expert_intermediate_size:
        s = p.shared_expert_intermediate_size
        ops += [
            _gemm(p, "shared_gate_up", lt, 2 * s, h, "shared_expert"),
            _small("shared_act", lt, 2 * s * FP16, s * FP16, 10 * s),
            _gemm(p, "shared_down", lt, h, s, "shared_expert"),
        ]
        if p.shared_expert_gate:
            ops += [
                _gemm(p, "shared_expert_gate", lt, 1, h, "router"),
                _small("shared_combine", lt, 2 * h * FP16, h * FP16, 4 * h),
            ]
    if p.architecture == "gemma4":
        # post-norms of both branches, their sum, the block's post norm and the residual add
        ops.append(_small("post_ffn_norms", lt, 3 * h * FP16, h * FP16, 20 * h, fixed_bytes=3 * h * FP16))
    return ops


def op_cost(preset: ModelPreset, op: str, layer_type: str, start: int, length: int) -> tuple[float, float]:
    """(FLOPs, bytes moved) the plan counts for one call of `op` in a `layer_type` layer, on a chunk of
    `length` tokens after `start` (a kernel benchmark's floor is the GPU's floor of these)."""
    for candidate in _layer_ops(preset, layer_type):
        if candidate.op == op:
            flops, moved, _ = candidate.cost(start, length, True)
            return flops, moved
    raise ValueError(f"the plan has no op {op!r} in {layer_type} layers of {preset.name}")


def _model_tail(preset: ModelPreset) -> list[_Op]:
    h, v = preset.hidden_size, preset.vocab_size
    ops = [
        _small("final_norm", "model", h * FP16, h * FP16, 4 * h, fixed_bytes=h * FP16, last_only=True),
        _gemm(preset, "lm_head", "model", v, h, "lm_head", last_only=True),
    ]
    if preset.final_logit_softcapping:  # cap * tanh(logits / cap), in place
        ops.append(_small("softcap", "model", v * FP16, v * FP16, 4 * v, last_only=True))
    return ops


def _model_head(preset: ModelPreset) -> list[_Op]:
    h = preset.hidden_size
    return [_small("embed", "model", h * FP16, h * FP16, 0)]


def dense_gemm_shapes(preset: ModelPreset) -> list[GemmShape]:
    """Every dense GEMM of the model, one entry per distinct (op, n, k), in forward order.

    Covers attention / linear-attention projections (in_proj_b and in_proj_a have N = value heads),
    router, shared expert and its gate, Gemma's dense MLP and the lm_head. Grouped expert GEMMs are not
    dense GEMMs and are left out. M is the tokens of the call (the chunk, or 1 for the lm_head).
    """
    counts = preset.layer_counts()
    found: dict[tuple[str, int, int], GemmShape] = {}
    for layer_type in dict.fromkeys(preset.layer_types):
        for op in _layer_ops(preset, layer_type):
            if op.kind != "gemm":
                continue
            key = (op.op, op.n, op.k)
            if key in found:
                prev = found[key]
                found[key] = replace(prev, layer_type=f"{prev.layer_type}+{layer_type}",
                                     layers=prev.layers + counts[layer_type])
            else:
                found[key] = GemmShape(op.op, op.n, op.k, layer_type, counts[layer_type],
                                       op.group in preset.nvfp4_tensors)
    for op in _model_tail(preset):
        if op.kind == "gemm":
            found[(op.op, op.n, op.k)] = GemmShape(op.op, op.n, op.k, "model", 1, op.group in preset.nvfp4_tensors,
                                                   last_token_only=True)
    return list(found.values())


# ---- memory -------------------------------------------------------------------------------------

def kv_cache_bytes(preset: ModelPreset, prompt_tokens: int) -> float:
    """Cache left after prefilling `prompt_tokens`: K and V of full layers (all tokens), of sliding
    layers (the last `sliding_window` tokens), and the recurrent state + conv tail of linear layers."""
    total = 0.0
    for layer_type, count in preset.layer_counts().items():
        if layer_type == "linear":
            state = preset.linear_num_value_heads * preset.linear_key_head_dim * preset.linear_value_head_dim * FP32
            conv_tail = preset.linear_conv_dim * (preset.linear_conv_kernel - 1) * FP16
            total += count * (state + conv_tail)
            continue
        _, kv_heads, dim = preset.attention_dims(layer_type)
        tokens = prompt_tokens if layer_type == "full" else min(prompt_tokens, preset.sliding_window)
        total += count * tokens * kv_heads * dim * 2 * FP16
    return total


# ---- the plan -------------------------------------------------------------------------------------

def _fmt_tokens(lengths: list[int]) -> str:
    if not lengths:
        return "0"
    groups: list[list[int]] = []
    for value in lengths:
        if groups and groups[-1][0] == value:
            groups[-1][1] += 1
        else:
            groups.append([value, 1])
    return ", ".join(f"{v} (x{c})" if c > 1 else str(v) for v, c in groups)


def plan_prefill(preset: ModelPreset, prefill: PrefillSpec, gpu: str | GpuCeilings = "h100") -> Plan:
    """FLOPs, bytes and floor time of every op of a prefill, per chunk and in total."""
    ceilings = gpu if isinstance(gpu, GpuCeilings) else get_gpu(gpu)
    prompt_tokens, chunk_used = prefill.prompt_tokens, prefill.chunk_for(preset)
    spans = chunk_spans(prompt_tokens, chunk_used)
    counts = preset.layer_counts()

    per_type = {t: _layer_ops(preset, t) for t in counts}
    entries: list[tuple[_Op, int]] = [(op, 1) for op in _model_head(preset)]
    for layer_type in dict.fromkeys(preset.layer_types):
        entries += [(op, counts[layer_type]) for op in per_type[layer_type]]
    entries += [(op, 1) for op in _model_tail(preset)]

    rows: list[OpRow] = []
    chunk_totals = [[0.0, 0.0, 0.0, 0.0, 0.0] for _ in spans]  # flops, bytes, compute, memory, floor (s)
    for op, layers in entries:
        flops = moved = compute = memory = floor = 0.0
        calls, lengths = 0, []
        for span in spans:
            if op.last_only and not span.last:
                continue
            f, b, _ = op.cost(span.start, span.length, span.last)
            c, m = f / ceilings.fp16_flops_per_s, b / ceilings.mem_bytes_per_s
            flops += layers * f
            moved += layers * b
            compute += layers * c
            memory += layers * m
            floor += layers * max(c, m)
            calls += layers
            lengths.append(1 if op.last_only else span.length)
            totals = chunk_totals[span.index]
            for i, value in enumerate((f, b, c, m, max(c, m))):
                totals[i] += layers * value
        rows.append(OpRow(
            op=op.op, layer_type=op.layer_type, kind=op.kind, calls=calls, tokens=_fmt_tokens(lengths),
            n=op.n, k=op.k, flops=flops, bytes_moved=moved, compute_us=compute * 1e6, memory_us=memory * 1e6,
            floor_us=floor * 1e6, bound="compute" if compute >= memory else "memory",
        ))
    chunks = [
        ChunkRow(chunk=s.index, start=s.start, tokens=s.length, last=s.last, flops=t[0], bytes_moved=t[1],
                 compute_us=t[2] * 1e6, memory_us=t[3] * 1e6, floor_us=t[4] * 1e6)
        for s, t in zip(spans, chunk_totals)
    ]
    return Plan(
        model=preset.name,
        architecture=preset.architecture,
        gpu=ceilings,
        prompt_tokens=prompt_tokens,
        chunk_size=chunk_used,
        layers=preset.num_layers,
        attention_layout=preset.attention_layout,
        nvfp4_tensors=preset.nvfp4_tensors,
        total_params=preset.total_params,
        active_params=preset.active_params,
        published_total_params=preset.published_total_params,
        published_active_params=preset.published_active_params,
        weight_bytes=preset.weight_bytes(),
        kv_cache_bytes=kv_cache_bytes(preset, prompt_tokens),
        activation_bytes=_activation_bytes(preset, max(s.length for s in spans), per_type),
        ops=rows,
        chunks=chunks,
    )


def _activation_bytes(preset: ModelPreset, chunk_tokens: int, per_type: dict[str, list[_Op]]) -> float:
    """Working set of one chunk: the outputs of every op of the widest layer (no buffer reuse), the
    residual stream, and the last token's logits. Layers reuse these buffers, so this is per model."""
    widest = 0.0
    for ops in per_type.values():
        written = sum(op.cost(0, chunk_tokens, False)[2] for op in ops)
        widest = max(widest, written)
    return widest + chunk_tokens * preset.hidden_size * FP16 + preset.vocab_size * FP16


# ---- floors per engine op --------------------------------------------------------------------------

def op_floors_us(plan: Plan, calls: dict[str, int] | None = None) -> dict[str, float]:
    """Plan floor µs per op name, for the profile of an engine whose launches may fuse plan ops.

    An engine op named "a+b" (plan ops joined with "+") runs a and b in one launch: its floor is the
    sum of theirs. With `calls` (engine op -> launches in the prefill), the result has the engine's
    op names, each part's floor scaled from the plan's call count to the engine's, so an op fused in
    some layers and launched alone in others (attn_norm: alone after the embedding, fused into the
    other layers' combine) gets the floor of the calls it made; ops the plan does not know are left
    out. Without `calls`: the plan's own ops and floors.
    """
    per_call: dict[str, float] = {}
    plan_calls: dict[str, int] = {}
    totals: dict[str, float] = {}
    for row in plan.ops:
        totals[row.op] = totals.get(row.op, 0.0) + row.floor_us
        plan_calls[row.op] = plan_calls.get(row.op, 0) + row.calls
    for op, total in totals.items():
        per_call[op] = total / plan_calls[op] if plan_calls[op] else 0.0
    if calls is None:
        return totals
    floors: dict[str, float] = {}
    for name, count in calls.items():
        parts = name.split("+")
        if all(part in totals for part in parts):
            floors[name] = sum(per_call[part] for part in parts) * count
    return floors
