"""`impbench gemm`: our dense FP16 GEMM against cuBLAS (`cupy.matmul`) on the models' dense shapes.

Device time from CUDA events, median of `reps` repetitions after warm-up. Every repetition starts
behind a GPU spin kernel, so the host has queued both timed launches before the first runs and no
host launch gap lands inside an event pair; the two sides alternate which goes first, and every
timed launch uses the next of several input sets (together larger than L2), so no side is timed on
operands that it or the other side left in cache.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field

from impbench.errors import InputError

DEFAULT_MS = (512, 1024, 2048)
ROTATE_BYTES = 200 * 1024 * 1024  # input sets per shape together exceed 4x the H100's 50 MB L2
MAX_SETS, MAX_SET_BYTES_TOTAL = 96, 8 * 1024**3
SPIN_US = 150.0
SPIN_US_PER_LAUNCH = 30.0  # host time to queue one timed launch and its event, with margin

@dataclass(frozen=True)
class GemmCase:
    m: int
    n: int
    k: int
    ops: tuple[str, ...]  # "model:op" that have this shape

    @property
    def label(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"


@dataclass
class GemmRow:
    m: int
    n: int
    k: int
    ops: str
    variant: str | None  # chosen under `policy`; None: declined (cuBLAS)
    policy: str
    ours_us: float | None
    cublas_us: float
    ratio: float | None  # cuBLAS time / our time (> 1: ours faster)
    ours_tflops: float | None
    cublas_tflops: float
    rel_err: float | None  # ||ours - cuBLAS|| / ||cuBLAS||
    guards: dict  # policy -> variant or "cublas"
    variants_us: dict = field(default_factory=dict)  # extra variants timed (--variants)

    @property
    def shape(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"

    def progress_line(self) -> str:
        line = f"{self.shape} cublas {self.cublas_us:.1f} us, {self.variant or 'declined'} {_fmt(self.ours_us)} us"
        extra = sorted(self.variants_us.items(), key=lambda kv: kv[1]["us"])
        return line + "".join(f", {k} {v['us']:.1f}{'' if v['rel_err'] <= 2e-3 else ' (WRONG)'}" for k, v in extra)


@dataclass
class GemmReport:
    rows: list
    reps: int
    metadata: dict

    def geomean_ratio(self) -> float | None:
        ratios = [r.ratio for r in self.rows if r.ratio]
        return math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None

    def worst(self) -> GemmRow | None:
        rows = [r for r in self.rows if r.ratio]
        return min(rows, key=lambda r: r.ratio) if rows else None

    def summary(self) -> str:
        geo, worst = self.geomean_ratio(), self.worst()
        if geo is None:
            return "no shape ran on our kernel"
        timed = sum(1 for r in self.rows if r.ratio)
        return (f"geomean cuBLAS/ours over {timed} shapes: {geo:.3f}; "
                f"lowest {worst.ratio:.3f} at {worst.shape} ({worst.ops})")  # fmt: skip

    def to_dict(self) -> dict:
        return {"metadata": self.metadata, "reps": self.reps, "geomean_ratio": self.geomean_ratio(),
                "summary": self.summary(), "rows": [asdict(r) for r in self.rows]}  # fmt: skip


# ---- shapes ---------------------------------------------------------------------------------


def parse_shape(text: str) -> tuple[int, int, int]:
    """'MxNxK' -> (M, N, K); InputError (exit 2) naming what is accepted."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise InputError(f"bad --shape {text!r}: expected MxNxK with whole numbers, e.g. 512x32x2048")
    m, n, k = (int(p) for p in parts)
    if m < 1 or n < 1 or k < 8 or k % 8:
        raise InputError(f"bad --shape {text!r}: need M >= 1, N >= 1 and K a positive multiple of 8")
    return m, n, k


def parse_ms(text: str) -> tuple[int, ...]:
    try:
        ms = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"bad --m {text!r}: expected comma-separated token counts, e.g. 512,1024,2048") from None
    if not ms or min(ms) < 1:
        raise InputError(f"bad --m {text!r}: expected comma-separated token counts >= 1")
    return ms


def model_shapes(model: str) -> list[tuple[str, int, int]]:
    """(op, N, K) of every dense GEMM of a preset; unknown name -> InputError naming the accepted ones."""
    from impbench.plan import dense_gemm_shapes
    from impbench.presets import get_preset

    return [(s.op, s.n, s.k) for s in dense_gemm_shapes(get_preset(model))]


