"""`impbench attn`: our attention kernel on each attention layer kind of a model, against PyTorch's
scaled_dot_product_attention (SDPA) and the plan floor.

Per layer kind (Gemma-4: sliding, head dim 256, window 1024, 16 / 8 heads; full, head dim 512, 16 / 2
heads), chunk length T and prefix P (keys already in the cache before the chunk): q [T, Hq, D] and a
KV cache of P + T rows, FP16, random, at the preset's softmax scale (q scaled so scores are ~ N(0, 4)).

- ours: the engine's launcher (attention.prepare; --variant picks another), device µs from CUDA events
  around each launch (bench.timing.time_interleaved: behind a spin kernel, the sides alternating), and
  per launch of a replayed CUDA graph of launches (time_graph) as the engine runs it.
- SDPA: torch.nn.functional.scaled_dot_product_attention on the same FP16 values, in the same event
  loop, in its own layout made once outside the timing: [1, H, S, D] with the KV heads repeated to Hq,
  the keys cut to those some query of the chunk sees, causality as
  torch.nn.attention.bias.causal_lower_right (the chunk's queries are the last T of S keys), and a
  window that cuts keys as an explicit mask (FP16 0 / -inf, rows padded to 16 elements so no call
  converts or pads it). The backend that ran is read from the profiler's op names.
- floor: the plan's attention op of that layer kind for this chunk (impbench.plan), max(FLOPs / peak
  FP16 rate, bytes / peak HBM bandwidth) of the GPU (impbench.gpus).
- rel-err: ours against SDPA's output on the same inputs.
Input sets together exceed 4x the L2 (bench.timing.set_count), so no launch finds its operands there.
"""

from __future__ import annotations

from dataclasses import dataclass

from impbench.bench.accuracy import rel_err
from impbench.bench.report import BenchReport, Column, below_floor_lines, fixed, sci
from impbench.bench.timing import SPIN_US, host_us, median_us, set_count, time_graph, time_interleaved
from impbench.errors import InputError
from impbench.prefill import MAX_PROMPT_TOKENS

GRAPH_LAUNCHES = 40  # launches per replayed graph (ours): long kernels, so few are enough
GRAPH_REPS = 10
TARGET_X_FLOOR = 2.5  # issue 23: ours within 2.5x of the plan floor at T = TARGET_TOKENS
TARGET_TOKENS = 4096


@dataclass(frozen=True)
class LayerKind:
    """The attention of one layer type of a preset."""

    kind: str  # "full" | "sliding"
    heads: int
    kv_heads: int
    head_dim: int
    window: int  # 0 = none
    scale: float

    @property
    def label(self) -> str:
        window = f" W{self.window}" if self.window else ""
        return f"{self.kind} D{self.head_dim}{window} {self.heads}/{self.kv_heads}"


def layer_kinds(preset) -> list[LayerKind]:
    """Each softmax-attention layer type of the preset once, sliding first (linear layers have none)."""
    kinds = [t for t in ("sliding", "full") if t in preset.layer_types]
    if not kinds:
        raise InputError(f"model {preset.name} has no softmax-attention layers")
    return [LayerKind(t, *preset.attention_dims(t), (preset.sliding_window or 0) if t == "sliding" else 0,
                      preset.softmax_scale(t)) for t in kinds]  # fmt: skip


def select_kinds(kinds: list[LayerKind], text: str | None) -> list[LayerKind]:
    """--layer: the layer kinds to time, comma-separated (sliding, full), in the preset's order; None: all."""
    if text is None:
        return kinds
    names = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    unknown = [name for name in names if name not in ("sliding", "full")]
    if not names or unknown:
        raise InputError(f"--layer takes comma-separated attention layer kinds (sliding, full), such as sliding; "
                         f"got {text!r}")  # fmt: skip
    have = [kind.kind for kind in kinds]
    missing = [name for name in dict.fromkeys(names) if name not in have]
    if missing:
        raise InputError(f"--layer {missing[0]}: the model has no {missing[0]} attention layers; it has {', '.join(have)}")
    return [kind for kind in kinds if kind.kind in names]


def parse_prefixes(text: str) -> list[str | int]:
    """--prefix: comma-separated whole numbers of tokens, or 'chunk' (a prefix of one chunk: P = T)."""
    parts = [part.strip().lower() for part in str(text).split(",") if part.strip()]
    if not parts or not all(part == "chunk" or (part.isascii() and part.isdigit()) for part in parts):
        raise InputError(f"--prefix takes comma-separated whole numbers of tokens or 'chunk', such as 0,chunk; got {text!r}")
    values = [part if part == "chunk" else int(part) for part in parts]
    for value in values:
        if value != "chunk" and value > MAX_PROMPT_TOKENS:
            raise InputError(f"--prefix must be at most {MAX_PROMPT_TOKENS:,} tokens, got {value:,}")
    return list(dict.fromkeys(values))


