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


def buffer_specs(preset, chunk_tokens: int, max_tokens: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Name -> (shape, dtype) of every activation, cache and routing buffer."""
    hidden, dim = preset.hidden_size, preset.head_dim
    heads, kv_heads = preset.num_attention_heads, preset.num_kv_heads
    experts, top_k = preset.num_experts, preset.experts_per_token
    rows = chunk_tokens * top_k
    f16, i32, f32 = np.dtype(np.float16), np.dtype(np.int32), np.dtype(np.float32)
    return {
        # prompt and chunk inputs
        "prompt_ids": ((max_tokens,), i32),
        "ids": ((chunk_tokens,), i32),
        "pos": ((1,), i32),
        # attention block
        "resid": ((chunk_tokens, hidden), f16),
        "normed": ((chunk_tokens, hidden), f16),
        "normed_kp": ((chunk_tokens, hidden), f16),  # ffn_norm output in kperm order (wgp expert GEMMs)
        "qkv": ((chunk_tokens, (heads + 2 * kv_heads) * dim), f16),
        "q": ((chunk_tokens, heads, dim), f16),
        "attn": ((chunk_tokens, heads, dim), f16),
        "attn_proj": ((chunk_tokens, hidden), f16),
        "k_cache": ((preset.num_layers, max_tokens, kv_heads, dim), f16),
        "v_cache": ((preset.num_layers, max_tokens, kv_heads, dim), f16),
        # routing
        "router_logits": ((chunk_tokens, experts), f16),
        "topk_ids": ((chunk_tokens, top_k), i32),
        "topk_weights": ((chunk_tokens, top_k), f32),
        "expert_offsets": ((experts + 1,), i32),
        "dense_offsets": ((chunk_tokens + 1, 2), i32),  # row m = [0, m]: NVFP4 dense projections
        "row_token": ((rows,), i32),
        "row_weight": ((rows,), f32),
        "token_rows": ((chunk_tokens, top_k), i32),
        "route_counts": ((-(-chunk_tokens // 16), experts), i32),  # topk_count -> permute_counted (kernels/routing.py)
        # experts
        "expert_act": ((rows, preset.moe_intermediate_size), f16),
        "expert_out": ((rows, hidden), f16),
        # last token
        "last_normed": ((1, hidden), f16),
        "logits": ((1, preset.vocab_size), f16),
    }


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
