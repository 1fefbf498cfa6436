"""The synthetic MoE prefill engine (weights, buffers, launch sequence, chunked prefill)."""

from impbench.engine.core import Engine, PrefillStats  # noqa: F401
