"""`impbench gdn`: our chunked gated delta rule against flash-linear-attention's, one layer and one chunk.

Per chunk length T, at a preset's Gated DeltaNet geometry (B = 1; Qwen3.6: 16 key heads, 32 value
heads, dk = dv = 128), on inputs drawn as the model draws them (q, k L2-normalised, q scaled by
1/sqrt(dk), g and beta from impbench.reference.gated_delta.decay_and_beta, a random initial state):

- ours: both kernels of impbench.kernels.gated_delta, device µs per call of a replayed CUDA graph
  (bench.timing.time_graph) over rotating input sets larger than the L2 (cold) and over one set (hot);
- FLA, where `torch` and `fla` import: fla.ops.gated_delta_rule.chunk_gated_delta_rule on torch views of
  the same device memory (fp16 q, k, v, fp32 g, beta and state, the key and value heads as they are),
  captured in a torch.cuda.CUDAGraph over the same sets and timed the same way: device µs per call from
  CUDA events around replays. Its eager call is bound by its host launches, so only graphs are compared;
- checks: ours against the float64 reference (max |error| over max |reference| of the output and the
  final state), FLA's output and final state against ours (||a - b|| / ||b||), so the two time one function;
- the floor: impbench.plan's gated_delta_rule op for one chunk of T tokens on this GPU's ceilings.

Our launches are built without programmatic dependent launch (kernels.driver.no_pdl), so neither side
overlaps one call with the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from impbench.bench.report import BenchReport, Column, below_floor_lines, fixed, sci
from impbench.errors import InputError

LAUNCHES_PER_GRAPH = 40  # calls captured in one graph (each call is 2 of our kernels, ~6 of FLA's)
SLOW_DECAY_SHIFT = 6.0  # odd value heads: dt_bias lowered by this, so their state lasts across chunks


@dataclass(frozen=True)
class GdnShape:
    """The Gated DeltaNet geometry of a preset, checked against the kernels that exist."""

    model: str
    key_heads: int
    value_heads: int
    dk: int
    dv: int

    @classmethod
    def of(cls, preset) -> GdnShape:
        from impbench.kernels.gated_delta import GEOMETRIES

        if "linear" not in preset.layer_types:
            raise InputError(f"model {preset.name} has no Gated DeltaNet layers; pick a qwen3_5_moe preset (qwen3.6, tiny-qwen3.6)")
        shape = cls(preset.name, preset.linear_num_key_heads, preset.linear_num_value_heads, preset.linear_key_head_dim,
                    preset.linear_value_head_dim)  # fmt: skip
        if (shape.dk, shape.dv) not in GEOMETRIES:
            raise InputError(f"model {preset.name}: head dims (dk, dv) = ({shape.dk}, {shape.dv}) have no kernel; built: {GEOMETRIES}")
        return shape


def draw_inputs(shape: GdnShape, tokens: int, seed: int) -> dict[str, np.ndarray]:
    """Host inputs of one chunk in the kernels' dtypes, drawn as the model draws them: A_log = log U(1, 16),
    dt_bias ~ N(0, 1) (the engine's weights), and on every other value head dt_bias lowered by
    SLOW_DECAY_SHIFT so that its decay is slow and the state matters across WY chunks."""
    from impbench.reference.gated_delta import decay_and_beta, l2norm

    rng = np.random.default_rng(seed)
    hk, hv, dk, dv = shape.key_heads, shape.value_heads, shape.dk, shape.dv
    dt_bias = rng.standard_normal(hv) - SLOW_DECAY_SHIFT * (np.arange(hv) % 2)
    g, beta = decay_and_beta(rng.standard_normal((tokens, hv)), rng.standard_normal((tokens, hv)),
                             np.log(rng.uniform(1.0, 16.0, hv)), dt_bias)  # fmt: skip
    return {
        "q": (l2norm(rng.standard_normal((tokens, hk, dk))) / math.sqrt(dk)).astype(np.float16),
        "k": l2norm(rng.standard_normal((tokens, hk, dk))).astype(np.float16),
        "v": rng.standard_normal((tokens, hv, dv)).astype(np.float16),
        "g": g.astype(np.float32),
        "beta": beta.astype(np.float32),
        "state": (0.5 * rng.standard_normal((hv, dk, dv))).astype(np.float32),
    }


def reference_error(host: dict[str, np.ndarray], out, state) -> float:
    """max |ours - reference| / max |reference| over the output and the final state (the larger), the
    reference in float64 on the very fp16 / fp32 inputs."""
    from impbench.reference.gated_delta import gated_delta_chunked

    f64 = {name: value.astype(np.float64) for name, value in host.items()}
    o_ref, s_ref = gated_delta_chunked(f64["q"], f64["k"], f64["v"], f64["g"], f64["beta"], f64["state"])
    errors = []
    for ours, ref in ((out, o_ref), (state, s_ref)):
        ours = np.asarray(ours, dtype=np.float64)
        errors.append(float(np.abs(ours - ref).max() / np.abs(ref).max()) if np.isfinite(ours).all() else math.inf)
    return max(errors)


@dataclass
class InputSet:
    """One chunk's device arrays: the drawn inputs (their "state" is kept as drawn), a copy of that state
    which our launcher updates in place, the output and the workspace."""

    arrays: dict
    state: object
    out: object
    work: object
    nbytes: int


def _upload(shape: GdnShape, host: dict[str, np.ndarray]) -> InputSet:
    import cupy

    from impbench.kernels import gated_delta

    tokens = host["q"].shape[0]
    arrays = {name: cupy.asarray(value) for name, value in host.items()}
    work = gated_delta.workspace(tokens, shape.value_heads, shape.dk, shape.dv)
    out = cupy.empty((tokens, shape.value_heads, shape.dv), cupy.float16)
    nbytes = sum(a.nbytes for a in arrays.values()) + out.nbytes + work.t_inv.nbytes * 2 + work.gamma_beta.nbytes
    return InputSet(arrays, arrays["state"].copy(), out, work, nbytes)


def _ours(s: InputSet, kernels: str = "both") -> Callable[[], None]:
    from impbench.kernels import gated_delta

    a = s.arrays
    return gated_delta.prepare(a["q"], a["k"], a["v"], a["g"], a["beta"], s.state, s.out, s.work, kernels=kernels)


# -- flash-linear-attention ------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split()) or type(exc).__name__}"


def fla_version() -> tuple[str | None, str]:
    """(versions line, "") where torch and FLA import, else (None, the one-line reason)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        import torch
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
    except Exception as exc:  # noqa: BLE001 -- ImportError, or a broken install raising anything on import
        return None, f"FLA not timed: {_one_line(exc)}"
    try:
        fla = version("fla-core")
    except PackageNotFoundError:
        fla = "unknown version"
    return f"fla-core {fla}, torch {torch.__version__}", ""


def _fla_call(s: InputSet):
    """A no-argument call of FLA's chunk_gated_delta_rule on torch views of the set's memory (batch 1),
    returning (o [1, T, Hv, dv], final state [1, Hv, dk, dv])."""
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    a = {name: torch.as_tensor(value, device="cuda").unsqueeze(0) for name, value in s.arrays.items()}

    def call():
        with torch.inference_mode():
            return chunk_gated_delta_rule(a["q"], a["k"], a["v"], a["g"], a["beta"], scale=1.0, initial_state=a["state"],
                                          output_final_state=True, use_qk_l2norm_in_kernel=False)  # fmt: skip

    return call


def time_torch_graph(calls: list[Callable[[], object]], launches: int, reps: int) -> list[float]:
    """Device µs per call of `calls` (one per input set) replayed from one torch.cuda.CUDAGraph of about
    `launches` calls, one value per replay; every call runs eagerly first (Triton compiles and autotunes)."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for call in calls:
                call()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    passes = max(1, launches // len(calls))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(passes):
            for call in calls:
                call()
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    per_call = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        stop.record()
        stop.synchronize()
        per_call.append(1e3 * start.elapsed_time(stop) / (passes * len(calls)))
    del graph
    return per_call


def _fla_case(sets: list[InputSet], ours_out, ours_state, reps: int) -> dict:
    """FLA's times and its agreement with ours (set 0 from its initial state); raises what FLA raises."""
    import cupy
    import torch

    from impbench.bench.accuracy import rel_err
    from impbench.bench.timing import median_us

    cupy.cuda.get_current_stream().synchronize()
    calls = [_fla_call(s) for s in sets]
    o, final = calls[0]()
    torch.cuda.synchronize()
    o_err = rel_err(cupy.asarray(o[0]), ours_out)
    state_err = rel_err(cupy.asarray(final[0]), ours_state)
    cold = time_torch_graph(calls, LAUNCHES_PER_GRAPH, reps)
    hot = time_torch_graph(calls[:1], LAUNCHES_PER_GRAPH, reps)
    del o, final
    torch.cuda.empty_cache()  # the graphs' private pools, before the next T
    return {"fla_us": median_us(cold), "fla_hot_us": median_us(hot), "fla_o_err": o_err, "fla_state_err": state_err}


# -- one chunk length --------------------------------------------------------------------------------


def _plan_floor_us(preset, tokens: int, gpu) -> float | None:
    """The plan's floor of the gated_delta_rule op for one layer and one chunk of `tokens` tokens."""
    if gpu is None:
        return None
    from impbench.plan import plan_prefill
    from impbench.prefill import PrefillSpec

    plan = plan_prefill(preset, PrefillSpec(tokens, 0), gpu)
    row = next(r for r in plan.ops if r.op == "gated_delta_rule")
    return row.floor_us / row.calls


def time_tokens(shape: GdnShape, tokens: int, reps: int, fla_ok: bool) -> tuple[dict, str | None]:
    """One chunk length: (row of numbers, a one-line FLA failure or None)."""
    import cupy

    from impbench.bench.timing import median_us, set_count, time_graph

    first_host = draw_inputs(shape, tokens, seed=tokens)
    first = _upload(shape, first_host)
    sets = [first] + [_upload(shape, draw_inputs(shape, tokens, seed=tokens + i)) for i in range(1, set_count(first.nbytes))]
    launchers = [_ours(s) for s in sets]

    # checks first, from the drawn initial state (the timing below keeps updating the states in place)
    launchers[0]()
    out0, state0 = first.out.copy(), first.state.copy()
    ref_err = reference_error(first_host, out0.get(), state0.get())

    cold = time_graph(launchers, LAUNCHES_PER_GRAPH, reps)
    hot = time_graph(launchers[:1], LAUNCHES_PER_GRAPH, reps)
    prep = time_graph([_ours(s, "prep") for s in sets], LAUNCHES_PER_GRAPH, reps)  # the state pass: the rest
    row = {"model": shape.model, "tokens": tokens, "ours_us": median_us(cold), "ours_min_us": min(cold),
           "ours_hot_us": median_us(hot), "prep_us": median_us(prep), "state_us": median_us(cold) - median_us(prep),
           "ref_err": ref_err, "sets": len(sets), "fla_us": None, "fla_hot_us": None,
           "fla_o_err": None, "fla_state_err": None}  # fmt: skip
    failure = None
    if fla_ok:
        try:  # FLA reads the drawn initial state (arrays["state"]), which no launch of ours writes
            row.update(_fla_case(sets, out0, state0, reps))
        except Exception as exc:  # noqa: BLE001 -- FLA (Triton, capture) failing is reported, never a number
            failure = f"FLA failed at T={tokens}: {_one_line(exc)}"
    row["fla_over_ours"] = None if row["fla_us"] is None else row["fla_us"] / row["ours_us"]
    del sets, launchers, first
    cupy.get_default_memory_pool().free_all_blocks()
    return row, failure


COLUMNS = [
    Column("tokens", "T"), Column("ours_us", "ours µs", fixed(2)), Column("fla_us", "FLA µs", fixed(2)),
    Column("fla_over_ours", "FLA/ours", fixed(3)), Column("floor_us", "plan floor µs", fixed(2)),
    Column("x_floor", "ours x floor", fixed(2)), Column("prep_us", "prep µs", fixed(2)),
    Column("state_us", "state pass µs", fixed(2)), Column("ours_hot_us", "ours hot µs", fixed(2)),
    Column("fla_hot_us", "FLA hot µs", fixed(2)), Column("ref_err", "ours vs f64", sci),
    Column("fla_o_err", "FLA vs ours (o)", sci), Column("fla_state_err", "FLA vs ours (S)", sci),
    Column("sm_mhz", "SM MHz", fixed(0)),
]  # fmt: skip


def run_gdn_bench(preset, token_counts: list[int], reps: int, metadata: dict, progress=None) -> BenchReport:
    import cupy

    from impbench import device
    from impbench.gpus import match_gpu_name
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    shape = GdnShape.of(preset)
    gpu = match_gpu_name(str(metadata.get("gpu_name", "")))
    versions, missing = fla_version()
    rows, failures = [], []
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream, no_pdl(), Telemetry(pci_bus_id=device.pci_bus_id()) as telemetry:
        for tokens in token_counts:
            with telemetry.sample() as sampler:
                row, failure = time_tokens(shape, tokens, reps, versions is not None)
            floor = _plan_floor_us(preset, tokens, gpu)
            row.update(floor_us=floor, x_floor=None if floor is None else row["ours_us"] / floor,
                       sm_mhz=sampler.result.sm_mhz_median)  # fmt: skip
            rows.append(row)
            if failure:
                failures.append(failure)
            if progress:
                fla = "-" if row["fla_us"] is None else f"{row['fla_us']:.2f}"
                progress(f"T={tokens}: ours {row['ours_us']:.2f} µs (hot {row['ours_hot_us']:.2f}, prep "
                         f"{row['prep_us']:.2f}), FLA {fla} µs, "
                         f"ours vs f64 {row['ref_err']:.1e}")  # fmt: skip
    summary = [f"FLA: {versions}, chunk_gated_delta_rule(scale=1.0, initial_state, output_final_state=True) on the same "
               "memory, fp16 q/k/v, fp32 g/beta/state" if versions else missing]  # fmt: skip
    summary += failures
    ratios = [r["fla_over_ours"] for r in rows if r["fla_over_ours"]]
    if ratios:
        summary.append(f"geomean FLA/ours over {len(ratios)} T: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} "
                       "(> 1: ours faster)")  # fmt: skip
    summary.append(f"floor: impbench plan's gated_delta_rule for one chunk on {gpu.name} ({gpu.basis})" if gpu
                   else "floor: n/a (no ceilings for this GPU)")  # fmt: skip
    summary += below_floor_lines(rows, lambda r: f"T={r['tokens']}")
    return BenchReport("gdn", rows, COLUMNS, summary, metadata,
                       {"model": preset.name, "tokens": token_counts, "reps": reps, "launches_per_graph": LAUNCHES_PER_GRAPH},
                       title=f"{preset.name} gated delta rule, one layer and one chunk (ours: both kernels; prep: the "
                             "first alone, state pass: the difference), device µs "
                             f"per call from replayed CUDA graphs of {LAUNCHES_PER_GRAPH} calls (cold: rotating input "
                             "sets larger than L2; hot: one set).")  # fmt: skip