def prefix_tokens(prefix: str | int, tokens: int) -> int:
    return tokens if prefix == "chunk" else int(prefix)


def check_variant(variant: str | None, kinds: list[LayerKind]) -> None:
    """An explicit --variant must exist and have a kernel for every layer kind's head dim."""
    from impbench.kernels import attention

    if variant is None:
        return
    if variant not in attention.VARIANTS:
        raise InputError(f"unknown variant {variant!r}; accepted: {', '.join(attention.VARIANTS)}")
    for kind in kinds:
        if not attention.supports(kind.head_dim, variant):
            raise InputError(f"variant {variant} has no head_dim {kind.head_dim} kernel ({kind.kind} layers); "
                             "use wgmma or mma")  # fmt: skip


def plan_floor(preset, kind: LayerKind, prefix: int, tokens: int, gpu) -> tuple[float | None, str | None, float, float]:
    """(floor µs, bound, FLOPs, bytes) of the plan's attention op of `kind` for a chunk of `tokens` after `prefix`."""
    from impbench.plan.cost import op_cost

    flops, moved = op_cost(preset, "attention", kind.kind, prefix, tokens)
    if gpu is None:
        return None, None, flops, moved
    floor, bound = gpu.floor_us(flops, moved)
    return floor, bound, flops, moved


def _torch():
    """(torch module, None) or (None, why SDPA is not timed)."""
    try:
        import torch
    except (ImportError, OSError, RuntimeError) as exc:  # not installed, or built for another CUDA
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        return None, f"torch does not import here ({type(exc).__name__}: {first_line})"
    if not torch.cuda.is_available():
        return None, "torch sees no CUDA device"
    return torch, None


