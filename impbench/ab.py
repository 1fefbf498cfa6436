"""`impbench ab`: the interleaved A/B protocol on one engine per (model, prompt length).

Per row: build the engine (the prewarm), run each arm once cold (compile, capture, first touch),
timed and kept apart; `warmup` unrecorded prefills per arm; then `reps` measured prefills per arm in
ABBA order (schedule.interleaved_order), each under an NVML sampler. Reps whose clocks strayed or
that were throttled are flagged (telemetry.flag_reps); the verdict is computed with and without them.
After every row the partial result can be saved (`on_row`), so an interrupted sweep keeps its rows.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

from impbench.arms import ArmSpec
from impbench.errors import InputError
from impbench.prefill_run import build_engine, chunk_size_for, time_prefill
from impbench.results import ABResult, ABRow, ArmResult, CaptureInfo, Rep
from impbench.schedule import interleaved_order
from impbench.telemetry import INTERVAL_MS, TOLERANCE_PCT, Telemetry, flag_reps


@dataclass(frozen=True)
class ABSettings:
    reps: int = 10
    warmup: int = 2
    tolerance_pct: float = TOLERANCE_PCT
    interval_ms: float = INTERVAL_MS
    seed: int = 0
    prewarm: bool = True

    def check(self) -> None:
        if self.reps < 2:
            raise InputError(f"--reps must be >= 2 per arm (a confidence interval needs two), got {self.reps}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be >= 0, got {self.warmup}")
        if self.tolerance_pct <= 0:
            raise InputError(f"--tolerance must be > 0 percent, got {self.tolerance_pct}")

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _timed(engine, prompt_tokens: int, arm: ArmSpec, telemetry: Telemetry):
    """One prefill of `arm` under a telemetry sampler: (Rep, GEMM path counts)."""
    sampler = telemetry.sample().start()
    try:
        sample, paths = time_prefill(engine, prompt_tokens, arm)
    finally:
        readings = sampler.stop()
    return Rep.from_sample(sample, readings), paths


def measure_arms(engine, preset, prompt_tokens: int, arms: dict[str, ArmSpec], settings: ABSettings,
                 telemetry: Telemetry, progress: Callable[[str], None] | None = None) -> dict[str, ArmResult]:  # fmt: skip
    """Cold run, warm-up and interleaved reps of every arm on one engine; an ArmResult per arm name."""
    say = progress or (lambda line: None)
    where = f"{preset.name} pp={prompt_tokens}"
    cold, paths = {}, {}
    for name, arm in arms.items():
        cold[name], paths[name] = _timed(engine, prompt_tokens, arm, telemetry)
        say(f"{where}: {name} {arm.label()} cold {cold[name].wall_ms:.1f} ms")
    for _ in range(settings.warmup):
        for arm in arms.values():
            time_prefill(engine, prompt_tokens, arm)
    reps: dict[str, list[Rep]] = {name: [] for name in arms}
    order = interleaved_order(settings.reps, tuple(arms))
    for index, name in enumerate(order, 1):
        rep, paths[name] = _timed(engine, prompt_tokens, arms[name], telemetry)
        reps[name].append(rep)
        say(f"{where}: rep {index}/{len(order)} {name} {rep.tok_s:,.0f} tok/s")
    everything = [rep for name in arms for rep in reps[name]]
    for rep, reason in zip(everything, flag_reps([r.telemetry for r in everything], settings.tolerance_pct)):
        rep.flag_reason = reason

    def arm_result(name: str) -> ArmResult:
        arm = arms[name]
        chunk = chunk_size_for(arm, preset)
        status = engine.capture_status(chunk, arm.gemm_policy) if arm.mode == "graph" else None
        return ArmResult(name=name, spec=arm.to_dict(), reps=reps[name], cold=cold[name], chunk_size=chunk,
                         capture=CaptureInfo.from_engine(arm.mode, status), gemm_paths=dict(paths[name]))  # fmt: skip

    return {name: arm_result(name) for name in arms}


def measure_row(engine, preset, prompt_tokens: int, arms: dict[str, ArmSpec], settings: ABSettings,
                telemetry: Telemetry, progress: Callable[[str], None] | None = None) -> ABRow:  # fmt: skip
    """Both arms ("A", "B") of one A/B row, in A B B A order."""
    results = measure_arms(engine, preset, prompt_tokens, arms, settings, telemetry, progress)
    return ABRow(model=preset.name, pp=prompt_tokens, a=results["A"], b=results["B"], paired=True)


def _free_device_memory() -> None:
    """Return a dropped engine's blocks to the driver before the next is built (weights are tens of GB)."""
    import cupy

    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()


def measure_grid(presets: list, prompt_lengths: list[int], arms: dict[str, ArmSpec], settings: ABSettings,
                 measure: Callable, progress: Callable[[str], None] | None = None,
                 skip: Callable[[str, int], bool] = lambda model, pp: False) -> None:  # fmt: skip
    """For every (model, pp) not skipped: build one engine for all arms, call
    measure(engine, preset, pp, telemetry), then free the engine before the next is built."""
    from impbench.device import require_cuda

    settings.check()
    if not prompt_lengths or min(prompt_lengths) <= 0:
        raise InputError(f"--pp must list prompt lengths > 0 tokens, got {prompt_lengths}")
    require_cuda()
    import cupy

    with Telemetry(pci_bus_id=cupy.cuda.Device().pci_bus_id, interval_ms=settings.interval_ms) as telemetry:
        if telemetry.error and progress:
            progress(telemetry.error)
        for preset in presets:
            for prompt_tokens in prompt_lengths:
                if skip(preset.name, prompt_tokens):
                    continue
                if progress:
                    progress(f"{preset.name} pp={prompt_tokens}: building the engine ({preset.num_layers} layers)")
                engine = build_engine(preset, prompt_tokens, list(arms.values()), seed=settings.seed,
                                      prewarm=settings.prewarm)  # fmt: skip
                try:
                    measure(engine, preset, prompt_tokens, telemetry)
                finally:
                    del engine
                    _free_device_memory()


def run_ab(presets: list, prompt_lengths: list[int], arm_a: ArmSpec, arm_b: ArmSpec, settings: ABSettings,
           metadata: dict, progress: Callable[[str], None] | None = None,
           on_row: Callable[[ABResult], None] | None = None) -> ABResult:  # fmt: skip
    """Every (model, pp) row: one engine each, shared by both arms. `on_row` sees the growing result."""
    arms = {"A": arm_a, "B": arm_b}
    result = ABResult(metadata=metadata, settings={**settings.to_dict(), "a": arm_a.to_dict(), "b": arm_b.to_dict()})

    def measure(engine, preset, prompt_tokens, telemetry):
        result.rows.append(measure_row(engine, preset, prompt_tokens, arms, settings, telemetry, progress))
        if on_row:
            on_row(result)

    measure_grid(presets, prompt_lengths, arms, settings, measure, progress)
    return result
