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


def run_prefill(preset, prompt_tokens: int, arm: ArmSpec, reps: int, seed: int = 0, prewarm: bool = True,
                progress=None) -> RunResult:
    """Build the engine, run one cold prefill and `reps` timed ones in `arm`."""
    if reps < 1:
        raise InputError(f"--reps must be >= 1, got {reps}")
    engine = build_engine(preset, prompt_tokens, [arm], seed=seed, prewarm=prewarm)
    cold, paths = time_prefill(engine, prompt_tokens, arm)
    samples = []
    for index in range(reps):
        sample, paths = time_prefill(engine, prompt_tokens, arm)
        samples.append(sample)
        if progress:
            progress(index + 1, reps, sample)
    return RunResult(
        model=preset.name,
        prompt_tokens=prompt_tokens,
        arm=arm,
        chunk_size=chunk_size_for(arm, preset),
        cold=cold,
        reps=samples,
        capture=describe_capture(engine, prompt_tokens, arm),
        gemm_paths=dict(paths),
    )
