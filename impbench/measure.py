"""The one measurement protocol under `run` (1 arm), `ab` (2) and `sweep` (N arms).

Per (model, prompt length) row: build one engine (every weight and buffer allocated: the prewarm),
shared by every arm; run each arm once cold (compile, capture, first touch), timed and kept apart;
`warmup` unrecorded prefills per arm; then `reps` measured prefills per arm interleaved A B C C B A
(schedule.interleaved_order), each under an NVML sampler. Reps whose clocks strayed or that were
throttled are flagged (telemetry.flag_reps); the verdict is computed with and without them. After
every row the result is handed to `on_row` (the result file's writer), so an interrupted run keeps
its finished rows and a rerun resumes.

Where the arms of a row differ in prewarm (an arm's `prewarm=on|off` wins over Protocol.prewarm,
`--no-prewarm`), the row gets one engine per prewarm, the second built on the first's weights so they
are not held twice; both live through the row, since reps interleave. A prewarm=off engine's first
prefill is the cold run of the first arm on it, so that cold time is where its buffers are allocated.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from impbench import device
from impbench.arms import ArmSpec
from impbench.capture import EAGER, ONE_CHUNK, CaptureStatus
from impbench.errors import InputError
from impbench.prefill import PrefillSpec
from impbench.results import ArmResult, Profile, Rep, Result, Row
from impbench.schedule import interleaved_order
from impbench.stats import MIN_REPS
from impbench.stopping import FIXED, AutoStop, discard_flagged_pairs, stop_reason
from impbench.telemetry import INTERVAL_MS, TOLERANCE_PCT, Telemetry, flag_reps

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Protocol:
    """How every row is measured. `min_reps` is what the command's answer needs: a comparison of two
    arms needs stats.MIN_REPS reps per arm, a single arm's tok/s one."""

    reps: int = 10  # per arm; with `auto`, the least before the stopping rule is asked
    warmup: int = 2
    tolerance_pct: float = TOLERANCE_PCT
    interval_ms: float = INTERVAL_MS
    seed: int = 0
    prewarm: bool = True  # for arms whose SPEC does not set prewarm
    auto: AutoStop | None = None  # --reps auto: stop on the delta's interval (impbench.stopping)
    cooldown_s: float = 5.0  # before flagged reps are measured again
    max_reruns: int = 2  # rounds of re-measuring flagged reps, per row

    def check(self, min_reps: int = MIN_REPS) -> Protocol:
        if isinstance(self.reps, bool) or not isinstance(self.reps, int) or self.reps < min_reps:
            why = "a confidence interval and verdict need" if min_reps > 1 else "a measurement needs"
            raise InputError(f"--reps must be a whole number >= {min_reps} ({why} {min_reps} per arm), got {self.reps!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise InputError(f"--warmup must be a whole number >= 0, got {self.warmup!r}")
        if not (isinstance(self.tolerance_pct, (int, float)) and math.isfinite(self.tolerance_pct) and self.tolerance_pct > 0):
            raise InputError(f"--tolerance must be a finite number of percent > 0, got {self.tolerance_pct!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"--seed must be a whole number, got {self.seed!r}")
        if self.auto is not None:
            self.auto.check()
        if not (math.isfinite(self.cooldown_s) and self.cooldown_s >= 0) or self.max_reruns < 0:
            raise InputError(f"--cooldown must be seconds >= 0 and --max-reruns >= 0, got {self.cooldown_s!r}, {self.max_reruns!r}")
        return self

    def to_dict(self) -> dict:
        return {**asdict(self), "auto": None if self.auto is None else self.auto.to_dict()}


def arm_names(count: int) -> list[str]:
    if not 1 <= count <= 26:
        raise InputError(f"between 1 and 26 arms, got {count}")
    return [chr(ord("A") + i) for i in range(count)]


def build_engine(preset, prompt_tokens: int, arms: list[ArmSpec], seed: int = 0, prewarm: bool = True, weights=None):
    """One engine shared by `arms`: buffers sized for the largest chunk any of them uses; on `weights`
    (another engine's, of the same preset and seed) where given, else on freshly generated ones."""
    from impbench.engine import Engine

    sizes = [chunk_for(arm, preset) for arm in arms]
    max_chunk = 0 if 0 in sizes else max(sizes)
    return Engine(preset, prompt_tokens, max_chunk, seed=seed, prewarm=prewarm, weights=weights)


@contextmanager
def row_engines(preset, prompt_tokens: int, arms: dict[str, ArmSpec], protocol: Protocol,
                progress: Progress | None = None) -> Iterator[dict]:  # fmt: skip
    """Each arm's engine for one row, by arm name: one engine per distinct prewarm among the arms (in
    arm order), every one after the first built on the first's weights. On leaving, even by an error,
    every engine is dropped and its memory returned before the next row builds its own."""
    say = progress or (lambda line: None)
    wanted = {name: arm.prewarmed(protocol.prewarm) for name, arm in arms.items()}
    built: dict[bool, object] = {}
    by_arm: dict[str, object] = {}
    try:
        for prewarm in dict.fromkeys(wanted.values()):
            users = [arm for name, arm in arms.items() if wanted[name] == prewarm]
            if not built:
                say(f"{preset.name} pp={prompt_tokens}: building the engine ({preset.num_layers} layers)")
            else:
                say(f"{preset.name} pp={prompt_tokens}: building a second engine for the prewarm={'on' if prewarm else 'off'} "
                    "arms, on the first's weights")  # fmt: skip
            # no local name holds an engine or its weights, so clearing `built` frees them
            built[prewarm] = build_engine(preset, prompt_tokens, users, seed=protocol.seed, prewarm=prewarm,
                                          weights=next((engine.weights for engine in built.values()), None))  # fmt: skip
        by_arm.update({name: built[prewarm] for name, prewarm in wanted.items()})
        yield by_arm
    finally:
        by_arm.clear()  # the caller's name for this dict then holds no engine either
        built.clear()
        free_device_memory()


def chunk_for(arm: ArmSpec, preset) -> int:
    return preset.chunk_size if arm.chunk is None else arm.chunk


def time_prefill(engine, prompt_tokens: int, arm: ArmSpec, telemetry: Telemetry | None = None):
    """One whole prefill in `arm`, timed on the host from first launch to the final synchronize, under a
    telemetry sampler where given: (Rep, GEMM path counts)."""
    sampler = telemetry.sample().start() if telemetry is not None else None
    try:
        stats = engine.prefill(prompt_tokens, chunk_for(arm, engine.preset), mode=arm.mode, guard=arm.guard,
                               delay_us=arm.delay_us, overlap=arm.overlapped)  # fmt: skip
    finally:
        readings = sampler.stop() if sampler is not None else None
    rep = Rep(tok_s=prompt_tokens / stats.wall_s, wall_ms=1e3 * stats.wall_s, python_launches=stats.python_launches,
              graph_replays=stats.graph_replays, host_us_per_launch=stats.host_us_per_launch)  # fmt: skip
    if readings is not None:
        rep.telemetry = readings
    return rep, stats.gemm_paths


def capture_of(engine, arm: ArmSpec) -> CaptureStatus:
    """The capture status of an arm after it ran on `engine`."""
    if arm.mode != "graph":
        return CaptureStatus(EAGER)
    status = engine.capture_status(chunk_for(arm, engine.preset), arm.guard, arm.delay_us, arm.overlapped)
    return CaptureStatus(ONE_CHUNK) if status is None else status


class _Rounds:
    """The measured reps of one row: rounds of every arm in interleaved order (A B C, then C B A, ...),
    rep i of every arm forming pair i; flagged pairs move to `discarded`."""

    def __init__(self, engines: dict, prompt_tokens: int, arms: dict[str, ArmSpec], telemetry, say, where: str):
        self.engines, self.prompt_tokens, self.arms, self.telemetry = engines, prompt_tokens, arms, telemetry
        self.say, self.where = say, where
        self.reps: dict[str, list[Rep]] = {name: [] for name in arms}
        self.discarded: dict[str, list[Rep]] = {name: [] for name in arms}
        self.paths: dict = {}
        self.done = 0  # rounds run, kept or not

    def run(self, rounds: int, total: int | None = None) -> None:
        # the order continues where the last call stopped, so reruns keep the forward/backward alternation
        order = interleaved_order(self.done + rounds, tuple(self.arms))[self.done * len(self.arms):]
        for name in order:
            rep, self.paths[name] = time_prefill(self.engines[name], self.prompt_tokens, self.arms[name], self.telemetry)
            self.reps[name].append(rep)
            count = f"{len(self.reps[name])}/{total}" if total else f"{len(self.reps[name])}"
            self.say(f"{self.where}: rep {count} {name} {rep.tok_s:,.0f} tok/s")
        self.done += rounds

    def samples(self) -> list[list[float]]:
        return [[rep.tok_s for rep in reps] for reps in self.reps.values()]

    def flag_and_discard(self, tolerance_pct: float) -> int:
        """Flag every rep (kept and discarded, against the row's median clock); move flagged pairs out."""
        everything = [rep for name in self.arms for rep in self.reps[name] + self.discarded[name]]
        for rep, reason in zip(everything, flag_reps([r.telemetry for r in everything], tolerance_pct)):
            rep.flag_reason = reason
        drop = set(discard_flagged_pairs([[rep.flagged for rep in reps] for reps in self.reps.values()]))
        for name, reps in self.reps.items():
            self.discarded[name] += [rep for i, rep in enumerate(reps) if i in drop]
            self.reps[name] = [rep for i, rep in enumerate(reps) if i not in drop]
        return len(drop)

    def keep_flagged(self, wanted: int) -> int:
        """Where re-measuring left fewer than MIN_REPS pairs (clocks that never settle: a row at the power cap
        with many arms loses a pair to any arm's outlier), take the latest discarded pairs back, flagged, up to
        `wanted`: the report then gives the verdict with them and says it has none without them, instead of
        no answer at all. Returns how many pairs came back."""
        kept = len(self.reps[next(iter(self.arms))])
        if kept >= MIN_REPS:
            return 0
        back = min(wanted - kept, min(len(d) for d in self.discarded.values()))
        for name in self.arms:
            if back:
                self.reps[name] += self.discarded[name][-back:]
                self.discarded[name] = self.discarded[name][:-back]
        return back


def cold_note(arm: ArmSpec, engine_owner: str | None, protocol: Protocol) -> str:
    """What an arm's cold time holds beyond compile and capture: a prewarm=off engine allocates its
    buffers in its first prefill, the cold run of `engine_owner` (None: this arm's own)."""
    if arm.prewarmed(protocol.prewarm):
        return ""
    if engine_owner is None:
        return " (first prefill on its prewarm=off engine: its buffers are allocated here, on first use)"
    return f" (its engine's buffers were allocated in {engine_owner}'s cold run)"


def measure_arms(engines, preset, prompt_tokens: int, arms: dict[str, ArmSpec], protocol: Protocol,
                 telemetry: Telemetry, progress: Progress | None = None) -> tuple[list[ArmResult], str]:  # fmt: skip
    """Cold run, warm-up and interleaved reps of every arm on its engine (`engines`: each arm's by name, as
    row_engines gives them): an ArmResult per arm in order, and what
    stopped the reps (stopping.FIXED or, with protocol.auto, the rule that fired). The cold runs come
    first, so each engine's first prefill is the cold run of its first arm."""
    say = progress or (lambda line: None)
    where = f"{preset.name} pp={prompt_tokens}"
    cold, paths, owner = {}, {}, {}
    for name, arm in arms.items():
        engine = engines[name]
        cold[name], paths[name] = time_prefill(engine, prompt_tokens, arm, telemetry)
        note = cold_note(arm, owner.get(id(engine)), protocol)
        owner.setdefault(id(engine), name)
        say(f"{where}: {name} {arm.label()} cold {cold[name].wall_ms:.1f} ms{note}")
    for _ in range(protocol.warmup):
        for name, arm in arms.items():
            time_prefill(engines[name], prompt_tokens, arm)
    rounds = _Rounds(engines, prompt_tokens, arms, telemetry, say, where)
    if protocol.auto is None:
        stopped_by, wanted = FIXED, protocol.reps
        rounds.run(protocol.reps, protocol.reps)
    else:
        start_s = time.perf_counter()
        rounds.run(max(protocol.reps, protocol.auto.min_reps))
        while (stopped_by := stop_reason(protocol.auto, rounds.samples(), time.perf_counter() - start_s)) is None:
            rounds.run(2)  # one A B B A block
        wanted = len(rounds.reps[next(iter(arms))])
        say(f"{where}: stopped after {wanted} reps per arm ({stopped_by})")
    for attempt in range(protocol.max_reruns + 1):
        missing = rounds.flag_and_discard(protocol.tolerance_pct)
        if not missing or attempt == protocol.max_reruns:
            break
        say(f"{where}: {missing} flagged rep pair(s) discarded; measuring them again after {protocol.cooldown_s:g} s")
        time.sleep(protocol.cooldown_s)
        rounds.run(wanted - len(rounds.reps[next(iter(arms))]))
    if back := rounds.keep_flagged(wanted):
        say(f"{where}: flagged after every re-measure; {back} flagged rep pair(s) kept, marked")
    paths.update(rounds.paths)
    results = [ArmResult(name=name, spec=arm, reps=rounds.reps[name], cold=cold[name], chunk_size=chunk_for(arm, preset),
                         capture=capture_of(engines[name], arm), gemm_paths=dict(paths[name]), discarded=rounds.discarded[name])
               for name, arm in arms.items()]  # fmt: skip
    return results, stopped_by


def plan_floor(preset, prompt_tokens: int, arm: ArmSpec):
    """impbench plan's Plan of this prefill on the GPU this runs on, or None where it has no ceilings."""
    from impbench.plan import plan_prefill

    try:
        return plan_prefill(preset, PrefillSpec(prompt_tokens, arm.chunk), "auto")
    except InputError:
        return None


def profile_row(engine, preset, prompt_tokens: int, arm: ArmSpec, plan) -> Profile:
    """Device µs of every launch of one eager prefill (CUDA events around each) against the plan floors."""
    from impbench.plan import op_floors_us

    device_us = engine.profile(prompt_tokens, chunk_for(arm, preset), arm.guard)
    floors = {} if plan is None else op_floors_us(plan, {op: len(times) for op, times in device_us.items()})
    return Profile(device_us, floors)


def free_device_memory() -> None:
    """Return a dropped engine's blocks to the driver before the next is built (weights are tens of GB)."""
    import cupy

    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()


def measure(result: Result, presets: list, prompt_lengths: list[int], arms: list[ArmSpec], protocol: Protocol,
            profile: bool = False, progress: Progress | None = None,
            on_row: Callable[[Result], None] | None = None) -> Result:  # fmt: skip
    """Every (model, pp) row not already in `result`: one engine each, shared by every arm (two where the
    arms differ in prewarm: row_engines); `on_row` sees the growing result after each row."""
    named = dict(zip(arm_names(len(arms)), arms))
    done = result.done()
    with Telemetry(pci_bus_id=device.pci_bus_id(), interval_ms=protocol.interval_ms) as telemetry:
        if telemetry.error and progress:
            progress(telemetry.error)
        for preset in presets:
            for prompt_tokens in prompt_lengths:
                if (preset.name, prompt_tokens, None) in done:
                    continue
                with row_engines(preset, prompt_tokens, named, protocol, progress) as engines:
                    measured, stopped_by = measure_arms(engines, preset, prompt_tokens, named, protocol, telemetry, progress)
                    plan = plan_floor(preset, prompt_tokens, arms[0])
                    row = Row(preset.name, prompt_tokens, measured,
                              floor_tok_s=None if plan is None else plan.floor_tok_s,
                              floor_gpu=None if plan is None else plan.gpu.name, stopped_by=stopped_by)  # fmt: skip
                    if profile:
                        row.profile = profile_row(engines["A"], preset, prompt_tokens, arms[0], plan)
                result.rows.append(row)
                if on_row:
                    on_row(result)
    return result
