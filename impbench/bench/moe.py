"""`impbench moe`: the grouped NVFP4 expert GEMMs of one prefill chunk, timed against their floors.

One chunk of `pp` tokens is routed on the host (uniform: top-k distinct experts per token, each
equally likely; skewed: a few hot experts 25x as likely as the others, so each hot expert gets most
tokens), and its permutation (expert_offsets, row_token, row_weight) uploaded. Weights are synthetic
NVFP4 (impbench.nvfp4.generate_experts_gpu) with the preset's expert shapes; one layer, whose weights
(hundreds of MB) stream from DRAM in every launch, so one input set suffices.

Per GEMM (gate_up with its act(gate)*up epilogue, the preset's activation; down with the router-weight scale): device time from the
shared timing loop (bench.timing), every variant interleaved; the floor max(bytes / peak HBM
bandwidth, FLOPs / peak FP16 rate) of the GPU (impbench.gpus), bytes = NVFP4 weights of every expert
with rows + activations read + outputs written; the share of the device-to-device copy bandwidth
measured in the same run; and as a reference the same GEMMs with FP16-dequantized weights through
cuBLAS, one expert at a time (GEMMs only: no gather, activation or scaling), which also checks our output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from impbench.bench.accuracy import rel_err
from impbench.bench.report import BenchReport, Column, below_floor_lines, fixed, sci
from impbench.bench.timing import SPIN_US, copy_gbs, cublas_tflops, host_us, median_us, time_interleaved
from impbench.errors import InputError
from impbench.reference.blocks import ACTIVATIONS

ROUTINGS = ("uniform", "skewed")
HOT_FACTOR = 25.0  # skewed routing: a hot expert is this many times as likely as the others


@dataclass(frozen=True)
class MoeShapes:
    model: str
    experts: int
    top_k: int
    hidden: int
    inter: int
    activation: str = "silu"  # of the gate in gate_up's epilogue (Gemma-4: gelu_tanh)

    @classmethod
    def from_preset(cls, preset) -> MoeShapes:
        return cls(preset.name, preset.num_experts, preset.experts_per_token, preset.hidden_size, preset.moe_intermediate_size,
                   preset.activation)  # fmt: skip

    def gemms(self) -> dict[str, tuple[int, int]]:
        """op -> (N weight rows per expert, K)."""
        return {"gate_up": (2 * self.inter, self.hidden), "down": (self.hidden, self.inter)}



def route(tokens: int, experts: int, top_k: int, routing: str, seed: int = 0):
    """Host routing of one chunk -> (expert_offsets int32 [E+1], row_token int32 [R], row_weight fp32 [R]).

    Rows are grouped by expert, in (token, slot) order inside an expert, as the routing kernels do.
    """
    if routing not in ROUTINGS:
        raise InputError(f"unknown routing {routing!r}; accepted: {', '.join(ROUTINGS)}")
    if not 1 <= top_k <= experts:
        raise InputError(f"top-k {top_k} must be in [1, {experts}]")
    rng = np.random.default_rng(seed)
    logp = np.zeros(experts)
    if routing == "skewed":
        hot = rng.choice(experts, size=max(1, experts // 32), replace=False)
        logp[hot] = math.log(HOT_FACTOR)
    # top-k distinct experts per token, drawn with probabilities ~ exp(logp): Gumbel top-k
    scores = logp[None, :] + rng.gumbel(size=(tokens, experts))
    ids = np.argsort(-scores, axis=1)[:, :top_k]
    logits = rng.standard_normal((tokens, top_k))
    weights = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(flat, minlength=experts))]).astype(np.int32)
    row_token = (order // top_k).astype(np.int32)
    row_weight = weights.reshape(-1)[order].astype(np.float32)
    return offsets, row_token, row_weight


def dequantize_fp16_gpu(codes, scales, scale2, experts_per_pass: int = 8):
    """NVFP4 experts [E, N, K/2] -> FP16 [E, N, K] on the GPU (reference weights for cuBLAS)."""
    import cupy

    from impbench import nvfp4

    e2m1 = cupy.asarray(nvfp4.E2M1_VALUES)
    e4m3 = cupy.asarray(np.nan_to_num(nvfp4.E4M3_VALUES))
    experts, n, half_k = codes.shape
    k = 2 * half_k
    out = cupy.empty((experts, n, k), cupy.float16)
    for e0 in range(0, experts, experts_per_pass):
        c = codes[e0 : e0 + experts_per_pass]
        values = cupy.stack([e2m1[c & 0xF], e2m1[c >> 4]], axis=-1).reshape(c.shape[0], n, k // 16, 16)
        values *= e4m3[scales[e0 : e0 + experts_per_pass]][..., None]
        values *= scale2[e0 : e0 + experts_per_pass, None, None, None]
        out[e0 : e0 + experts_per_pass] = values.reshape(c.shape[0], n, k).astype(cupy.float16)
    return out


class Layer:
    """One MoE layer's NVFP4 weights, their FP16 references, and one chunk's buffers."""

    def __init__(self, shapes: MoeShapes, pp: int, seed: int):
        import cupy

        from impbench.kernels import moe
        from impbench.nvfp4 import generate_experts_gpu

        self.shapes, self.pp = shapes, pp
        self.primary = ""  # the variant reported as ours (run_moe_bench sets it)
        e, h, i, rows = shapes.experts, shapes.hidden, shapes.inter, pp * shapes.top_k
        self.w13 = generate_experts_gpu(e, 2 * i, h, seed=seed)
        self.w2 = generate_experts_gpu(e, h, i, seed=seed + 1)
        self.w13_tiled = self.w2_tiled = None  # the same weights tile-major, as tiled variants read them (wgb)
        if moe.tiled_fits(h, i):
            self.w13_tiled, self.w2_tiled = moe.tiled_weight(self.w13, True), moe.tiled_weight(self.w2, False)
        self.w13_fp16 = dequantize_fp16_gpu(*self.w13)
        self.w2_fp16 = dequantize_fp16_gpu(*self.w2)
        rng = cupy.random.default_rng(seed + 2)
        self.x = rng.standard_normal((pp, h), dtype=cupy.float32).astype(cupy.float16)
        self.x_kp = moe.to_kperm(self.x) if moe.kperm_fits(h, i) else None  # x as kperm variants read it (wgp)
        self.act_nat = self.act_kp = None  # the reported gate_up's output in both orders (_sync_act)
        self.offsets = cupy.zeros(e + 1, cupy.int32)
        self.row_token = cupy.zeros(rows, cupy.int32)
        self.row_weight = cupy.zeros(rows, cupy.float32)
        self.act = cupy.empty((rows, i), cupy.float16)
        self.out = cupy.empty((rows, h), cupy.float16)
        self.act_v = cupy.empty((rows, i), cupy.float16)
        self.out_v = cupy.empty((rows, h), cupy.float16)
        self.x_perm = cupy.empty((rows, h), cupy.float16)  # reference: X gathered (not timed)
        self.ref_up = cupy.empty((rows, 2 * i), cupy.float16)
        self.ref_down = cupy.empty((rows, h), cupy.float16)

    def set_routing(self, offsets, row_token, row_weight) -> None:
        import cupy

        self.host_offsets = offsets
        for dev, host in zip((self.offsets, self.row_token, self.row_weight), (offsets, row_token, row_weight)):
            dev.set(host)
        cupy.take(self.x, self.row_token, axis=0, out=self.x_perm)

    def _kperm(self, variant: str) -> bool:
        from impbench.kernels import moe

        return moe.VARIANTS[variant].kperm

    def ours(self, op: str, variant: str) -> None:
        """Our kernel `variant` for `op`; the reported variant writes act / out, others act_v / out_v
        (every down reads the reported variant's act, as the reference does, in the order the variant
        reads: natural, or kperm for wgp)."""
        from impbench.kernels import moe

        default, kperm = variant == self.primary, self._kperm(variant)
        tiled = moe.VARIANTS[variant].tiled
        if op == "gate_up":
            out = self.act if default else self.act_v
            w13 = self.w13_tiled if tiled else self.w13
            moe.moe_gate_up(self.x_kp if kperm else self.x, self.row_token, self.offsets, *w13, out, variant=variant,
                            activation=self.shapes.activation)
        else:
            out = self.out if default else self.out_v
            h = self.act_kp if kperm else self.act_nat
            w2 = self.w2_tiled if tiled else self.w2
            moe.moe_down(h, self.offsets, *w2, out, row_weight=self.row_weight, variant=variant)

    def _sync_act(self) -> None:
        """After the reported variant's gate_up: its output (act) in natural and, where the shapes allow,
        kperm order, for the downs and the reference."""
        from impbench.kernels import moe

        if self._kperm(self.primary):
            self.act_kp, self.act_nat = self.act, moe.from_kperm(self.act)
        else:
            self.act_nat = self.act
            self.act_kp = moe.to_kperm(self.act) if self.x_kp is not None else None

    def _per_expert(self, a, w, out) -> None:
        import cupy

        off = self.host_offsets
        for e in range(self.shapes.experts):
            lo, hi = int(off[e]), int(off[e + 1])
            if hi > lo:
                cupy.matmul(a[lo:hi], w[e].T, out=out[lo:hi])

    def cublas_gate_up(self) -> None:
        self._per_expert(self.x_perm, self.w13_fp16, self.ref_up)

    def cublas_down(self) -> None:
        self._per_expert(self.act_nat, self.w2_fp16, self.ref_down)

    def errors(self, variants) -> dict[tuple[str, str], float]:
        """(op, variant) -> ||ours - reference|| / ||reference||, reference = cuBLAS on FP16-dequantized weights."""
        import cupy

        from impbench.kernels import moe

        self.ours("gate_up", self.primary)
        self._sync_act()
        self.cublas_gate_up()
        self.cublas_down()
        inter = self.shapes.inter
        up32 = self.ref_up.astype(cupy.float32)
        gate, up = up32[:, :inter], up32[:, inter:]
        act = ACTIVATIONS[self.shapes.activation](gate)  # NumPy ufuncs: on CuPy arrays they run on the GPU
        ref = {"gate_up": act * up, "down": self.ref_down.astype(cupy.float32) * self.row_weight[:, None]}
        errors = {}
        for variant in variants:
            default = variant == self.primary
            for op, out in (("gate_up", self.act if default else self.act_v), ("down", self.out if default else self.out_v)):
                out.fill(cupy.nan)
                self.ours(op, variant)
                got = moe.from_kperm(out) if op == "gate_up" and self._kperm(variant) else out
                errors[op, variant] = rel_err(got, ref[op])
        return errors


COLUMNS = [
    Column("routing", "routing"), Column("op", "op"), Column("shape", "R x N x K"), Column("experts_used", "experts used"),
    Column("max_expert_rows", "max rows/expert"), Column("us", "µs", fixed(1)), Column("p10_p90", "p10-p90 µs"),
    Column("weight_gbs", "weight GB/s", fixed(0)), Column("copy_pct", "% copy BW", fixed(0)), Column("tflops", "TFLOP/s", fixed(0)),
    Column("floor", "floor µs"), Column("x_floor", "x floor", fixed(2)), Column("cublas_us", "cuBLAS FP16 per expert µs", fixed(1)),
    Column("rel_err", "rel-err", sci), Column("others", "other variants µs (rel-err)"),
]  # fmt: skip


def _row(routing: str, op: str, layer, times: list[float], ref_us: float, error: float, measured_copy_gbs: float, gpu,
         variant: str, others: dict) -> dict:  # fmt: skip
    shapes, pp = layer.shapes, layer.pp
    n, k = shapes.gemms()[op]
    counts = np.diff(layer.host_offsets)
    rows = pp * shapes.top_k
    used = int((counts > 0).sum())
    weight_bytes = used * (n * k // 2 + n * k // 16 + 4)
    if op == "gate_up":  # x (each token once), row_token, offsets in; act out
        act_bytes = pp * shapes.hidden * 2 + rows * 4 + rows * shapes.inter * 2
    else:  # act and row_weight in; out
        act_bytes = rows * shapes.inter * 2 + rows * 4 + rows * shapes.hidden * 2
    bytes_moved = weight_bytes + act_bytes + (shapes.experts + 1) * 4
    flops = 2.0 * rows * n * k
    time_us = median_us(times)
    floor_us, bound = (None, None) if gpu is None else gpu.floor_us(flops, bytes_moved)
    return {
        "model": shapes.model, "pp": pp, "routing": routing, "op": op, "variant": variant, "rows": rows, "n": n, "k": k,
        "shape": f"{rows}x{n}x{k}", "experts_used": used, "max_expert_rows": int(counts.max()), "us": time_us,
        "p10_p90": f"{np.percentile(times, 10):.1f}-{np.percentile(times, 90):.1f}",
        "weight_bytes": weight_bytes, "bytes_moved": bytes_moved, "flops": flops,
        "weight_gbs": weight_bytes / time_us / 1e3, "copy_pct": 100 * bytes_moved / time_us / 1e3 / measured_copy_gbs,
        "tflops": flops / time_us / 1e6, "floor_us": floor_us, "floor_bound": bound,
        "floor": "-" if floor_us is None else f"{floor_us:.1f} ({bound})",
        "x_floor": None if floor_us is None else time_us / floor_us, "cublas_us": ref_us, "rel_err": error,
        "others": ", ".join(f"{v} {o['us']:.1f} ({o['rel_err']:.0e})" for v, o in others.items()) or "-",
        "variants": others,
    }  # fmt: skip


def run_moe_bench(shapes: MoeShapes, pp: int, routings=("uniform",), reps: int = 50, ref_reps: int = 10,
                  seed: int = 0, variants=(), variant: str | None = None, metadata: dict | None = None,
                  progress=None) -> BenchReport:  # fmt: skip
    """Time gate_up and down of one chunk of `pp` tokens under each routing (see the module docstring).

    `variant`: the kernel variant reported as ours (default: the engine's, moe.choose_variant with both
    layouts available); `variants`: further variants (or ("all",): every one this GPU runs on these
    shapes) timed beside it, each with its own error against the reference (calibration).
    """
    import cupy

    from impbench import device
    from impbench.gpus import match_gpu_name
    from impbench.kernels import moe
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    metadata = metadata or {}
    h, i = shapes.hidden, shapes.inter
    if tuple(variants) == ("all",):
        variants = tuple(v for v in moe.VARIANTS if moe.cannot_run(v, h, i) is None)
    variant = variant or moe.choose_variant(h, i, tiled=True, kperm=True)
    for name in (variant, *variants):
        if name not in moe.VARIANTS:
            raise InputError(f"unknown variant {name!r}; accepted: all, {', '.join(moe.VARIANTS)}")
        if reason := moe.cannot_run(name, h, i):
            raise InputError(reason)
    timed = [variant] + [v for v in dict.fromkeys(variants) if v != variant]
    gpu = match_gpu_name(str(metadata.get("gpu_name", "")))
    moe.prewarm()
    measured_copy, measured_cublas = copy_gbs(), cublas_tflops()
    layer = Layer(shapes, pp, seed)
    layer.primary = variant
    rows_out, clocks = [], []
    with no_pdl(), Telemetry(pci_bus_id=device.pci_bus_id()) as telemetry:  # each launch timed alone, as cuBLAS's
        for routing in routings:
            layer.set_routing(*route(pp, shapes.experts, shapes.top_k, routing, seed))
            errors = layer.errors(timed)  # also the warm-up of every path
            sides = {(op, v): (lambda _, op=op, v=v: layer.ours(op, v)) for v in timed for op in ("gate_up", "down")}
            with telemetry.sample() as sampler:
                ours = time_interleaved({f"{op} {v}": side for (op, v), side in sides.items()}, 1, reps)
            clocks.append(f"{routing}: SM {sampler.result.sm_mhz_median} MHz median")
            # the reference issues one cuBLAS call per expert: spin long enough to queue them all
            ref_spin = 2 * max(host_us(layer.cublas_gate_up, 3), host_us(layer.cublas_down, 3)) + SPIN_US
            ref = {op: time_interleaved({op: lambda _, f=f: f()}, 1, ref_reps, spin_us=ref_spin)[op]
                   for op, f in (("gate_up", layer.cublas_gate_up), ("down", layer.cublas_down))}  # fmt: skip
            for op in ("gate_up", "down"):
                others = {v: {"us": median_us(ours[f"{op} {v}"]), "rel_err": errors[op, v]} for v in timed[1:]}
                row = _row(routing, op, layer, ours[f"{op} {variant}"], median_us(ref[op]), errors[op, variant], measured_copy,
                           gpu, variant, others)  # fmt: skip
                rows_out.append(row)
                if progress:
                    progress(f"{routing} {op}: {row['us']:.1f} µs")
    del layer
    cupy.get_default_memory_pool().free_all_blocks()
    summary = [f"measured here: device-to-device copy {measured_copy:.0f} GB/s (read + write), cuBLAS FP16 "
               f"{measured_cublas:.0f} TFLOP/s; " + "; ".join(clocks)]  # fmt: skip
    summary += [f"{r['routing']} {r['op']}: {r['us']:.1f} µs = {r['x_floor']:.2f}x its {r['floor_bound']} floor "
                f"{r['floor_us']:.1f} µs" for r in rows_out if r["floor_us"]]  # fmt: skip
    if gpu is not None:
        summary.append(f"floors on {gpu.name} peaks: {gpu.basis}")
    summary += below_floor_lines(rows_out, lambda r: f"{r['routing']} {r['op']}")
    return BenchReport("moe", rows_out, COLUMNS, summary, metadata,
                       {"model": shapes.model, "pp": pp, "routings": list(routings), "reps": reps, "variant": variant,
                        "variants": timed[1:]},
                       title=f"{shapes.model}, one layer, chunk of {pp} tokens, variant {variant}; median of {reps} reps.")  # fmt: skip
