"""The prefill plan: FLOPs, bytes and floor time of every op (cost), and its printers (render)."""

from impbench.plan.cost import (ChunkRow, GemmShape, OpRow, Plan, dense_gemm_shapes, experts_touched, kv_cache_bytes,
                                op_floors_us, plan_prefill)
from impbench.plan.render import render_models, render_plan

__all__ = [
    "ChunkRow",
    "GemmShape",
    "OpRow",
    "Plan",
    "dense_gemm_shapes",
    "experts_touched",
    "kv_cache_bytes",
    "op_floors_us",
    "plan_prefill",
    "render_models",
    "render_plan",
]
