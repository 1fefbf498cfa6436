"""`impbench gemm`: our dense FP16 GEMM against cuBLAS (`cupy.matmul`) on the models' dense shapes.

Shapes: every dense GEMM of a preset as the plan lists it (impbench.plan.dense_gemm_shapes; for Qwen3.6
the linear-attention projections with in_proj_b / in_proj_a at N=32, the gated q/k/v projection, the
router, the shared expert and its N=1 gate, the lm_head), each at every M of --m, plus --shape entries.

Projections a preset stores as NVFP4 (qwen3-modelopt's attention) get a second row: the dense NVFP4 GEMM
(impbench.kernels.nvfp4_gemm) against cuBLAS FP16 on the same weights dequantized (bench.nvfp4_gemm).

Per shape, on the shared timing loop (bench.timing): the variant the guard chooses and cuBLAS are
timed interleaved, every launch on the next of several input sets larger than the L2, behind one spin
per rep; extra variants (`--variants`, calibration) are timed beside them, each with its own error
against cuBLAS, so one that computes garbage cannot look fast. `--guard seed` times the original
engine's capture kernel (mma_128x128) on every shape; the guards column names every guard's path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from impbench.bench.accuracy import rel_err
from impbench.bench.report import BenchReport, Column, fixed, sci
from impbench.bench.timing import median_us, set_count, time_interleaved
from impbench.errors import InputError

DEFAULT_MS = (512, 1024, 2048)


@dataclass(frozen=True)
class GemmCase:
    m: int
    n: int
    k: int
    ops: tuple[str, ...]  # "model:op" that have this shape

    @property
    def label(self) -> str:
        return f"{self.m}x{self.n}x{self.k}"


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


def model_shapes(model: str, nvfp4: bool = False) -> list[tuple[str, int, int]]:
    """("preset:op", N, K) of every dense GEMM of a preset (with `nvfp4`: only those the preset stores as
    NVFP4), named by the preset's full name whichever alias was given; unknown name -> InputError naming
    the accepted ones."""
    from impbench.plan import dense_gemm_shapes
    from impbench.presets import get_preset

    preset = get_preset(model)
    return [(f"{preset.name}:{s.op}", s.n, s.k) for s in dense_gemm_shapes(preset) if s.nvfp4 or not nvfp4]


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
                    merged.setdefault((m, n, k), []).append(op)
    return [GemmCase(m, n, k, tuple(dict.fromkeys(ops))) for (m, n, k), ops in merged.items()]


def nvfp4_cases(models, ms) -> list[GemmCase]:
    """One case per distinct (M, N, K) of the projections the models store as NVFP4, at every M."""
    merged: dict[tuple[int, int, int], list[str]] = {}
    for model in models or all_models():
        for op, n, k in model_shapes(model, nvfp4=True):
            for m in ms:
                merged.setdefault((m, n, k), []).append(op)
    return [GemmCase(m, n, k, tuple(dict.fromkeys(ops))) for (m, n, k), ops in merged.items()]


WRONG_REL_ERR = 2e-3  # an extra variant's error against cuBLAS past this: it computes garbage, whatever its time


def others_text(others: dict) -> str:
    """The "other variants" column: each variant's µs, fastest first, WRONG where its error against cuBLAS
    passes WRONG_REL_ERR (so one that computes garbage cannot look fast)."""
    return ", ".join(f"{v} {o['us']:.1f}{'' if o['rel_err'] <= WRONG_REL_ERR else ' (WRONG)'}"
                     for v, o in sorted(others.items(), key=lambda kv: kv[1]["us"])) or "-"  # fmt: skip


def time_nvfp4_case(case: GemmCase, reps: int) -> dict:
    """One NVFP4 projection shape: the dense NVFP4 GEMM against cuBLAS FP16 on the dequantized weights, as a
    row of this report (variant "nvfp4 <name>"; the floor is of the NVFP4 bytes)."""
    from impbench.bench.nvfp4_gemm import time_nvfp4_dense

    r = time_nvfp4_dense(case.m, case.n, case.k, reps, ("all",))
    flop = 2.0 * case.m * case.n * case.k
    return {"shape": case.label, "m": case.m, "n": case.n, "k": case.k, "ops": ", ".join(case.ops) + " (NVFP4)",
            "variant": f"nvfp4 {r['variant']}", "guard": "-", "ours_us": r["ours_us"], "cublas_us": r["cublas_us"],
            "ratio": r["cublas_us"] / r["ours_us"], "ours_tflops": flop / r["ours_us"] / 1e6,
            "cublas_tflops": flop / r["cublas_us"] / 1e6, "rel_err": r["rel_err"], "floor_us": r["floor_us"],
            "guards": "every guard (capture-safe)", "variants": r["others"],
            "others": others_text(r["others"])}  # fmt: skip


# ---- timing ---------------------------------------------------------------------------------


def time_case(case: GemmCase, guard: str, reps: int, extra_variants=()) -> dict:
    """One shape: the guard's variant and cuBLAS (and extra variants) interleaved; a row of raw numbers."""
    import cupy

    from impbench.kernels import gemm

    m, n, k = case.m, case.n, case.k
    variant = gemm.choose_variant(m, n, k, guard)
    guards = {g: (gemm.choose_variant(m, n, k, g) or gemm.CUBLAS) for g in gemm.GUARDS}
    # extra variants modelled at over 3x the best are skipped (a 16-row tile on lm_head takes seconds)
    best_us = min(gemm.estimate_us(v, m, n, k) for v in gemm.candidates("small-n"))
    extra_ok = [v for v in extra_variants if v != variant and gemm.launchable(gemm.VARIANTS[v], m, n)
                and gemm.estimate_us(gemm.VARIANTS[v], m, n, k) <= 3 * best_us]  # fmt: skip
    timed = ([variant] if variant else []) + extra_ok
    sets = set_count(2 * (m * k + n * k + m * n))
    rng = cupy.random.default_rng(1234 + m + 7 * n + 13 * k)
    a_sets = [rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    w_sets = [(rng.standard_normal((n, k), dtype=cupy.float32) / math.sqrt(k)).astype(cupy.float16) for _ in range(sets)]
    # two outputs for the compared pair, one for each extra variant (lm_head outputs are 1 GB each)
    outs = {name: [cupy.full((m, n), cupy.nan, cupy.float16) for _ in range(min(sets, 2) if name in (gemm.CUBLAS, variant) else 1)]
            for name in [gemm.CUBLAS, *timed]}  # fmt: skip
    # launchers prepared once per (variant, input set): a timed launch is one driver call
    launchers = {name: [gemm.prepare(a_sets[i], w_sets[i], outs[name][i % len(outs[name])], name) for i in range(sets)]
                 for name in timed}  # fmt: skip

    def side(name):
        if name == gemm.CUBLAS:
            return lambda i: cupy.matmul(a_sets[i], w_sets[i].T, out=outs[name][i % len(outs[name])])
        return lambda i: launchers[name][i]()

    times = time_interleaved({name: side(name) for name in [gemm.CUBLAS, *timed]}, sets, reps)
    med = {name: median_us(ts) for name, ts in times.items()}
    for name in [gemm.CUBLAS, *timed]:  # outputs of one input set for the error column
        outs[name][0].fill(cupy.nan)
        side(name)(0)
    flop = 2.0 * m * n * k
    cublas_us, ours_us = med[gemm.CUBLAS], med.get(variant) if variant else None
    extra = {name: {"us": med[name], "rel_err": rel_err(outs[name][0], outs[gemm.CUBLAS][0])} for name in extra_ok}
    row = {"shape": case.label, "m": m, "n": n, "k": k, "ops": ", ".join(case.ops), "variant": variant or "cublas (declined)",
           "guard": guard, "ours_us": ours_us, "cublas_us": cublas_us, "ratio": cublas_us / ours_us if ours_us else None,
           "ours_tflops": flop / ours_us / 1e6 if ours_us else None, "cublas_tflops": flop / cublas_us / 1e6,
           "rel_err": rel_err(outs[variant][0], outs[gemm.CUBLAS][0]) if variant else None,
           "guards": ", ".join(f"{g}: {v}" for g, v in guards.items()), "variants": extra,
           "others": others_text(extra)}  # fmt: skip
    del a_sets, w_sets, outs, launchers
    cupy.get_default_memory_pool().free_all_blocks()
    return row


COLUMNS = [
    Column("shape", "shape MxNxK"), Column("ops", "op"), Column("ours_us", "ours µs", fixed(1)),
    Column("cublas_us", "cuBLAS µs", fixed(1)), Column("ratio", "cuBLAS/ours", fixed(3)),
    Column("ours_tflops", "ours TFLOP/s", fixed(1)), Column("cublas_tflops", "cuBLAS TFLOP/s", fixed(1)),
    Column("variant", "variant"), Column("guards", "guards"), Column("rel_err", "rel-err", sci),
    Column("others", "other variants µs"),
]  # fmt: skip


def summary_lines(rows: list[dict]) -> list[str]:
    lines = []
    for what, part in (("FP16", [r for r in rows if not r["variant"].startswith("nvfp4")]),
                       ("NVFP4 (cuBLAS FP16 on the dequantized weights)", [r for r in rows if r["variant"].startswith("nvfp4")])):  # fmt: skip
        ratios = [(r["ratio"], r) for r in part if r["ratio"]]
        if not ratios:
            continue
        geomean = math.exp(sum(math.log(x) for x, _ in ratios) / len(ratios))
        low, worst = min(ratios, key=lambda item: item[0])
        lines.append(f"{what}: geomean cuBLAS/ours over {len(ratios)} shapes: {geomean:.3f}; lowest {low:.3f} at "
                     f"{worst['shape']} ({worst['ops']})")  # fmt: skip
    return lines or ["no shape ran on our kernel"]


def run_gemm_bench(models, shapes, ms, reps: int, guard: str, variants=(), metadata: dict | None = None,
                   progress=None) -> BenchReport:  # fmt: skip
    from impbench import device
    from impbench.kernels import gemm
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    gemm.get_guard(guard)
    if variants == ("all",):
        variants = tuple(v.name for v in gemm.candidates("small-n"))
    for name in variants:
        if name not in gemm.VARIANTS:
            raise InputError(f"unknown variant {name!r}; accepted: all, {', '.join(gemm.VARIANTS)}")
    cases = [(case, time_case) for case in build_cases(models, shapes, ms)]
    if device.compute_capability() == 90:  # the dense NVFP4 GEMM is built for Hopper only
        cases += [(case, None) for case in nvfp4_cases(models, ms)] if models or not shapes else []
    rows = []
    with no_pdl(), Telemetry(pci_bus_id=device.pci_bus_id()) as telemetry:  # each launch alone, as cuBLAS's are
        for case, timer in cases:
            with telemetry.sample() as sampler:
                row = time_case(case, guard, reps, variants) if timer else time_nvfp4_case(case, reps)
            row["sm_mhz"] = sampler.result.sm_mhz_median
            rows.append(row)
            if progress:
                ours = "-" if row["ours_us"] is None else f"{row['ours_us']:.1f}"
                progress(f"{row['shape']} cublas {row['cublas_us']:.1f} us, {row['variant']} {ours} us")
    return BenchReport("gemm", rows, COLUMNS, summary_lines(rows), metadata or {},
                       {"models": list(models), "shapes": list(shapes), "m": list(ms), "reps": reps, "guard": guard,
                        "variants": list(variants)},
                       title=f"Dense FP16 GEMM, guard {guard}; median of {reps} reps.")  # fmt: skip
