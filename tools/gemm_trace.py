"""Per-CTA timeline of GEMM launches (an experiment for docs/notes/gemm.md, not part of the tool).

Builds gemm_fp16.cu with -DIMPGEMM_TRACE, whose tma / tsk kernels write each CTA's SM and the global
time of four points (start, first stage landed, main loop done, end), then for every shape and
variant launches on cold inputs (rotating sets, as `impbench gemm` does) and prints, as medians over
the repetitions: CTAs, SMs used, most CTAs on one SM, the start spread of the grid, the first-stage
latency, the main loop, the epilogue, the first-start-to-last-end span, and the event time of the
same launch (and of cuBLAS) -- event time minus span is what lies outside the kernel's CTAs.

    python3 tools/gemm_trace.py --shape 2048x128x2048 --variants tma_128x64,tsk_64x128k4 [--reps 15]

A tsk variant written `name@G` runs with tile order G (bands of G M tiles, gemm.tsk_group), `name/direct`
with the output stored from registers instead of by TMA (both: `name@G/direct`); --sm-order prints the SM
of each CTA of one launch, in block order.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def experiment_launcher(a, w, out, spec: str):
    """gemm.prepare of a variant written `name[@G][/direct]` (see the module's doc)."""
    from impbench.kernels import gemm

    spec, _, store = spec.partition("/")
    name, _, group = spec.partition("@")
    return gemm.prepare(a, w, out, name, int(group) if group else None, store != "direct")


def traced_module():
    """The gemm family compiled with IMPGEMM_TRACE, installed as the compile cache's module."""
    import cupy

    from impbench.kernels import gemm, modules

    code = modules.module_source(gemm.FAMILY)
    module = cupy.RawModule(code=code, options=modules.nvrtc_options(code, ("-DIMPGEMM_TRACE",)), backend="nvrtc")
    module.compile()
    modules.replace_module(gemm.FAMILY, module)
    return module


POINTS = 9  # gemm_fp16.cu TRACE_POINTS: a row is [POINTS global times, POINTS clocks, smid]


def launch_stats(rows, event_us: float, sm_mhz: float) -> dict:
    """One launch's timeline (rows: [CTAs, 2 POINTS + 1] uint64 of the CTAs that ran) in microseconds;
    the tsk epilogue's parts (send, wait for the peers' partials, sum and store) from SM clocks."""
    import numpy as np

    t = rows[:, :4].astype(np.float64) / 1000.0
    start, first, loop, end = (t[:, i] for i in range(4))
    per_sm = np.bincount(rows[:, 2 * POINTS].astype(np.int64))
    clk = rows[:, POINTS : 2 * POINTS].astype(np.float64) / sm_mhz
    parts = {}
    if (rows[:, 6] != 0).all():  # a split tsk launch: its prologue and epilogue in parts
        med = lambda a, b: float(np.median(clk[:, b] - clk[:, a]))  # noqa: E731
        parts = {"init": med(0, 7), "issue1": med(7, 8), "issue": med(8, 4), "landed": med(4, 1),
                 "send": med(2, 5), "wait": med(5, 6), "store": med(6, 3)}  # fmt: skip
    return parts | {
        "ctas": len(rows), "sms": int((per_sm > 0).sum()), "max_per_sm": int(per_sm.max()),
        "start_spread": start.max() - start.min(), "first": float(np.median(first - start)),
        "first_max": float((first - start).max()), "loop": float(np.median(loop - first)),
        "loop_max": float((loop - first).max()), "epilogue": float(np.median(end - loop)),
        "span": end.max() - start.min(), "event": event_us,
    }  # fmt: skip


def trace_case(module, m: int, n: int, k: int, variants, reps: int, sm_order: bool = False) -> list[str]:
    import cupy

    from impbench.bench import timing
    from impbench.kernels import gemm

    sets = max(4, -(-160 * 2**20 // (2 * (m * k + n * k + m * n))))  # > an H200's L2 of inputs
    rng = cupy.random.default_rng(m + n + k)
    a = [rng.standard_normal((m, k), dtype=cupy.float32).astype(cupy.float16) for _ in range(sets)]
    w = [(rng.standard_normal((n, k), dtype=cupy.float32) / k**0.5).astype(cupy.float16) for _ in range(sets)]
    out = cupy.empty((m, n), cupy.float16)
    pointer = module.get_global("_ZN7impgemm13impgemm_traceE")  # TRACE_CTAS x TRACE_SLOTS
    trace = cupy.ndarray((4096, 2 * POINTS + 1), cupy.uint64, memptr=pointer)
    spin, stream = timing.spin(30), cupy.cuda.get_current_stream()

    def timed(run, i):
        spin()
        e0, e1 = cupy.cuda.Event(), cupy.cuda.Event()
        e0.record(stream)
        run(i)
        e1.record(stream)
        e1.synchronize()
        return cupy.cuda.get_elapsed_time(e0, e1) * 1000.0

    lines = []
    cublas = [timed(lambda i: cupy.matmul(a[i], w[i].T, out=out), rep % sets) for rep in range(reps + 3)][3:]
    lines.append(f"{m}x{n}x{k} cublas event {statistics.median(cublas):.2f} us")
    for name in variants:
        runs = [experiment_launcher(a[i], w[i], out, name) for i in range(sets)]
        stats = []
        for rep in range(reps + 3):
            trace.fill(0)
            event = timed(lambda i: runs[i](), rep % sets)
            rows = cupy.asnumpy(trace)
            rows = rows[rows[:, 0] != 0]
            if rep >= 3 and len(rows) and (rows[:, 3] != 0).all():
                stats.append(launch_stats(rows, event, gemm.device_info().sm_mhz))
                if sm_order and len(stats) == 1:
                    lines.append(f"  {name} SM by block: " + " ".join(str(int(x)) for x in rows[:, 2 * POINTS]))
        if not stats:
            lines.append(f"  {name}: no trace (not a tma / tsk variant?)")
            continue
        med = {key: statistics.median(s[key] for s in stats) for key in stats[0]}
        lines.append(
            f"  {name:16s} ctas {med['ctas']:.0f} sms {med['sms']:.0f} max/sm {med['max_per_sm']:.0f} | start spread "
            f"{med['start_spread']:.2f} first {med['first']:.2f} (max {med['first_max']:.2f}) loop {med['loop']:.2f} "
            f"(max {med['loop_max']:.2f}) epi {med['epilogue']:.2f} | span {med['span']:.2f} event {med['event']:.2f}"
            + (f" | clocks: init {med['init']:.2f} issue1 {med['issue1']:.2f} issue {med['issue']:.2f} landed "
               f"{med['landed']:.2f} send {med['send']:.2f} wait {med['wait']:.2f} store {med['store']:.2f}"
               if "issue" in med else "")
        )  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", action="append", required=True, help="MxNxK, repeatable")
    parser.add_argument("--variants", required=True, help="comma-separated tma_* / tsk_* variants")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--sm-order", action="store_true", help="print each CTA's SM of one launch")
    args = parser.parse_args()
    from impbench.kernels.driver import no_pdl

    module = traced_module()
    with no_pdl():
        for shape in args.shape:
            m, n, k = (int(x) for x in shape.split("x"))
            for line in trace_case(module, m, n, k, args.variants.split(","), args.reps, args.sm_order):
                print(line, flush=True)


if __name__ == "__main__":
    main()
