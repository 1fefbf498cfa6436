"""Shared by the CPU tests: results built from synthetic numbers, and a fake GPU under `run` / `ab` /
`sweep` (the measurement of one row replaced by synthetic reps, so the CLI, the --out writer, resume
and the printers run end to end on a machine without a GPU)."""

from __future__ import annotations

import gc
import weakref
from dataclasses import dataclass, field

import numpy as np

from impbench.arms import ArmSpec
from impbench.capture import CAPTURED, EAGER, CaptureStatus
from impbench.results import ArmResult, Rep, Result, Row
from impbench.telemetry import Reading, RepTelemetry, flag_reps

METADATA = {"impbench_version": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False,
            "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_driver": "580.65", "cuda_driver_version": "13.0",
            "cupy_version": "14.2.0", "cpu_model": "Intel Xeon", "cpu_count_usable": 16,
            "time_utc": "2026-11-24T22:00:00+00:00"}  # fmt: skip
EAGER_ARM = ArmSpec("eager")
GRAPH = ArmSpec("graph", "tight")


def make_arm(name, tok_s, spec=EAGER_ARM, sm_mhz=None, capture=None, pp=1024):
    """An arm with one rep per tok/s value; sm_mhz (one per rep) adds telemetry readings."""
    reps = []
    for i, value in enumerate(tok_s):
        readings = []
        if sm_mhz is not None:
            readings = [Reading(0.0, sm_mhz[i], 2619, 60, 400.0, 0), Reading(20.0, sm_mhz[i], 2619, 61, 410.0, 0)]
        telemetry = RepTelemetry(readings, None if sm_mhz else "no NVML telemetry: test")
        reps.append(Rep(value, 1000.0 * pp / value, 1400, 0, 7.1, telemetry))
    return ArmResult(
        name=name,
        spec=spec,
        reps=reps,
        cold=Rep(tok_s[0] / 3, 3000.0 * pp / tok_s[0]),
        chunk_size=512,
        capture=capture or CaptureStatus(EAGER),
        gemm_paths={"cublas": 144} if spec.mode == "eager" else {"mma_16x16k8": 96, "tma_128x128": 48},
    )


def flag(row: Row) -> Row:
    reps = [rep for arm in row.arms for rep in arm.reps]
    for rep, reason in zip(reps, flag_reps([rep.telemetry for rep in reps]), strict=True):
        rep.flag_reason = reason
    return row


def make_row(model="qwen3-coder", pp=1024, a=None, b=None, sm_mhz=None, b_spec=GRAPH):
    a = a or [10_000.0 + 10 * i for i in range(10)]
    b = b or [11_000.0 + 10 * i for i in range(10)]
    return flag(Row(model, pp, [
        make_arm("A", a, sm_mhz=sm_mhz, pp=pp),
        make_arm("B", b, spec=b_spec, sm_mhz=sm_mhz, capture=CaptureStatus(CAPTURED, kernels=700), pp=pp),
    ]))  # fmt: skip


def make_result(rows=None, metadata=None, command="ab"):
    rows = rows if rows is not None else [make_row(pp=512), make_row(pp=1024, sm_mhz=[1980] * 10)]
    arms = [arm.spec.to_dict() for arm in rows[0].arms] if rows else []
    settings = {"reps": 10, "warmup": 2, "tolerance_pct": 5.0, "interval_ms": 20.0, "seed": 0, "prewarm": True,
                "layers": None, "arms": arms}  # fmt: skip
    return Result(command, rows, dict(metadata or METADATA), settings)


class FakeWeights:
    """Stands in for engine.weights.ModelWeights: only its identity matters (shared or not)."""


@dataclass(eq=False)
class BuiltEngine:
    """What FakeGpu records of an engine it built; it holds no reference to the engine, which the
    measurement must be able to drop."""

    prompt_tokens: int
    prewarm: bool
    weights: FakeWeights
    arms: list
    prefills: list = field(default_factory=list)  # the arm label of every prefill it ran, in order


