"""GPU telemetry during every rep: a pynvml sampler in a background thread, and the rep flags.

Usage (one NVML session per run, one sampler per rep):

    with Telemetry(pci_bus_id=cupy.cuda.Device().pci_bus_id) as telemetry:
        with telemetry.sample() as sampler:
            stats = engine.prefill(pp, mode, guard)
        rep_telemetry = sampler.result

Each reading holds SM and memory clock, temperature, power and the clock-event (throttle) reasons
bitmask. Where NVML or a GPU is missing, `Telemetry.available` is False, every reading list is
empty, every summary is None (printed "n/a") and `error` says why; nothing raises. Clocks and power
limits are only read, never set (docs/DESIGN.md, Facts: the card is measured as it is).

NVML calls go through ctypes, which releases the GIL, so the sampler thread costs the host-bound
eager arm little: a handful of microseconds of bytecode per reading. Readings start when the
sampler starts, so the first one shows the clock the rep began with -- if the card was still at an
idle clock when work arrived, that is part of the rep's conditions, not a sampling artefact.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import median

INTERVAL_MS = 20.0
TOLERANCE_PCT = 5.0

# nvmlClocksEventReason* bits (the older nvmlClocksThrottleReason* names have the same values).
REASON_BITS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal",
    0x040: "hw_thermal",
    0x080: "hw_power_brake",
    0x100: "display_clock",
    0x200: "board_limit",
    0x400: "reliability",
}
# The reasons that mean the card slowed itself for heat or power: a rep that saw one is flagged.
# gpu_idle is not among them: a host-bound rep leaves the GPU idle between kernels.
THROTTLE_REASONS = frozenset({"sw_power_cap", "hw_slowdown", "sw_thermal", "hw_thermal", "hw_power_brake"})


def decode_reasons(mask: int | None) -> list[str]:
    """Names of the clock-event reason bits set in `mask` (unknown bits as "bit_0x..."); None -> []."""
    if not mask:
        return []
    names = [name for bit, name in REASON_BITS.items() if mask & bit]
    unknown = mask & ~sum(REASON_BITS)
    bit = 1
    while unknown >= bit:
        if unknown & bit:
            names.append(f"bit_{bit:#x}")
        bit <<= 1
    return names


@dataclass(frozen=True)
class Reading:
    """One NVML poll; a field NVML could not read on this card is None."""

    t_ms: float  # since the sampler started
    sm_mhz: int | None
    mem_mhz: int | None
    temp_c: int | None
    power_w: float | None
    reasons: int | None  # clock-event reasons bitmask, decode with decode_reasons


def _median(values: list) -> float | None:
    return float(median(values)) if values else None


@dataclass
class RepTelemetry:
    """Every reading taken during one rep, and summaries derived from them."""

    readings: list[Reading] = field(default_factory=list)
    error: str | None = None  # why there are no readings (no NVML, no GPU, a failed poll)

    def _column(self, name: str) -> list:
        return [value for value in (getattr(r, name) for r in self.readings) if value is not None]

    @property
    def sm_mhz_min(self) -> int | None:
        return min(self._column("sm_mhz"), default=None)

    @property
    def sm_mhz_median(self) -> float | None:
        return _median(self._column("sm_mhz"))

    @property
    def mem_mhz_min(self) -> int | None:
        return min(self._column("mem_mhz"), default=None)

    @property
    def mem_mhz_median(self) -> float | None:
        return _median(self._column("mem_mhz"))

    @property
    def temp_c_max(self) -> int | None:
        return max(self._column("temp_c"), default=None)

    @property
    def power_w_median(self) -> float | None:
        return _median(self._column("power_w"))

    @property
    def power_w_max(self) -> float | None:
        return max(self._column("power_w"), default=None)

    @property
    def reasons(self) -> list[str] | None:
        """Every clock-event reason seen in any reading, in bit order; None where none could be read."""
        masks = self._column("reasons")
        if not masks:
            return None
        union = 0
        for mask in masks:
            union |= mask
        return decode_reasons(union)

    @property
    def throttle_reasons(self) -> list[str] | None:
        reasons = self.reasons
        return None if reasons is None else [r for r in reasons if r in THROTTLE_REASONS]

    def summary(self) -> dict:
        """The derived numbers by name (None = n/a), as printers and the JSON file show them."""
        names = ("sm_mhz_min", "sm_mhz_median", "mem_mhz_min", "mem_mhz_median", "temp_c_max",
                 "power_w_median", "power_w_max", "reasons", "throttle_reasons")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def to_dict(self) -> dict:
        # Readings as columns: compact in JSON, and each column is the raw series of one quantity.
        columns = {name: [getattr(r, name) for r in self.readings] for name in Reading.__dataclass_fields__}
        return {"error": self.error, "summary": self.summary(), "readings": columns}

    @classmethod
    def from_dict(cls, data: dict) -> RepTelemetry:
        columns = data.get("readings") or {}
        names = list(Reading.__dataclass_fields__)
        count = len(columns.get("t_ms", []))
        readings = [Reading(**{name: columns[name][i] for name in names}) for i in range(count)]
        return cls(readings=readings, error=data.get("error"))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_nvml(pci_bus_id: str | None = None, device_index: int = 0, nvml=None):
    """(nvml module, device handle): NVML initialised and the device found; raises on any failure.

    pci_bus_id (e.g. cupy.cuda.Device().pci_bus_id) picks the same card CUDA uses even where
    CUDA_VISIBLE_DEVICES renumbers devices; without it, NVML's device_index. The caller owns one
    nvmlShutdown for each successful call. `nvml` replaces the pynvml module (tests).
    """
    if nvml is None:
        import pynvml as nvml
    nvml.nvmlInit()
    try:
        if pci_bus_id:
            handle = nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
        else:
            handle = nvml.nvmlDeviceGetHandleByIndex(device_index)
    except Exception:
        nvml.nvmlShutdown()
        raise
    return nvml, handle


class Telemetry:
    """One NVML session on one device; `sample()` gives a sampler for one rep."""

    def __init__(
        self, pci_bus_id: str | None = None, device_index: int = 0, interval_ms: float = INTERVAL_MS, nvml=None
    ):
        if interval_ms <= 0:
            raise ValueError(f"interval_ms must be > 0, got {interval_ms}")
        self.interval_ms = interval_ms
        self.error: str | None = None
        self._nvml = self._handle = None
        try:
            self._nvml, self._handle = open_nvml(pci_bus_id, device_index, nvml)
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound / DriverNotLoaded / NotFound
            self.error = f"no NVML telemetry: {_one_line(exc)}"
        self._reasons_fn = None
        if self._nvml is not None:  # the newer name first; drivers before 535 only have the older one
            self._reasons_fn = getattr(self._nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                self._nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
            )

    @property
    def available(self) -> bool:
        return self._handle is not None

    def _query(self, fn, *args):
        try:
            return fn(self._handle, *args)
        except Exception:  # NVMLError_NotSupported etc.: this field is n/a on this card
            return None

    def read(self, t_ms: float = 0.0) -> Reading:
        """One reading now (every field None where telemetry is unavailable)."""
        if not self.available:
            return Reading(t_ms, None, None, None, None, None)
        nvml = self._nvml
        power_mw = self._query(nvml.nvmlDeviceGetPowerUsage)
        reasons = self._query(self._reasons_fn) if self._reasons_fn else None
        return Reading(
            t_ms=t_ms,
            sm_mhz=self._query(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_SM),
            mem_mhz=self._query(nvml.nvmlDeviceGetClockInfo, nvml.NVML_CLOCK_MEM),
            temp_c=self._query(nvml.nvmlDeviceGetTemperature, nvml.NVML_TEMPERATURE_GPU),
            power_w=None if power_mw is None else power_mw / 1000.0,
            reasons=None if reasons is None else int(reasons),
        )

    def sample(self) -> RepSampler:
        return RepSampler(self)

    def close(self) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # already shut down; nothing to free
                pass
            self._nvml = self._handle = None

    def __enter__(self) -> Telemetry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class RepSampler:
    """Polls one Telemetry every interval_ms in a daemon thread between start() and stop().

    One reading is taken at start (by the thread, at once) and one at stop (after the thread has
    ended), so even a rep shorter than the interval has two.
    """

    def __init__(self, telemetry: Telemetry):
        self._telemetry = telemetry
        self._readings: list[Reading] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_s = 0.0
        self.result: RepTelemetry | None = None

    def _elapsed_ms(self) -> float:
        return 1000.0 * (time.perf_counter() - self._start_s)

    def _poll(self) -> None:
        interval_s = self._telemetry.interval_ms / 1000.0
        while True:
            self._readings.append(self._telemetry.read(self._elapsed_ms()))
            if self._stop.wait(interval_s):
                return

    def start(self) -> RepSampler:
        self._start_s = time.perf_counter()
        if self._telemetry.available:
            self._thread = threading.Thread(target=self._poll, name="impbench-telemetry", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> RepTelemetry:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._readings.append(self._telemetry.read(self._elapsed_ms()))
        self.result = RepTelemetry(list(self._readings), self._telemetry.error)
        return self.result

    def __enter__(self) -> RepSampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def flag_reps(reps: Sequence[RepTelemetry], tolerance_pct: float = TOLERANCE_PCT) -> list[str | None]:
    """Why each rep is flagged, or None: its median SM clock is more than tolerance_pct off the run's
    median (the median of the reps' SM medians, over every rep passed: pass both arms of one row),
    or it saw a thermal/power throttle reason that most reps did not. A reason more than half the reps
    saw is the workload's steady state (a prefill that holds the card at its power cap, as Gemma-4's does
    on an H100), not a disturbance of some reps: flagging it would discard every rep, so there only the
    clock decides (the report's throttle column still shows the reason). Reps without readings are never
    flagged.
    """
    if tolerance_pct < 0:
        raise ValueError(f"tolerance_pct must be >= 0, got {tolerance_pct}")
    rep_medians = [rep.sm_mhz_median for rep in reps]
    run_median = _median([m for m in rep_medians if m is not None])
    seen = Counter(reason for rep in reps for reason in set(rep.throttle_reasons or ()))
    steady = {reason for reason, count in seen.items() if 2 * count > len(reps)}
    flags: list[str | None] = []
    for rep, rep_median in zip(reps, rep_medians, strict=True):
        why = []
        if rep_median is not None and run_median:
            off_pct = 100.0 * (rep_median - run_median) / run_median
            if abs(off_pct) > tolerance_pct:
                why.append(
                    f"SM clock median {rep_median:.0f} MHz is {off_pct:+.1f}% off the run median "
                    f"{run_median:.0f} MHz (tolerance {tolerance_pct:g}%)"
                )
        rare = [reason for reason in rep.throttle_reasons or () if reason not in steady]
        if rare:
            why.append("throttled: " + ", ".join(rare))
        flags.append("; ".join(why) or None)
    return flags
