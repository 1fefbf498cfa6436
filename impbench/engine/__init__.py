"""The synthetic MoE prefill engine (weights, buffers, launch sequence, chunked prefill)."""

from impbench.engine.core import Chunk, Engine, PrefillStats, plan_chunks  # noqa: F401