def all_models() -> list[str]:
    """Every real (non-synthetic) preset."""
    from impbench.presets import list_presets

    return [p.name for p in list_presets() if not p.synthetic]


def build_cases(models, shapes, ms) -> list[GemmCase]:
    """One case per distinct (M, N, K): --shape entries as given, model shapes at every M."""
    merged: dict[tuple[int, int, int], list[str]] = {}
    for text in shapes:
        merged.setdefault(parse_shape(text), []).append("custom")
    if models or not shapes:
        for model in models or all_models():
            for op, n, k in model_shapes(model):
                for m in ms:
                    merged.setdefault((m, n, k), []).append(f"{model}:{op}")
    return [GemmCase(m, n, k, tuple(dict.fromkeys(ops))) for (m, n, k), ops in merged.items()]


# ---- timing ---------------------------------------------------------------------------------


def _set_count(case: GemmCase) -> int:
    set_bytes = 2 * (case.m * case.k + case.n * case.k + case.m * case.n)
    want = max(2, min(MAX_SETS, -(-ROTATE_BYTES // set_bytes)))
    return max(1, min(want, MAX_SET_BYTES_TOTAL // set_bytes))


def _rel_err(x, ref) -> float:
    import cupy

    x32, ref32 = x.astype(cupy.float32), ref.astype(cupy.float32)
    num = float(cupy.linalg.norm(x32 - ref32))
    den = float(cupy.linalg.norm(ref32))
    if not math.isfinite(num):
        return float("inf")
    return num / den if den else num


def time_case(case: GemmCase, policy: str, reps: int, extra_variants=(), warmup: int = 5) -> GemmRow:
    import cupy

    from impbench.kernels import gemm

    m, n, k = case.m, case.n, case.k
    variant = gemm.choose_variant(m, n, k, policy)
    guards = {p: (gemm.choose_variant(m, n, k, p) or gemm.CUBLAS) for p in gemm.POLICIES}
    # extra variants modelled at over 3x the best are skipped (a 16-row tile on lm_head takes seconds)
    best_us = min(gemm.estimate_us(v, m, n, k) for v in gemm.candidates("small-n"))
    extra_ok = [
        v for v in extra_variants
        if v != variant and gemm.VARIANTS[v].grid(m, n)[1] <= gemm.MAX_GRID_Y
        and gemm.estimate_us(gemm.VARIANTS[v], m, n, k) <= 3 * best_us
    ]  # fmt: skip
    timed = ([variant] if variant else []) + extra_ok

    sets = _set_count(case)
    rng = cupy.random.default_rng(1234 + m + 7 * n + 13 * k)
    a_sets = [rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    w_sets = [(rng.standard_normal((n, k), dtype=cupy.float32) / math.sqrt(k)).astype(cupy.float16) for _ in range(sets)]
    # two outputs for the compared pair, one for each extra variant (lm_head outputs are 1 GB each)
    out_sets = {
        name: [cupy.empty((m, n), cupy.float16) for _ in range(min(sets, 2) if name in (gemm.CUBLAS, variant) else 1)]
        for name in [gemm.CUBLAS, *timed]
    }

    # launchers prepared once per (variant, input set): a timed launch is one driver call, so the
    # host keeps ahead of the GPU behind the spin however many variants a repetition times
    launchers = {
        name: [gemm.prepare(a_sets[i], w_sets[i], out_sets[name][i % len(out_sets[name])], name) for i in range(sets)]
        for name in timed
    }

    def run(name, i):
        if name == gemm.CUBLAS:
            cupy.matmul(a_sets[i], w_sets[i].T, out=out_sets[name][i % len(out_sets[name])])
        else:
            launchers[name][i]()

    spin = gemm.spin_kernel()
    names = [gemm.CUBLAS, *timed]
    spin_cycles = int((SPIN_US + SPIN_US_PER_LAUNCH * len(names)) * gemm.device_info().sm_mhz)
    for i in range(warmup):
        for name in names:
            run(name, i % sets)
    stream = cupy.cuda.get_current_stream()
    stream.synchronize()

    times = {name: [] for name in names}
    for rep in range(reps):
        order = names if rep % 2 == 0 else names[::-1]
        events = [cupy.cuda.Event() for _ in range(len(order) + 1)]
        spin((1,), (1,), (cupy.int64(spin_cycles),))
        events[0].record(stream)
        for j, name in enumerate(order):
            # every launch on the next input set: a side that reused its own set of the previous
            # repetition would find it in L2 (the median then falls between a warm and a cold mode)
            run(name, (rep * len(order) + j) % sets)
            events[j + 1].record(stream)
        events[-1].synchronize()
        for j, name in enumerate(order):
            times[name].append(cupy.cuda.get_elapsed_time(events[j], events[j + 1]) * 1000.0)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name in names:  # outputs of one input set for the error column
        run(name, 0)
    flop = 2.0 * m * n * k
    cublas_us = med[gemm.CUBLAS]
    ours_us = med.get(variant) if variant else None
    rel_err = _rel_err(out_sets[variant][0], out_sets[gemm.CUBLAS][0]) if variant else None
    extra = {  # each extra variant with its own error, so one that computes garbage cannot look fast
        name: {"us": med[name], "rel_err": _rel_err(out_sets[name][0], out_sets[gemm.CUBLAS][0])}
        for name in timed
        if name != variant
    }
    del a_sets, w_sets, out_sets, launchers
    cupy.get_default_memory_pool().free_all_blocks()
    return GemmRow(
        m=m, n=n, k=k, ops=", ".join(case.ops), variant=variant, policy=policy,
        ours_us=ours_us, cublas_us=cublas_us,
        ratio=cublas_us / ours_us if ours_us else None,
        ours_tflops=flop / ours_us / 1e6 if ours_us else None,
        cublas_tflops=flop / cublas_us / 1e6,
        rel_err=rel_err, guards=guards, variants_us=extra,
    )  # fmt: skip


def _metadata() -> dict:
    try:
        from impbench.metadata import collect_metadata

        return collect_metadata()
    except Exception:  # metadata collection must never stop a benchmark
        import sys

        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        return {"gpu_name": props["name"].decode(), "command_line": " ".join(sys.argv), "cupy_version": cupy.__version__}


def run_gemm_bench(models, shapes, ms, reps: int, policy: str, variants=(), progress=None) -> GemmReport:
    from impbench.device import require_cuda
    from impbench.kernels import gemm
    from impbench.kernels.driver import no_pdl

    require_cuda()
    gemm.get_policy(policy)
    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
    if variants == ("all",):
        variants = tuple(v.name for v in gemm.candidates("small-n"))
    for name in variants:
        if name not in gemm.VARIANTS:
            raise InputError(f"unknown variant {name!r}; accepted: all, {', '.join(gemm.VARIANTS)}")
    cases = build_cases(models, shapes, ms)
    gemm.prewarm()
    rows = []
    with no_pdl():  # each launch timed alone between events, as cuBLAS's are
        for case in cases:
            row = time_case(case, policy, reps, variants)
            rows.append(row)
            if progress:
                progress(row)
    return GemmReport(rows, reps, _metadata())


# ---- printers -------------------------------------------------------------------------------


def _fmt(value, digits=1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def records(report: GemmReport) -> list[dict]:
    out = []
    for r in report.rows:
        out.append({
            "shape MxNxK": r.shape, "op": r.ops, "ours µs": _fmt(r.ours_us), "cuBLAS µs": _fmt(r.cublas_us),
            "cuBLAS/ours": _fmt(r.ratio, 3), "ours TFLOP/s": _fmt(r.ours_tflops), "cuBLAS TFLOP/s": _fmt(r.cublas_tflops),
            "variant": r.variant or "cublas (declined)",
            "guards": ", ".join(f"{p}: {v}" for p, v in r.guards.items()),
            "rel-err": "-" if r.rel_err is None else f"{r.rel_err:.1e}",
        })  # fmt: skip
    return out


def format_report(report: GemmReport, fmt: str) -> str:
    import pandas as pd

    if fmt == "json":
        return json.dumps(report.to_dict(), indent=2, default=str)
    frame = pd.DataFrame(records(report))
    if fmt == "csv":
        return frame.to_csv(index=False)
    meta = report.metadata
    head = f"GPU: {meta.get('gpu_name', 'n/a')}; reps: {report.reps} (median); policy: {report.rows[0].policy if report.rows else '-'}"
    return f"{head}\n\n{frame.to_markdown(index=False)}\n\n{report.summary()}\n"


def write_report(report: GemmReport, path, fmt: str) -> list:
    """Write `path` in `fmt`; a markdown or CSV file also gets its full JSON beside it."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(format_report(report, fmt))
    written = [path]
    if fmt != "json":
        json_path = path.with_suffix(".json")
        json_path.write_text(format_report(report, "json"))
        written.append(json_path)
    return written
