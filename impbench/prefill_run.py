"""`impbench run`: build one engine, run its prefill R times in one arm, report each repetition.

Also the building blocks `ab` shares: building the engine for a set of arms and timing one prefill.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from impbench.arms import ArmSpec
from impbench.errors import InputError


@dataclass
class RepSample:
    tok_s: float
    wall_ms: float
    python_launches: int
    graph_replays: int
    host_us_per_launch: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class RunResult:
    model: str
    prompt_tokens: int
    arm: ArmSpec
    chunk_size: int
    cold: RepSample
    reps: list[RepSample]
    capture: str  # "captured (...)", "fell back to eager: op: error", or "no non-last chunk"
    gemm_paths: dict = field(default_factory=dict)  # path -> GEMMs per prefill
    floor_tok_s: float | None = None  # impbench plan's floor on this GPU (None: GPU has no ceilings)
    floor_gpu: str | None = None
    op_floor_us: dict = field(default_factory=dict)  # op -> plan floor µs for the whole prefill
    profile: dict = field(default_factory=dict)  # op -> device µs of each launch (one eager prefill)

    def profile_records(self) -> list[dict]:
        """Per op of the profiled prefill: calls, device µs, share, plan floor and how far above it."""
        total = sum(sum(times) for times in self.profile.values()) or 1.0
        records = []
        for op, times in sorted(self.profile.items(), key=lambda item: -sum(item[1])):
            floor = self.op_floor_us.get(op)
            records.append({"op": op, "calls": len(times), "device_us": sum(times), "share_pct": 100 * sum(times) / total,
                            "floor_us": floor, "x_floor": sum(times) / floor if floor else None})  # fmt: skip
        return records

    def summary(self):
        from impbench.stats import summarize

        return summarize([rep.tok_s for rep in self.reps])

    def record(self) -> dict:
        """The run's numbers as one flat dict (CSV/JSON; markdown formats these)."""
        summary = self.summary()
        hosts = [r.host_us_per_launch for r in self.reps if r.host_us_per_launch is not None]
        return {
            "model": self.model, "pp": self.prompt_tokens, "arm": self.arm.label(), "chunk": self.chunk_size,
            "cold_ms": self.cold.wall_ms, "median_tok_s": summary.median_tok_s, "min_tok_s": summary.min_tok_s,
            "max_tok_s": summary.max_tok_s, "spread_pct": summary.spread_pct,
            "floor_tok_s": self.floor_tok_s, "floor_gpu": self.floor_gpu,
            "of_floor_pct": None if not self.floor_tok_s else 100.0 * summary.median_tok_s / self.floor_tok_s,
            "host_us_per_launch": sorted(hosts)[len(hosts) // 2] if hosts else None,
            "python_launches": self.reps[-1].python_launches, "graph_replays": self.reps[-1].graph_replays,
            "capture": self.capture, "gemm_paths": dict(self.gemm_paths),
            "reps_tok_s": [rep.tok_s for rep in self.reps],
        }  # fmt: skip


def chunk_size_for(arm: ArmSpec, preset) -> int:
    return preset.chunk_size if arm.chunk is None else arm.chunk


def build_engine(preset, prompt_tokens: int, arms: list[ArmSpec], seed: int = 0, prewarm: bool = True):
    """One engine shared by all arms: buffers sized for the largest chunk any arm uses."""
    from impbench.device import require_cuda
    from impbench.engine import Engine

    require_cuda()
    if prompt_tokens <= 0:
        raise InputError(f"--pp must be > 0 tokens, got {prompt_tokens}")
    sizes = [chunk_size_for(arm, preset) for arm in arms]
    max_chunk = 0 if 0 in sizes else max(sizes)
    return Engine(preset, prompt_tokens, max_chunk, seed=seed, prewarm=prewarm)


def time_prefill(engine, prompt_tokens: int, arm: ArmSpec) -> tuple[RepSample, Counter]:
    """One whole prefill in `arm`, timed on the host from first launch to the final synchronize."""
    stats = engine.prefill(prompt_tokens, chunk_size_for(arm, engine.preset), mode=arm.mode, guard=arm.gemm_policy)
    sample = RepSample(
        tok_s=prompt_tokens / stats.wall_s,
        wall_ms=1e3 * stats.wall_s,
        python_launches=stats.python_launches,
        graph_replays=stats.graph_replays,
        host_us_per_launch=stats.host_us_per_launch,
    )
    return sample, stats.gemm_paths


def describe_capture(engine, prompt_tokens: int, arm: ArmSpec) -> str:
    if arm.mode != "graph":
        return "eager"
    chunk = chunk_size_for(arm, engine.preset)
    status = engine.capture_status(chunk, arm.gemm_policy)
    if status is None:
        return "no non-last chunk: the graph arm ran eager (one chunk)"
    return status.describe()


def plan_for_this_gpu(preset, prompt_tokens: int, chunk: int):
    """impbench plan's Plan for the GPU this runs on, or None where that GPU has no ceilings entry."""
    from impbench.plan import plan_prefill

    try:
        return plan_prefill(preset, prompt_tokens, chunk, "auto")
    except InputError:
        return None


def run_prefill(preset, prompt_tokens: int, arm: ArmSpec, reps: int, seed: int = 0, prewarm: bool = True,
                progress=None, profile: bool = False) -> RunResult:
    """Build the engine, run one cold prefill and `reps` timed ones in `arm` (then one profiled, eager)."""
    from impbench.plan import op_floors_us

    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
    engine = build_engine(preset, prompt_tokens, [arm], seed=seed, prewarm=prewarm)
    plan = plan_for_this_gpu(preset, prompt_tokens, chunk_size_for(arm, preset))
    cold, paths = time_prefill(engine, prompt_tokens, arm)
    samples = []
    for index in range(reps):
        sample, paths = time_prefill(engine, prompt_tokens, arm)
        samples.append(sample)
        if progress:
            progress(index + 1, reps, sample)
    profiled = engine.profile(prompt_tokens, chunk_size_for(arm, preset), arm.gemm_policy) if profile else {}
    return RunResult(
        model=preset.name,
        prompt_tokens=prompt_tokens,
        arm=arm,
        chunk_size=chunk_size_for(arm, preset),
        cold=cold,
        reps=samples,
        capture=describe_capture(engine, prompt_tokens, arm),
        gemm_paths=dict(paths),
        floor_tok_s=None if plan is None else plan.floor_tok_s,
        floor_gpu=None if plan is None else plan.gpu.name,
        op_floor_us={} if plan is None else op_floors_us(plan, {op: len(times) for op, times in profiled.items()}),
        profile=profiled,
    )


def format_run(result: RunResult, fmt: str = "md") -> str:
    """Per-rep tok/s and the run's summary: markdown for people, CSV or JSON records for tools."""
    import json

    import pandas as pd

    record = result.record()
    if fmt == "json":
        return json.dumps({**record, "profile": result.profile_records()}, indent=1)
    if fmt == "csv":
        flat = {**record, "gemm_paths": " ".join(f"{k}={v}" for k, v in sorted(record["gemm_paths"].items())),
                "reps_tok_s": " ".join(f"{v:.0f}" for v in record["reps_tok_s"])}  # fmt: skip
        return pd.DataFrame([flat]).to_csv(index=False)
    reps = pd.DataFrame(
        [{"rep": i, "ms": f"{r.wall_ms:.2f}", "tok/s": f"{r.tok_s:,.0f}", "Python launches": r.python_launches,
          "graph replays": r.graph_replays,
          "host µs/launch": "-" if r.host_us_per_launch is None else f"{r.host_us_per_launch:.1f}"}
         for i, r in enumerate(result.reps, 1)]  # fmt: skip
    ).to_markdown(index=False, disable_numparse=True, colalign=["right"] * 6)
    floor = "n/a (no ceilings for this GPU)"
    if record["floor_tok_s"]:
        floor = f"{record['floor_tok_s']:,.0f} tok/s on {record['floor_gpu']} ({record['of_floor_pct']:.0f}% reached)"
    host = record["host_us_per_launch"]
    lines = [
        f"{result.model}, pp={result.prompt_tokens}, {result.arm.label()}, chunk={result.chunk_size or 'one'}",
        "",
        reps,
        "",
        f"- median {record['median_tok_s']:,.0f} tok/s (min {record['min_tok_s']:,.0f}, max {record['max_tok_s']:,.0f}, "
        f"spread {record['spread_pct']:.1f}%); cold run {record['cold_ms']:.1f} ms",
        f"- plan floor: {floor}",
        f"- capture: {result.capture}",
        f"- host time per Python launch: {'n/a (all chunks replayed)' if host is None else f'{host:.1f} µs'}",
        "- GEMM paths per prefill: " + (" ".join(f"{k}={v}" for k, v in sorted(result.gemm_paths.items())) or "-"),
    ]
    if result.profile:
        table = pd.DataFrame(
            [{"op": r["op"], "calls": r["calls"], "device µs": f"{r['device_us']:,.0f}", "share": f"{r['share_pct']:.1f}%",
              "plan floor µs": "-" if r["floor_us"] is None else f"{r['floor_us']:,.0f}",
              "x floor": "-" if r["x_floor"] is None else f"{r['x_floor']:.2f}"} for r in result.profile_records()]
        ).to_markdown(index=False, disable_numparse=True, colalign=["left"] + ["right"] * 5)  # fmt: skip
        total = sum(r["device_us"] for r in result.profile_records())
        lines += ["", f"Device time per op, one eager prefill with CUDA events around each launch ({total:,.0f} µs):", "", table]
    return "\n".join(lines)
