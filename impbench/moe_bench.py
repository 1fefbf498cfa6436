"""`impbench moe`: the grouped NVFP4 expert GEMMs of one prefill chunk, timed against their floor.

One chunk of `pp` tokens is routed on the host (uniform: top-k distinct experts per token, each
equally likely; skewed: a few hot experts 25x as likely as the others, so each hot expert gets most
tokens), and its permutation (expert_offsets, row_token, row_weight) uploaded. Weights are synthetic
NVFP4 (impbench.nvfp4.generate_experts_gpu) with the preset's expert shapes; one layer.

Per GEMM (gate_up with its SiLU*up epilogue, down with the router-weight scale): device time from CUDA
events, median of `reps` repetitions after warm-up, each behind a GPU spin kernel so the host has
queued the launches before the first event runs. Beside it, measured in the same run: the device-to-
device copy bandwidth (read + write of a 1 GiB buffer) and the cuBLAS FP16 rate (8192^3), which give
the floor max(bytes / copy bandwidth, FLOPs / cuBLAS rate); bytes = NVFP4 weights of every expert with
rows + activations read + outputs written. As a reference, the same GEMMs with FP16-dequantized
weights through cuBLAS (`cupy.matmul`), one expert at a time (GEMMs only: no gather, SiLU or scaling).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from impbench.errors import InputError

ROUTINGS = ("uniform", "skewed")
HOT_FACTOR = 25.0  # skewed routing: a hot expert is this many times as likely as the others
SPIN_US = 200.0
COPY_BYTES = 1 << 30
CUBLAS_SIZE = 8192
FLOOR_TARGET = 1.5  # time / floor
# Absolute targets of issue #4: Qwen3-Coder, 512-token chunk, on an H100 (other GPUs: the floor ratio only).
TARGETS_US = {("qwen3-coder-30b-a3b", 512): {"gate_up": 110.0, "down": 60.0}}
TARGET_GPU = "H100"  # in the device name


@dataclass(frozen=True)
class MoeShapes:
    model: str
    experts: int
    top_k: int
    hidden: int
    inter: int

    @classmethod
    def from_preset(cls, preset) -> MoeShapes:
        return cls(preset.name, preset.num_experts, preset.experts_per_token, preset.hidden_size, preset.moe_intermediate_size)

    def gemms(self) -> dict[str, tuple[int, int]]:
        """op -> (N weight rows per expert, K)."""
        return {"gate_up": (2 * self.inter, self.hidden), "down": (self.hidden, self.inter)}


@dataclass
class MoeRow:
    model: str
    pp: int
    routing: str
    op: str
    rows: int  # R = pp * top_k
    n: int
    k: int
    experts_used: int
    max_expert_rows: int
    time_us: float
    time_p10_us: float
    time_p90_us: float
    weight_bytes: int
    bytes_moved: int
    flops: float
    weight_gbs: float
    copy_fraction: float  # (bytes_moved / time) / copy bandwidth
    tflops: float
    floor_us: float
    floor_bound: str  # "memory" or "compute"
    time_over_floor: float
    cublas_ref_us: float
    rel_err: float  # ours vs the cuBLAS FP16-dequantized reference
    target_us: float | None
    meets_target: bool
    variant: str = ""  # kernel variant timed as "ours" (impbench.kernels.moe.VARIANTS)
    variants: dict = field(default_factory=dict)  # extra variants timed (--variants): name -> {us, rel_err}


@dataclass
class MoeReport:
    rows: list
    reps: int
    copy_gbs: float
    cublas_tflops: float
    telemetry: dict
    metadata: dict = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = [f"copy bandwidth {self.copy_gbs:.0f} GB/s (read+write), cuBLAS FP16 {self.cublas_tflops:.0f} TFLOP/s"]
        for r in self.rows:
            target = f"target <= {r.target_us:.0f} µs and <= {FLOOR_TARGET}x floor" if r.target_us else f"target <= {FLOOR_TARGET}x floor"
            verdict = "met" if r.meets_target else "MISSED"
            lines.append(f"{r.routing} {r.op}: {r.time_us:.1f} µs = {r.time_over_floor:.2f}x its {r.floor_bound} floor "
                         f"{r.floor_us:.1f} µs; {target}: {verdict}")  # fmt: skip
        return lines

    def to_dict(self) -> dict:
        return {"metadata": self.metadata, "reps": self.reps, "copy_gbs": self.copy_gbs,
                "cublas_tflops": self.cublas_tflops, "telemetry": self.telemetry,
                "summary": self.summary(), "rows": [asdict(r) for r in self.rows]}  # fmt: skip


# ---- routing (host) ---------------------------------------------------------------------------


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


# ---- device helpers ---------------------------------------------------------------------------


def _event_times(fn, reps: int, spin=None) -> list[float]:
    """Device µs of `fn()` per repetition (CUDA events), each behind the spin kernel when given."""
    import cupy

    stream = cupy.cuda.get_current_stream()
    times = []
    for _ in range(reps):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        if spin:
            spin()
        start.record(stream)
        fn()
        end.record(stream)
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) * 1000.0)
    return times


def measure_copy_gbs(reps: int = 10) -> float:
    """Device-to-device copy bandwidth, bytes read + written per second, of a 1 GiB buffer."""
    import cupy

    src = cupy.ones(COPY_BYTES // 4, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    dst[...] = src  # warm-up
    us = statistics.median(_event_times(lambda: cupy.copyto(dst, src), reps))
    del src, dst
    return 2.0 * COPY_BYTES / us / 1e3


def measure_cublas_tflops(reps: int = 5) -> float:
    import cupy

    n = CUBLAS_SIZE
    rng = cupy.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
    b = rng.standard_normal((n, n), dtype=cupy.float32).astype(cupy.float16)
    out = cupy.empty((n, n), cupy.float16)
    cupy.matmul(a, b, out=out)
    us = statistics.median(_event_times(lambda: cupy.matmul(a, b, out=out), reps))
    return 2.0 * n**3 / us / 1e6


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


def _rel_err(ours, ref) -> float:
    import cupy

    ours32, ref32 = ours.astype(cupy.float32), ref.astype(cupy.float32)
    num, den = float(cupy.linalg.norm(ours32 - ref32)), float(cupy.linalg.norm(ref32))
    return num / den if math.isfinite(num) and den else float("inf")


# ---- the benchmark ----------------------------------------------------------------------------


class _Layer:
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
            moe.moe_gate_up(self.x_kp if kperm else self.x, self.row_token, self.offsets, *w13, out, variant=variant)
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
        ref = {"gate_up": gate / (1.0 + cupy.exp(-gate)) * up, "down": self.ref_down.astype(cupy.float32) * self.row_weight[:, None]}
        errors = {}
        for variant in variants:
            default = variant == self.primary
            for op, out in (("gate_up", self.act if default else self.act_v), ("down", self.out if default else self.out_v)):
                out.fill(cupy.nan)
                self.ours(op, variant)
                got = moe.from_kperm(out) if op == "gate_up" and self._kperm(variant) else out
                errors[op, variant] = _rel_err(got, ref[op])
        return errors


def _spin_for(us: float):
    import cupy

    from impbench.kernels import gemm

    kernel, cycles = gemm.spin_kernel(), int(us * gemm.device_info().sm_mhz)
    return lambda: kernel((1,), (1,), (cupy.int64(cycles),))


def _host_us(fn, times: int = 3) -> float:
    import cupy

    best = float("inf")
    for _ in range(times):
        cupy.cuda.get_current_stream().synchronize()
        t0 = time.perf_counter()
        fn()
        best = min(best, (time.perf_counter() - t0) * 1e6)
    cupy.cuda.get_current_stream().synchronize()
    return best


def _row(shapes, pp, routing, op, layer, times, ref_times, rel_err, copy_gbs, cublas_tflops, variant, extra) -> MoeRow:
    n, k = shapes.gemms()[op]
    counts = np.diff(layer.host_offsets)
    rows = pp * shapes.top_k
    used = int((counts > 0).sum())
    weight_bytes = used * (n * k // 2 + n * k // 16 + 4)
    if op == "gate_up":  # x (each token once), row_token, offsets in; act out
        act_bytes = pp * shapes.hidden * 2 + rows * 4 + rows * shapes.inter * 2
    else:  # act and row_weight in; out
        act_bytes = rows * shapes.inter * 2 + rows * 4 + rows * shapes.hidden * 2
    act_bytes += (shapes.experts + 1) * 4
    bytes_moved = weight_bytes + act_bytes
    flops = 2.0 * rows * n * k
    time_us = statistics.median(times)
    mem_us, compute_us = bytes_moved / copy_gbs / 1e3, flops / cublas_tflops / 1e6
    floor_us = max(mem_us, compute_us)
    target = TARGETS_US.get((shapes.model, pp), {}).get(op) if _on_target_gpu() else None
    return MoeRow(
        model=shapes.model, pp=pp, routing=routing, op=op, rows=rows, n=n, k=k,
        experts_used=used, max_expert_rows=int(counts.max()),
        time_us=time_us, time_p10_us=float(np.percentile(times, 10)), time_p90_us=float(np.percentile(times, 90)),
        weight_bytes=weight_bytes, bytes_moved=bytes_moved, flops=flops,
        weight_gbs=weight_bytes / time_us / 1e3, copy_fraction=bytes_moved / time_us / 1e3 / copy_gbs,
        tflops=flops / time_us / 1e6, floor_us=floor_us, floor_bound="memory" if mem_us >= compute_us else "compute",
        time_over_floor=time_us / floor_us, cublas_ref_us=statistics.median(ref_times), rel_err=rel_err,
        target_us=target,
        meets_target=time_us <= FLOOR_TARGET * floor_us and (target is None or time_us <= target),
        variant=variant, variants=extra,
    )  # fmt: skip


def _on_target_gpu() -> bool:
    import cupy

    return TARGET_GPU in cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()


def _metadata() -> dict:
    try:
        from impbench.metadata import collect_metadata

        return collect_metadata()
    except Exception:  # metadata collection must never stop a benchmark
        return {}


def run_moe_bench(shapes: MoeShapes, pp: int, routings=("uniform",), reps: int = 50, ref_reps: int = 10,
                  seed: int = 0, variants=(), variant: str | None = None, progress=None) -> MoeReport:  # fmt: skip
    """Time gate_up and down of one chunk of `pp` tokens under each routing (see the module docstring).

    `variant`: the kernel variant reported as ours (default: the engine's, moe.choose_variant with both
    layouts available); `variants`: further variants (or ("all",): every one this GPU runs on these
    shapes) timed beside it, each with its own error against the reference (calibration).
    """
    import cupy

    from impbench.device import require_cuda
    from impbench.kernels import moe
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    require_cuda()
    if pp < 1:
        raise InputError(f"--pp must be >= 1 token, got {pp}")
    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
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
    moe.prewarm()
    copy_gbs, cublas_tflops = measure_copy_gbs(), measure_cublas_tflops()
    layer = _Layer(shapes, pp, seed)
    layer.primary = variant
    rows_out, telemetry = [], {}
    with no_pdl(), Telemetry() as nvml:  # each launch timed alone between events, as cuBLAS's are
        for routing in routings:
            layer.set_routing(*route(pp, shapes.experts, shapes.top_k, routing, seed))
            errors = layer.errors(timed)  # also the warm-up of every path
            spin = _spin_for(SPIN_US)
            # the reference loop issues one cuBLAS call per expert: spin long enough to queue them all
            ref_spin = _spin_for(2 * max(_host_us(layer.cublas_gate_up), _host_us(layer.cublas_down)) + SPIN_US)
            sampler = nvml.sample().start()
            ours = {(op, v): [] for op in ("gate_up", "down") for v in timed}
            for rep in range(reps):  # variants interleaved, order alternating; gate_up then down, as in a layer
                for variant in timed if rep % 2 == 0 else timed[::-1]:
                    for op in ("gate_up", "down"):
                        ours[op, variant] += _event_times(lambda: layer.ours(op, variant), 1, spin)
            ref = {"gate_up": _event_times(layer.cublas_gate_up, ref_reps, ref_spin),
                   "down": _event_times(layer.cublas_down, ref_reps, ref_spin)}  # fmt: skip
            telemetry[routing] = sampler.stop().summary()
            for op in ("gate_up", "down"):
                extra = {v: {"us": statistics.median(ours[op, v]), "rel_err": errors[op, v]} for v in timed[1:]}
                row = _row(shapes, pp, routing, op, layer, ours[op, timed[0]], ref[op], errors[op, timed[0]],
                           copy_gbs, cublas_tflops, timed[0], extra)  # fmt: skip
                rows_out.append(row)
                if progress:
                    progress(row)
    del layer
    cupy.get_default_memory_pool().free_all_blocks()
    return MoeReport(rows_out, reps, copy_gbs, cublas_tflops, telemetry, _metadata())


# ---- printers ---------------------------------------------------------------------------------


def records(report: MoeReport) -> list[dict]:
    return [
        {
            "routing": r.routing, "op": r.op, "R x N x K": f"{r.rows}x{r.n}x{r.k}",
            "experts used": r.experts_used, "max rows/expert": r.max_expert_rows,
            "µs": f"{r.time_us:.1f}", "p10-p90 µs": f"{r.time_p10_us:.1f}-{r.time_p90_us:.1f}",
            "weight GB/s": f"{r.weight_gbs:.0f}", "% copy BW": f"{100 * r.copy_fraction:.0f}",
            "TFLOP/s": f"{r.tflops:.0f}", "floor µs": f"{r.floor_us:.1f} ({r.floor_bound})",
            "x floor": f"{r.time_over_floor:.2f}", "cuBLAS FP16 per expert µs": f"{r.cublas_ref_us:.1f}",
            "rel-err": f"{r.rel_err:.1e}", "target": ("met" if r.meets_target else "MISSED"),
            **({"other variants µs (rel-err)": ", ".join(f"{k} {v['us']:.1f} ({v['rel_err']:.0e})" for k, v in r.variants.items())}
               if r.variants else {}),
        }  # fmt: skip
        for r in report.rows
    ]


def format_report(report: MoeReport, fmt: str) -> str:
    import pandas as pd

    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=str)
    frame = pd.DataFrame(records(report))
    if fmt == "csv":
        return frame.to_csv(index=False)
    meta = report.metadata
    first = report.rows[0] if report.rows else None
    head = (f"{first.model if first else '-'}, one layer, chunk of {first.pp if first else '-'} tokens, kernel variant "
            f"{first.variant if first else '-'}. GPU: {meta.get('gpu_name', 'n/a')}; median of {report.reps} reps "
            f"(CUDA events).")  # fmt: skip
    clocks = "; ".join(f"{k}: SM {v.get('sm_mhz_median', 'n/a')} MHz median" for k, v in report.telemetry.items())
    body = "\n".join(f"- {line}" for line in report.summary())
    return f"{head} {clocks}\n\n{frame.to_markdown(index=False)}\n\n{body}\n"


def write_report(report: MoeReport, path, fmt: str) -> list:
    """Write `path` in `fmt`; a markdown or CSV file also gets its full JSON beside it."""
    from pathlib import Path

    from impbench.outfile import atomic_write_text

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, format_report(report, fmt))
    written = [path]
    if fmt != "json":
        json_path = path.with_suffix(".json")
        atomic_write_text(json_path, format_report(report, "json"))
        written.append(json_path)
    return written
