"""`impbench ops`: the engine's small ops and routing kernels at a model's shapes, against their floors.

Per op and chunk length T: device µs per launch from a replayed graph of ~200 launches over rotating
input sets larger than the L2 (cold: inputs from DRAM), and again over one set (hot: inputs in L2, as
in the engine where the producer just wrote them); the floor, bytes moved over the GPU's peak HBM
bandwidth (impbench.gpus); host µs per eager call through the wrapper (checks + launch) and through a
prepared launcher (launch only). The engine's ops come first; `--variants` adds the alternative
forms (thread counts, the narrow qkv_post, the two-launch routing the engine's fused form replaced).
A model with Gated DeltaNet layers adds their ops (conv_prep, which also carries the conv state, and
gated_rmsnorm); one with an attention output gate, attn_gate (and qkv_post on its column slice, partial
rotary); one with a shared expert, gated_act and the combines with the shared row added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from impbench.bench.report import BenchReport, Column, below_floor_lines, fixed
from impbench.bench.timing import host_us, median_us, set_count, time_graph

LAUNCHES_PER_GRAPH = 200


@dataclass(frozen=True)
class Geometry:
    """The shapes an op sees, from a preset (attention: the preset's head geometry, which is the full
    layers' for Qwen3.6); 0 / False where it has no linear layers, no output gate or no shared expert."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    experts: int
    top_k: int
    vocab: int
    eps: float
    theta: float
    rotary_dim: int = 0  # 0: head_dim
    attn_gate: bool = False  # q_proj also emits the gate: qkv_post reads a column slice, then attn_gate
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    linear_key_dim: int = 0
    linear_value_dim: int = 0
    shared_inter: int = 0
    shared_gate: bool = False
    activation: str = "silu"

    @classmethod
    def of(cls, preset) -> Geometry:
        p = preset
        linear = "linear" in p.layer_types
        return cls(p.hidden_size, p.num_attention_heads, p.num_kv_heads, p.head_dim, p.num_experts, p.experts_per_token,
                   p.vocab_size, p.rms_norm_eps, p.rope_theta, rotary_dim=int(p.head_dim * p.partial_rotary_factor),
                   attn_gate=p.attn_output_gate,
                   linear_key_heads=p.linear_num_key_heads if linear else 0, linear_value_heads=p.linear_num_value_heads if linear else 0,
                   linear_key_dim=p.linear_key_head_dim if linear else 0, linear_value_dim=p.linear_value_head_dim if linear else 0,
                   shared_inter=p.shared_expert_intermediate_size, shared_gate=p.shared_expert_gate, activation=p.activation)  # fmt: skip

    @property
    def conv_channels(self) -> int:
        return 2 * self.linear_key_heads * self.linear_key_dim + self.linear_value_heads * self.linear_value_dim


@dataclass
class Case:
    """One input set of an op: a prepared launcher, the eager wrapper call, and the bytes it moves."""

    launch: Callable[[], None]
    call: Callable[[], None]
    nbytes: int


def _f16(shape, scale: float = 1.0):
    """Random FP16 drawn on the device: a host RNG for ~100 MB of sets took longer than the timing."""
    import cupy

    return (cupy.random.standard_normal(shape, dtype=cupy.float32) * scale).astype(cupy.float16)


def _embed(g: Geometry, t: int, table) -> Case:
    import cupy

    from impbench.kernels import ops

    ids = cupy.random.randint(0, g.vocab, t, dtype=cupy.int32)
    out = _f16((t, g.hidden))
    return Case(ops.prepare(ops.embed, ids, table, out), lambda: ops.embed(ids, table, out), 4 * t * g.hidden)


def _rmsnorm(g: Geometry, t: int, threads: int | None = None) -> Case:
    from impbench.kernels import ops

    x, w, out = _f16((t, g.hidden)), _f16((g.hidden,)), _f16((t, g.hidden))
    return Case(ops.prepare(ops.rmsnorm, x, w, g.eps, out, threads=threads), lambda: ops.rmsnorm(x, w, g.eps, out),
                4 * t * g.hidden)  # fmt: skip


def _add_rmsnorm(g: Geometry, t: int, threads: int | None = None, kperm: bool = False) -> Case:
    from impbench.kernels import ops

    x, resid, w, out = _f16((t, g.hidden)), _f16((t, g.hidden)), _f16((g.hidden,)), _f16((t, g.hidden))
    kp = _f16((t, g.hidden)) if kperm else None
    launch = ops.prepare(ops.add_rmsnorm, x, resid, w, g.eps, out, threads=threads, out_kperm=kp)
    return Case(launch, lambda: ops.add_rmsnorm(x, resid, w, g.eps, out, out_kperm=kp), (8 + 2 * kperm) * t * g.hidden)


def _qkv_post(g: Geometry, t: int, form: str = "auto", steps: int = 4) -> Case:
    """With an output gate, qkv is the [q | k | v] column slice of the projection's [q | k | v | gate] rows."""
    import cupy

    from impbench.kernels import ops

    cols = (g.heads + 2 * g.kv_heads) * g.head_dim
    proj = _f16((t, cols + g.heads * g.head_dim)) if g.attn_gate else _f16((t, cols))
    max_len = 4 * max(t, 1024)
    args = (proj[:, :cols], _f16((g.head_dim,)), _f16((g.head_dim,)), g.eps, g.theta, cupy.asarray([max_len // 2], cupy.int32),
            _f16((t, g.heads, g.head_dim)), _f16((max_len, g.kv_heads, g.head_dim)), _f16((max_len, g.kv_heads, g.head_dim)))  # fmt: skip
    rotary = {"rotary_dim": g.rotary_dim or g.head_dim}
    return Case(ops.prepare(ops.qkv_post, *args, form=form, steps=steps, **rotary), lambda: ops.qkv_post(*args, **rotary),
                4 * t * cols)  # fmt: skip


def _qkvz_output(g: Geometry, t: int):
    """The merged in_proj_qkvz output as the engine holds it: the conv's input in the first conv_channels
    columns, z after them; the ops read column slices of it (rows conv_channels + Hv dv apart)."""
    return _f16((t, g.conv_channels + g.linear_value_heads * g.linear_value_dim))


def _conv_prep(g: Geometry, t: int) -> Case:
    """The linear layer's prologue; mixed is the raw in_proj_qkv output (columns of the merged in_proj_qkvz
    output, as the engine passes it), a and b one [T, 2 Hv] buffer's halves."""
    import cupy

    from impbench.kernels import ops

    c, hv = g.conv_channels, g.linear_value_heads
    ba = _f16((t, 2 * hv))
    args = (_qkvz_output(g, t)[:, :c], _f16((c, ops.CONV_TAPS), 0.3), _f16((ops.CONV_TAPS - 1, c)), ba[:, hv:], ba[:, :hv],
            cupy.random.uniform(0.0, 2.7, hv, dtype=cupy.float32), cupy.random.standard_normal(hv, dtype=cupy.float32),
            _f16((t, g.linear_key_heads, g.linear_key_dim)), _f16((t, g.linear_key_heads, g.linear_key_dim)),
            _f16((t, hv, g.linear_value_dim)), cupy.empty((t, hv), cupy.float32), cupy.empty((t, hv), cupy.float32), g.eps)  # fmt: skip
    return Case(ops.prepare(ops.conv_prep, *args), lambda: ops.conv_prep(*args), 4 * t * c + 12 * t * hv + 2 * c * (3 * ops.CONV_TAPS - 2))


def _gated_rmsnorm(g: Geometry, t: int) -> Case:
    from impbench.kernels import ops

    hv, dv = g.linear_value_heads, g.linear_value_dim
    z = _qkvz_output(g, t)[:, g.conv_channels :]
    args = (_f16((t, hv, dv)), z, _f16((dv,)), g.eps, _f16((t, hv * dv)))
    return Case(ops.prepare(ops.gated_rmsnorm, *args), lambda: ops.gated_rmsnorm(*args), 6 * t * hv * dv)


def _attn_gate(g: Geometry, t: int) -> Case:
    """The gate read as the last Hq * D columns of the q projection's [q | k | v | gate] rows; out in place."""
    from impbench.kernels import ops

    q_cols = g.heads * g.head_dim
    proj = _f16((t, 2 * q_cols + 2 * g.kv_heads * g.head_dim))
    attn = _f16((t, g.heads, g.head_dim))
    args = (attn, proj[:, proj.shape[1] - q_cols :], attn.reshape(t, q_cols))
    return Case(ops.prepare(ops.attn_gate, *args), lambda: ops.attn_gate(*args), 6 * t * q_cols)


def _gated_act(g: Geometry, t: int) -> Case:
    from impbench.kernels import ops

    gate_up, out = _f16((t, 2 * g.shared_inter)), _f16((t, g.shared_inter))
    return Case(ops.prepare(ops.gated_act, gate_up, out, g.activation), lambda: ops.gated_act(gate_up, out, g.activation),
                6 * t * g.shared_inter)  # fmt: skip


def _routing_buffers(g: Geometry, t: int):
    import cupy

    rows = t * g.top_k
    return (cupy.empty((t, g.top_k), cupy.int32), cupy.empty((t, g.top_k), cupy.float32), cupy.empty(g.experts + 1, cupy.int32),
            cupy.empty(rows, cupy.int32), cupy.empty(rows, cupy.float32), cupy.empty((t, g.top_k), cupy.int32))  # fmt: skip


def _routing_case(g: Geometry, t: int, steps_of) -> Case:
    """Routing as two prepared launches, `steps_of(logits, ids, weights, offsets, row_token, row_weight,
    token_rows)`: logits in; ids, weights, offsets and the permutation out."""
    logits = _f16((t, g.experts))
    steps = steps_of(logits, *_routing_buffers(g, t))

    def both() -> None:
        for step in steps:
            step()

    rows = t * g.top_k
    return Case(both, both, t * g.experts * 2 + t * g.top_k * 8 + rows * 20)


def _topk_permute(g: Geometry, t: int) -> Case:
    """The engine's routing: topk_count + permute_counted, one case (two launches)."""
    import cupy

    from impbench.kernels import routing

    def steps(logits, ids, weights, offsets, row_token, row_weight, token_rows):
        counts = cupy.empty((routing.count_blocks(t), g.experts), cupy.int32)
        return [routing.prepare(routing.topk_count, logits, g.top_k, True, ids, weights, token_rows, counts),
                routing.prepare(routing.permute_counted, ids, weights, counts, offsets, row_token, row_weight, token_rows)]  # fmt: skip

    return _routing_case(g, t, steps)


def _topk_then_build(g: Geometry, t: int) -> Case:
    """The two-launch routing the fused form replaced: topk_softmax, then build_permutation."""
    from impbench.kernels import routing

    def steps(logits, ids, weights, offsets, row_token, row_weight, token_rows):
        return [routing.prepare(routing.topk_softmax, logits, g.top_k, True, ids, weights),
                routing.prepare(routing.build_permutation, ids, weights, g.experts, offsets, row_token, row_weight,
                                token_rows)]  # fmt: skip

    return _routing_case(g, t, steps)


def _combine(g: Geometry, t: int, norm: bool, shared: bool = False) -> Case:
    """`shared`: the shared expert's row added too, gated by a column slice of a [T, E + 1] router output."""
    import cupy

    from impbench.kernels import routing

    rows = t * g.top_k
    token_rows = cupy.random.permutation(rows).astype(cupy.int32).reshape(t, g.top_k)
    y, resid = _f16((rows, g.hidden)), _f16((t, g.hidden))
    extra = {}
    if shared:
        extra["shared"] = _f16((t, g.hidden))
        extra["shared_gate"] = _f16((t, g.experts + 1))[:, g.experts :] if g.shared_gate else None
    moved = 2 * rows * g.hidden + 4 * t * g.hidden + (2 * t * g.hidden + 2 * t * g.shared_gate if shared else 0)
    if norm:
        w, normed = _f16((g.hidden,)), _f16((t, g.hidden))
        args = (y, token_rows, resid, resid, w, g.eps, normed)
        return Case(routing.prepare(routing.combine_rmsnorm, *args, **extra), lambda: routing.combine_rmsnorm(*args, **extra),
                    moved + 2 * t * g.hidden)  # fmt: skip
    args = (y, token_rows, resid, resid, None)
    return Case(routing.prepare(routing.combine, *args, **extra), lambda: routing.combine(*args, **extra), moved)


def cases(geometry: Geometry, variants: bool) -> dict[str, Callable[[int], Case]]:
    """op name -> a maker of one input set for T tokens: the engine's ops, then (variants) the others."""
    g = geometry
    table = {}

    def embed(t: int) -> Case:
        if "table" not in table:  # one embedding table for every set: the vocab rows read are what moves
            table["table"] = _f16((g.vocab, g.hidden))
        return _embed(g, t, table["table"])

    engine = {
        "embed": embed,
        "rmsnorm": lambda t: _rmsnorm(g, t),
    }
    if g.linear_value_heads:  # Gated DeltaNet layers
        engine.update({"conv_prep": lambda t: _conv_prep(g, t), "gated_rmsnorm": lambda t: _gated_rmsnorm(g, t)})
    engine["qkv_post"] = lambda t: _qkv_post(g, t)
    if g.attn_gate:
        engine["attn_gate"] = lambda t: _attn_gate(g, t)
    engine.update({
        "add_rmsnorm": lambda t: _add_rmsnorm(g, t),
        "add_rmsnorm+kperm": lambda t: _add_rmsnorm(g, t, kperm=True),
        "topk_count+permute_counted": lambda t: _topk_permute(g, t),
    })  # fmt: skip
    if g.shared_inter:  # the shared expert: its activation, and its row in the combine
        engine.update({"gated_act": lambda t: _gated_act(g, t),
                       "combine_rmsnorm+shared": lambda t: _combine(g, t, norm=True, shared=True),
                       "combine+shared": lambda t: _combine(g, t, norm=False, shared=True)})  # fmt: skip
    else:
        engine.update({"combine_rmsnorm": lambda t: _combine(g, t, norm=True), "combine": lambda t: _combine(g, t, norm=False)})
    if not variants:
        return engine
    others = {"rmsnorm/64thr": lambda t: _rmsnorm(g, t, 64), "rmsnorm/256thr": lambda t: _rmsnorm(g, t, 256),
              "add_rmsnorm/64thr": lambda t: _add_rmsnorm(g, t, 64), "add_rmsnorm/256thr": lambda t: _add_rmsnorm(g, t, 256),
              "qkv_post/narrow": lambda t: _qkv_post(g, t, "narrow"), "qkv_post/wide_s2": lambda t: _qkv_post(g, t, "wide", 2),
              "qkv_post/wide_s8": lambda t: _qkv_post(g, t, "wide", 8),
              "topk_softmax+build_permutation": lambda t: _topk_then_build(g, t)}  # fmt: skip
    if g.rotary_dim and g.rotary_dim != g.head_dim:
        del others["qkv_post/narrow"]  # rotates all D dims only
    return {**engine, **others}


def time_op(make: Callable[[int], Case], tokens: int) -> dict:
    """One op at `tokens`: cold (rotating sets) and hot (one set) µs per launch, host µs per call."""
    first = make(tokens)
    sets = [first] + [make(tokens) for _ in range(set_count(first.nbytes) - 1)]
    cold = time_graph([case.launch for case in sets], LAUNCHES_PER_GRAPH)
    hot = time_graph([first.launch], LAUNCHES_PER_GRAPH)
    return {"us": median_us(cold), "min_us": min(cold), "max_us": max(cold), "hot_us": median_us(hot), "sets": len(sets),
            "bytes_moved": first.nbytes, "host_wrapper_us": host_us(first.call), "host_prepared_us": host_us(first.launch)}  # fmt: skip


COLUMNS = [
    Column("op", "op"), Column("tokens", "T"), Column("us", "µs (cold)", fixed(2)), Column("hot_us", "µs (hot)", fixed(2)),
    Column("floor_us", "floor µs", fixed(2)), Column("x_floor", "x floor", fixed(2)), Column("sets", "sets"),
    Column("host_wrapper_us", "host µs wrapper", fixed(1)), Column("host_prepared_us", "host µs prepared", fixed(1)),
    Column("sm_mhz", "SM MHz", fixed(0)),
]  # fmt: skip


def run_ops_bench(preset, token_counts: list[int], variants: bool, metadata: dict, progress=None) -> BenchReport:
    import cupy

    from impbench import device
    from impbench.gpus import match_gpu_name
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    gpu = match_gpu_name(str(metadata.get("gpu_name", "")))
    geometry = Geometry.of(preset)
    made = cases(geometry, variants)
    rows = []
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream, no_pdl(), Telemetry(pci_bus_id=device.pci_bus_id()) as telemetry:
        for name, make in made.items():
            for tokens in token_counts:
                with telemetry.sample() as sampler:
                    timed = time_op(make, tokens)
                floor = None if gpu is None else gpu.floor_us(0.0, timed["bytes_moved"])[0]
                row = {"model": preset.name, "op": name, "tokens": tokens, **timed, "floor_us": floor,
                       "x_floor": None if floor is None else timed["us"] / floor, "sm_mhz": sampler.result.sm_mhz_median}  # fmt: skip
                rows.append(row)
                if progress:
                    progress(f"{name} T={tokens}: {timed['us']:.2f} µs cold, {timed['hot_us']:.2f} hot")
                cupy.get_default_memory_pool().free_all_blocks()
    summary = [f"floor: bytes moved / peak HBM bandwidth of {gpu.name} ({gpu.mem_tb_s:.2f} TB/s, {gpu.basis})"
               if gpu else "floor: n/a (no ceilings for this GPU)"]  # fmt: skip
    summary += below_floor_lines(rows, lambda r: f"{r['op']} T={r['tokens']}")
    return BenchReport("ops", rows, COLUMNS, summary, metadata,
                       {"model": preset.name, "tokens": token_counts, "variants": variants},
                       title=f"{preset.name} small ops, µs per launch from a replayed graph of {LAUNCHES_PER_GRAPH} launches.")  # fmt: skip
