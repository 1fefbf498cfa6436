"""Every device buffer a prefill touches, sized from the preset, the chunk and the prompt length.

With prewarm (the default) all of them are allocated when the engine is built, so a forward never
allocates and a capture in global mode succeeds. Without prewarm each buffer is allocated on its
first use, as the original engine did: the first forward inside a capture then allocates, which
global capture mode rejects (docs/DESIGN.md, Facts) -- `--no-prewarm` shows that failure on purpose.
A lazy buffer is a fresh cudaMalloc, not a block from CuPy's pool: a pool can hand back a block
freed earlier (by weight generation, say) and hide the allocation the original engine made.
"""

from __future__ import annotations

import numpy as np

from impbench.engine.weights import expert_width


GDN_WORKSPACE = "gdn_"  # name prefix of the gated delta rule's workspace buffers (kernels/gated_delta.py)


def layer_slots(preset) -> list[int]:
    """Each layer's index among the layers that keep the same kind of state: the KV cache rows of
    full-attention layers, of sliding-window layers (their own caches: another head geometry in
    Gemma-4), and the conv and recurrent states of linear (Gated DeltaNet) layers."""
    seen: dict[str, int] = {}
    slots = []
    for kind in preset.layer_types:
        slots.append(seen.get(kind, 0))
        seen[kind] = slots[-1] + 1
    return slots


def cache_names(kind: str) -> tuple[str, str]:
    """The K and V cache buffers of a layer kind with softmax attention."""
    suffix = "" if kind == "full" else f"_{kind}"
    return f"k_cache{suffix}", f"v_cache{suffix}"


def flat_view(buffer, *shape):
    """The first prod(shape) elements of a flat buffer as a contiguous array of that shape (one buffer
    serves layer kinds of different head geometry)."""
    return buffer[: int(np.prod(shape))].reshape(shape)