class Case:
    """One (layer kind, T, prefix): input sets, our launchers and outputs, SDPA's inputs per set."""

    def __init__(self, kind: LayerKind, tokens: int, prefix: int, variant: str | None):
        import cupy

        from impbench.kernels import attention

        self.kind, self.tokens, self.prefix = kind, tokens, prefix
        k = kind
        self.keys = prefix + tokens  # cache rows: the prefix, then the chunk's own keys
        set_bytes = 2 * (2 * tokens * k.heads * k.head_dim + 2 * self.keys * k.kv_heads * k.head_dim)
        self.sets = []  # (q, k_cache, v_cache, out)
        q_std = 2.0 / (k.scale * k.head_dim**0.5)
        for _ in range(set_count(set_bytes)):
            q = (cupy.random.standard_normal((tokens, k.heads, k.head_dim), dtype=cupy.float32) * q_std).astype(cupy.float16)
            kc = cupy.random.standard_normal((self.keys, k.kv_heads, k.head_dim), dtype=cupy.float32).astype(cupy.float16)
            vc = cupy.random.standard_normal((self.keys, k.kv_heads, k.head_dim), dtype=cupy.float32).astype(cupy.float16)
            self.sets.append((q, kc, vc, cupy.full(q.shape, cupy.nan, dtype=cupy.float16)))
        self.pos = cupy.asarray([prefix], dtype=cupy.int32)
        if variant is None:
            self.launchers = [attention.prepare(q, kc, vc, self.pos, out, k.scale, k.window) for q, kc, vc, out in self.sets]
        else:
            self.launchers = [attention.prepare_variant(q, kc, vc, self.pos, out, k.scale, variant, k.window)
                              for q, kc, vc, out in self.sets]  # fmt: skip
        self.set_bytes = set_bytes

    def first_key(self) -> int:
        """The first key some query of the chunk sees: 0, or the first query's window start."""
        return max(0, self.prefix - self.kind.window + 1) if self.kind.window else 0

    def sdpa_inputs(self, torch):
        """Per set (q, k, v) in SDPA's layout, and the mask every set shares; made once, outside the timing."""
        k, lo, g = self.kind, self.first_key(), self.kind.heads // self.kind.kv_heads
        keys = self.keys - lo
        inputs = []
        for q, kc, vc, _ in self.sets:
            tq, tk, tv = (torch.as_tensor(a, device="cuda") for a in (q, kc, vc))
            inputs.append((tq.permute(1, 0, 2).unsqueeze(0).contiguous(),
                           tk[lo:].permute(1, 0, 2).repeat_interleave(g, dim=0).unsqueeze(0).contiguous(),
                           tv[lo:].permute(1, 0, 2).repeat_interleave(g, dim=0).unsqueeze(0).contiguous()))  # fmt: skip
        last_query = self.prefix + self.tokens - 1
        if k.window and last_query - k.window + 1 > lo:  # the window cuts keys some earlier query sees
            query = self.prefix + torch.arange(self.tokens, device="cuda")[:, None]
            key = lo + torch.arange(keys, device="cuda")[None, :]
            padded = torch.full((self.tokens, -(-keys // 16) * 16), float("-inf"), dtype=torch.float16, device="cuda")
            padded[:, :keys].masked_fill_((key <= query) & (key > query - k.window), 0.0)
            return inputs, padded[:, :keys], "explicit mask (window)"
        from torch.nn.attention.bias import causal_lower_right

        return inputs, causal_lower_right(self.tokens, keys), "causal_lower_right"


def sdpa_backend(torch, call) -> str:
    """Which SDPA backend `call` ran, from the aten op names the profiler records."""
    try:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            call()
        names = " ".join(event.key for event in prof.key_averages()).lower()
    except (RuntimeError, ImportError, AssertionError) as exc:  # a profiler that cannot start here
        return f"unknown ({type(exc).__name__})"
    for backend in ("flash", "cudnn", "efficient", "math"):
        if backend in names:
            return backend
    return "unknown"


def time_case(case: Case, reps: int, torch) -> dict:
    """ours and SDPA in one interleaved event loop, ours from graph replays, and ours' rel-err against SDPA."""
    sides = {"ours": lambda i: case.launchers[i]()}
    sdpa = {}
    if torch is not None:
        inputs, mask, sdpa["mask"] = case.sdpa_inputs(torch)
        scale, attend = case.kind.scale, torch.nn.functional.scaled_dot_product_attention

        def run_sdpa(i):
            q, k, v = inputs[i]
            return attend(q, k, v, attn_mask=mask, scale=scale)

        sides["sdpa"] = run_sdpa
        sdpa["backend"] = sdpa_backend(torch, lambda: run_sdpa(0))
    # each rep's spin must outlast the host queueing every side (SDPA's Python dispatch is the longer)
    spin = SPIN_US + 2 * sum(host_us(lambda side=side: side(0), calls=5) for side in sides.values())
    times = time_interleaved(sides, len(case.sets), reps, spin_us=spin)
    graph = time_graph(case.launchers, GRAPH_LAUNCHES, GRAPH_REPS)
    result = {"ours_us": median_us(times["ours"]), "ours_graph_us": median_us(graph), "sets": len(case.sets),
              "sdpa_us": None, "sdpa_backend": None, "sdpa_mask": None, "rel_err": None}  # fmt: skip
    if torch is not None:
        import cupy

        case.sets[0][3].fill(cupy.nan)
        case.launchers[0]()
        ref = cupy.asarray(sides["sdpa"](0)[0].permute(1, 0, 2))
        result.update(sdpa_us=median_us(times["sdpa"]), sdpa_backend=sdpa["backend"], sdpa_mask=sdpa["mask"],
                      rel_err=rel_err(case.sets[0][3], ref))  # fmt: skip
    return result


COLUMNS = [
    Column("layer", "layer"), Column("tokens", "T"), Column("prefix", "prefix"), Column("ours_us", "ours µs", fixed(1)),
    Column("ours_graph_us", "ours µs (graph)", fixed(1)), Column("sdpa_us", "SDPA µs", fixed(1)),
    Column("sdpa_backend", "SDPA backend", lambda v: v or "-"), Column("sdpa_x", "SDPA / ours", fixed(2)), Column("floor", "floor µs"),
    Column("x_floor", "x floor", fixed(2)), Column("tflops", "TFLOP/s", fixed(0)), Column("rel_err", "rel-err vs SDPA", sci),
    Column("sm_mhz", "SM MHz", fixed(0)),
]  # fmt: skip


def _summary(rows: list[dict], gpu, torch_note: str | None, variant: str) -> list[str]:
    lines = [(f"ours: variant {variant}; µs = median of CUDA events around each launch (interleaved with SDPA, input "
              "sets rotated over 4x the L2); graph = per launch of a replayed graph")]  # fmt: skip
    if torch_note:
        lines.append(f"SDPA: not timed: {torch_note}")
    else:
        lines.append("SDPA: torch.nn.functional.scaled_dot_product_attention, default backend choice, KV heads repeated "
                     "to Hq, keys cut to those the chunk sees; mask per row (causal_lower_right, or an explicit FP16 "
                     "mask where the window cuts keys)")  # fmt: skip
        timed = [r for r in rows if r["sdpa_us"]]
        slower = [f"{r['layer']} T={r['tokens']} P={r['prefix']}" for r in timed if r["ours_us"] >= r["sdpa_us"]]
        lines.append(f"target ours faster than SDPA: {'met' if not slower else 'missed'} "
                     f"({len(timed) - len(slower)} of {len(timed)} cases{'; slower: ' + ', '.join(slower) if slower else ''})")
    at_target = [r for r in rows if r["tokens"] == TARGET_TOKENS and r["x_floor"] is not None]
    if at_target:
        over = [f"{r['layer']} P={r['prefix']} {r['x_floor']:.2f}x" for r in at_target if r["x_floor"] > TARGET_X_FLOOR]
        lines.append(f"target within {TARGET_X_FLOOR}x of the plan floor at T={TARGET_TOKENS}: "
                     f"{'met' if not over else 'missed (' + ', '.join(over) + ')'}")  # fmt: skip
    lines.append(f"floor: the plan's attention op, max(FLOPs / peak FP16, bytes / peak HBM) on {gpu.name} ({gpu.basis})"
                 if gpu else "floor: n/a (no ceilings for this GPU)")  # fmt: skip
    lines += below_floor_lines(rows, lambda r: f"{r['layer']} T={r['tokens']} P={r['prefix']}")
    return lines


def run_attention_bench(preset, token_counts: list[int], prefixes: list, reps: int, variant: str | None,
                        metadata: dict, progress=None, layers: str | None = None) -> BenchReport:  # fmt: skip
    import cupy

    from impbench import device
    from impbench.gpus import match_gpu_name
    from impbench.kernels import attention
    from impbench.kernels.driver import no_pdl
    from impbench.telemetry import Telemetry

    kinds = select_kinds(layer_kinds(preset), layers)
    check_variant(variant, kinds)
    gpu = match_gpu_name(str(metadata.get("gpu_name", "")))
    torch, torch_note = _torch()
    attention.prewarm()
    shown = variant or attention.default_variant()
    rows = []
    stream = cupy.cuda.Stream(non_blocking=True)
    torch_stream = torch.cuda.ExternalStream(stream.ptr) if torch is not None else None
    with stream, no_pdl(), Telemetry(pci_bus_id=device.pci_bus_id()) as telemetry:
        for kind in kinds:
            for tokens in token_counts:
                for prefix in dict.fromkeys(prefix_tokens(p, tokens) for p in prefixes):
                    case = Case(kind, tokens, prefix, variant)
                    with telemetry.sample() as sampler:
                        if torch_stream is None:
                            timed = time_case(case, reps, None)
                        else:
                            with torch.cuda.stream(torch_stream):
                                timed = time_case(case, reps, torch)
                    floor, bound, flops, moved = plan_floor(preset, kind, prefix, tokens, gpu)
                    row = {"model": preset.name, "layer": kind.label, "kind": kind.kind, "heads": kind.heads,
                           "kv_heads": kind.kv_heads, "head_dim": kind.head_dim, "window": kind.window,
                           "scale": kind.scale, "tokens": tokens, "prefix": prefix, "variant": shown, **timed,
                           "sdpa_x": timed["sdpa_us"] / timed["ours_us"] if timed["sdpa_us"] else None,
                           "flops": flops, "bytes_moved": moved, "floor_us": floor, "floor_bound": bound,
                           "floor": "-" if floor is None else f"{floor:.1f} ({bound})",
                           "x_floor": None if floor is None else timed["ours_us"] / floor,
                           "tflops": flops / timed["ours_us"] / 1e6, "sm_mhz": sampler.result.sm_mhz_median}  # fmt: skip
                    rows.append(row)
                    if progress:
                        sdpa = f", SDPA {timed['sdpa_us']:.1f} µs ({timed['sdpa_backend']})" if timed["sdpa_us"] else ""
                        progress(f"{kind.label} T={tokens} P={prefix}: ours {timed['ours_us']:.1f} µs{sdpa}")
                    del case
                    if torch is not None:
                        torch.cuda.empty_cache()
                    cupy.get_default_memory_pool().free_all_blocks()
    return BenchReport("attn", rows, COLUMNS, _summary(rows, gpu, torch_note, shown), metadata,
                       {"model": preset.name, "layers": [kind.kind for kind in kinds], "tokens": token_counts,
                        "prefixes": prefixes, "reps": reps, "variant": shown},
                       title=f"{preset.name} attention per layer kind, one chunk of T tokens after a prefix P; "
                             f"median of {reps} reps.")  # fmt: skip