class FakeEngine:
    def __init__(self, preset, record: BuiltEngine):
        self.preset, self.prompt_tokens, self.weights, self.record = preset, record.prompt_tokens, record.weights, record


class FakeGpu:
    """Stands in for the device under the CLI: each prefill's tok/s is drawn from `tok_s(model, pp, arm)`
    (a median) with `noise` relative Gaussian noise, and its telemetry from `clock(model, pp, arm, n)`
    ((SM MHz, clock-event reason bits) of the n-th prefill of the row, default a steady 1980 MHz);
    `interrupt_after` rows, a KeyboardInterrupt. The measurement protocol itself (impbench.measure:
    interleaving, --reps auto, discarded flagged reps, one engine per prewarm in a row) runs for real.
    `engines` records every engine built (BuiltEngine: prompt_tokens, prewarm, weights, arms and the labels
    of the prefills it ran, in order); `alive_at_free` what each free_device_memory call found still
    referenced (one bool per engine built so far)."""

    def __init__(self, monkeypatch, noise: float = 0.005, interrupt_after: int | None = None, seed: int | None = None):
        from impbench import device, measure, metadata

        self.noise, self.interrupt_after = noise, interrupt_after
        self.rng = np.random.default_rng(seed)
        self.rows_measured: list[tuple[str, int]] = []
        self.prefills = 0
        self.engines: list[BuiltEngine] = []
        self._engine_refs: list[weakref.ref] = []
        self.alive_at_free: list[list[bool]] = []
        self.tok_s = lambda model, pp, arm: 20_000.0
        self.clock = lambda model, pp, arm, n: (1980, 0)
        monkeypatch.setattr(device, "require_cuda", lambda: None)
        monkeypatch.setattr(device, "pci_bus_id", lambda: None)
        monkeypatch.setattr(metadata, "device_metadata", lambda argv=None: dict(METADATA))
        monkeypatch.setattr(measure, "build_engine", self._engine)
        monkeypatch.setattr(measure, "time_prefill", self._prefill)
        monkeypatch.setattr(measure, "capture_of", lambda engine, arm: CaptureStatus(CAPTURED if arm.mode == "graph" else EAGER,
                                                                                     kernels=100 if arm.mode == "graph" else 0))
        monkeypatch.setattr(measure, "plan_floor", lambda preset, pp, arm: None)
        monkeypatch.setattr(measure, "free_device_memory", self._free)

    def _engine(self, preset, prompt_tokens, arms, seed=0, prewarm=True, weights=None):
        if weights is None:  # a row's first engine; a second one (another prewarm) shares its weights
            if self.interrupt_after is not None and len(self.rows_measured) >= self.interrupt_after:
                raise KeyboardInterrupt
            self.rows_measured.append((preset.name, prompt_tokens))
            self.prefills = 0
        record = BuiltEngine(prompt_tokens, prewarm, FakeWeights() if weights is None else weights, list(arms))
        engine = FakeEngine(preset, record)
        self.engines.append(record)
        self._engine_refs.append(weakref.ref(engine))
        return engine

    def _free(self):
        gc.collect()
        self.alive_at_free.append([ref() is not None for ref in self._engine_refs])

    def _prefill(self, engine, prompt_tokens, arm, telemetry=None):
        preset = engine.preset
        engine.record.prefills.append(arm.label())
        tok_s = float(self.tok_s(preset.name, prompt_tokens, arm) * (1 + self.noise * self.rng.standard_normal()))
        sm_mhz, reasons = self.clock(preset.name, prompt_tokens, arm, self.prefills)
        self.prefills += 1
        readings = [Reading(0.0, sm_mhz, 2619, 60, 400.0, reasons), Reading(20.0, sm_mhz, 2619, 61, 410.0, reasons)]
        rep = Rep(tok_s, 1000.0 * prompt_tokens / tok_s, 1400, 0, 7.1, RepTelemetry(readings))
        return rep, {"cublas": 3} if arm.mode == "eager" else {"mma_16x16k8": 3}