def buffer_specs(preset, chunk_tokens: int, max_tokens: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every activation, cache and routing buffer."""
    p, t = preset, chunk_tokens
    hidden = p.hidden_size
    experts, top_k = p.num_experts, p.experts_per_token
    rows = t * top_k
    f16, i32, f32 = np.dtype(np.float16), np.dtype(np.int32), np.dtype(np.float32)
    attention_kinds = sorted(set(p.layer_types) - {"linear"})
    specs = {
        # prompt and chunk inputs
        "prompt_ids": ((max_tokens,), i32),
        "ids": ((t,), i32),
        "pos": ((1,), i32),
        # residual stream
        "resid": ((t, hidden), f16),
        "normed": ((t, hidden), f16),
        "normed_kp": ((t, hidden), f16),  # ffn_norm output in kperm order (wgp expert GEMMs)
        "attn_proj": ((t, hidden), f16),
        # routing
        "router_logits": ((t, experts), f16),
        "topk_ids": ((t, top_k), i32),
        "topk_weights": ((t, top_k), f32),
        "expert_offsets": ((experts + 1,), i32),
        "dense_offsets": ((t + 1, 2), i32),  # row m = [0, m]: NVFP4 dense projections
        "row_token": ((rows,), i32),
        "row_weight": ((rows,), f32),
        "token_rows": ((t, top_k), i32),
        "route_counts": ((-(-t // 16), experts), i32),  # topk_count -> permute_counted (kernels/routing.py)
        # experts
        "expert_act": ((rows, expert_width(p)), f16),
        "expert_out": ((rows, hidden), f16),
        # last token
        "last_normed": ((1, hidden), f16),
        "logits": ((1, p.vocab_size), f16),
    }
    if attention_kinds:
        # q, attention output and the fused projection: flat, viewed per layer kind (flat_view)
        dims = [p.attention_dims(kind) for kind in attention_kinds]
        specs.update({
            "qkv": ((t * max(p.qkv_width(kind) for kind in attention_kinds),), f16),  # q, k, v (, gate) heads
            "q": ((t * max(heads * dim for heads, _, dim in dims),), f16),
            "attn": ((t * max(heads * dim for heads, _, dim in dims),), f16),
        })  # fmt: skip
        for kind, (heads, kv_heads, dim) in zip(attention_kinds, dims):
            layers = p.layer_types.count(kind)
            for name in cache_names(kind):
                specs[name] = ((layers, max_tokens, kv_heads, dim), f16)
    linear_layers = p.layer_types.count("linear")
    if linear_layers:
        from impbench.kernels.gated_delta import workspace_specs

        hk, hv = p.linear_num_key_heads, p.linear_num_value_heads
        dk, dv, channels = p.linear_key_head_dim, p.linear_value_head_dim, p.linear_conv_dim
        specs.update({
            "conv_state": ((linear_layers, p.linear_conv_kernel - 1, channels), f16),  # the last raw conv inputs
            "gdn_state": ((linear_layers, hv, dk, dv), f32),  # the recurrent state S of every value head
            "lin_qkvz": ((t, channels + hv * dv), f16),  # in_proj_qkvz's output: the conv's input, then z
            "lin_a": ((t, hv), f16),
            "lin_b": ((t, hv), f16),
            "lin_q": ((t, hk, dk), f16),
            "lin_k": ((t, hk, dk), f16),
            "lin_v": ((t, hv, dv), f16),
            "lin_g": ((t, hv), f32),
            "lin_beta": ((t, hv), f32),
            "gdn_out": ((t, hv, dv), f16),
            "gated": ((t, hv * dv), f16),  # gated norm output, out_proj's input
        })  # fmt: skip
        specs.update({GDN_WORKSPACE + name: spec for name, spec in workspace_specs(t, hv, dk, dv).items()})
    if p.shared_expert_intermediate_size:
        s = p.shared_expert_intermediate_size
        specs.update({
            "shared_gate_up": ((t, 2 * s), f16),
            "shared_act": ((t, s), f16),
            "shared_out": ((t, hidden), f16),
            "shared_gate": ((t, 1), f16),
        })  # fmt: skip
    if p.architecture == "gemma4":
        f = p.dense_intermediate_size
        specs.update({
            "normed_mlp": ((t, hidden), f16),  # the dense MLP's input (pre-MLP norm)
            "normed_router": ((t, hidden), f16),  # the router's input (its prenorm and scales)
            "mlp_gate_up": ((t, 2 * f), f16),
            "mlp_act": ((t, f), f16),
            "mlp_out": ((t, hidden), f16),  # the dense MLP's output, then the feed-forward block's (post_ffn_norms)
        })  # fmt: skip
    return specs


class BufferAllocationError(RuntimeError):
    """A lazily allocated buffer could not be allocated (names the buffer and the CUDA error)."""

    def __init__(self, name: str, cause: Exception):
        super().__init__(f"allocating buffer {name!r}: {type(cause).__name__}: {cause}")
        self.buffer_name = name
        self.cause = cause


class Buffers:
    """Attribute access to named device buffers; allocated up front (prewarm) or on first use."""

    def __init__(self, specs: dict, prewarm: bool = True):
        self._specs = dict(specs)
        self._arrays: dict[str, object] = {}
        self.prewarm = prewarm
        if prewarm:
            for name in self._specs:
                self._allocate(name)

    def _allocate(self, name: str):
        import cupy

        shape, dtype = self._specs[name]
        try:
            if self.prewarm:
                array = cupy.empty(shape, dtype=dtype)
            else:
                nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
                memory = cupy.cuda.MemoryPointer(cupy.cuda.memory.Memory(nbytes), 0)  # cudaMalloc
                array = cupy.ndarray(shape, dtype=dtype, memptr=memory)
        except Exception as exc:  # e.g. cudaErrorStreamCaptureUnsupported inside a global capture
            raise BufferAllocationError(name, exc) from exc
        self._arrays[name] = array
        return array

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        array = self._arrays.get(name)
        if array is not None:
            return array
        if name not in self._specs:
            raise AttributeError(f"no buffer named {name!r}")
        return self._allocate(name)
