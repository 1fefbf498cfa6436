"""How far a benchmarked kernel's output is from its reference, so that a variant that computes garbage
can never look fast: ||ours - ref|| / ||ref|| in FP32 on the device (inf where ours is not finite)."""

from __future__ import annotations

import math


def rel_err(ours, ref) -> float:
    import cupy

    ours32, ref32 = ours.astype(cupy.float32), ref.astype(cupy.float32)
    num, den = float(cupy.linalg.norm(ours32 - ref32)), float(cupy.linalg.norm(ref32))
    if not math.isfinite(num):
        return float("inf")
    return num / den if den else num
