"""The A/B result data model: what was measured, kept raw, serialised to JSON with its metadata.

Raw measurements are stored (every rep's tok/s, wall time, launches, telemetry readings and flag);
statistics are derived from them on demand (stats.compare_arms is seeded, so a result always gives
the same verdict). `to_dict` also writes the derived numbers, for people and tools reading the
JSON; `from_dict` ignores them and keeps only the raw data. Printers live in report.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from impbench.arms import ArmSpec
from impbench.errors import InputError
from impbench.stats import Comparison, compare_arms, drop_flagged, summarize
from impbench.telemetry import RepTelemetry

FORMAT = "impbench.ab"
SCHEMA_VERSION = 1

# CaptureInfo.status values
CAPTURED = "captured"
FELL_BACK = "fell back"
EAGER = "eager"  # the arm does not capture
ONE_CHUNK = "one chunk"  # graph arm, but the prefill has no non-last chunk to capture


@dataclass(frozen=True)
class CaptureInfo:
    """Whether the arm's non-last chunks ran as a graph, and if capture failed, where and why."""

    status: str = EAGER
    op: str | None = None  # the op that broke capture (FELL_BACK only)
    error: str | None = None  # its error, one line (FELL_BACK only)
    kernels: int = 0  # launches recorded in the graph (CAPTURED only)

    @classmethod
    def from_engine(cls, mode: str, status) -> CaptureInfo:
        """From the arm's mode and Engine.capture_status(...) (a capture.CaptureStatus, or None)."""
        if mode != "graph":
            return cls(EAGER)
        if status is None:
            return cls(ONE_CHUNK)
        if status.captured:
            return cls(CAPTURED, kernels=status.kernels)
        return cls(FELL_BACK, op=status.failed_op, error=status.error)

    def label(self) -> str:
        if self.status == CAPTURED:
            return f"captured ({self.kernels} kernels)"
        if self.status == FELL_BACK:
            return f"fell back at {self.op}: {self.error}"
        if self.status == ONE_CHUNK:
            return "one chunk: nothing to capture, ran eager"
        return self.status

    def to_dict(self) -> dict:
        return {"status": self.status, "op": self.op, "error": self.error, "kernels": self.kernels}

    @classmethod
    def from_dict(cls, data: dict) -> CaptureInfo:
        return cls(data["status"], data.get("op"), data.get("error"), data.get("kernels", 0))


@dataclass
class Rep:
    """One timed prefill and the telemetry taken while it ran."""

    tok_s: float
    wall_ms: float
    python_launches: int | None = None  # kernel launches issued from Python
    graph_replays: int | None = None
    host_us_per_launch: float | None = None
    telemetry: RepTelemetry = field(default_factory=RepTelemetry)
    flag_reason: str | None = None  # telemetry.flag_reps: why this rep is suspect, or None

    @property
    def flagged(self) -> bool:
        return self.flag_reason is not None

    @classmethod
    def from_sample(cls, sample, telemetry: RepTelemetry | None = None) -> Rep:
        """From a prefill_run.RepSample (its to_dict() keys are this class's first five fields)."""
        return cls(**sample.to_dict(), telemetry=telemetry if telemetry is not None else RepTelemetry())

    def to_dict(self) -> dict:
        return {
            "tok_s": self.tok_s,
            "wall_ms": self.wall_ms,
            "python_launches": self.python_launches,
            "graph_replays": self.graph_replays,
            "host_us_per_launch": self.host_us_per_launch,
            "flag_reason": self.flag_reason,
            "telemetry": self.telemetry.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Rep:
        return cls(
            tok_s=float(data["tok_s"]),
            wall_ms=float(data["wall_ms"]),
            python_launches=data.get("python_launches"),
            graph_replays=data.get("graph_replays"),
            host_us_per_launch=data.get("host_us_per_launch"),
            telemetry=RepTelemetry.from_dict(data.get("telemetry") or {}),
            flag_reason=data.get("flag_reason"),
        )


def _median_or_none(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(median(values)) if values else None


@dataclass
class ArmResult:
    """One arm of one (model, pp) row: its settings, cold run, measured reps and what it dispatched."""

    name: str  # "A" or "B"
    spec: dict[str, Any]  # arms.ArmSpec.to_dict(): mode, guard, chunk (None = the preset's)
    reps: list[Rep] = field(default_factory=list)
    cold: Rep | None = None  # the first prefill: capture, first touch, lazy init
    chunk_size: int | None = None  # tokens per chunk actually used (0 = one chunk)
    capture: CaptureInfo = field(default_factory=CaptureInfo)
    gemm_paths: dict[str, int] = field(default_factory=dict)  # dense GEMM path -> GEMMs per prefill

    @property
    def label(self) -> str:
        """arms.ArmSpec's label: "mode/guard", plus "/chunk=C" where the arm set its own chunk."""
        return ArmSpec(self.spec["mode"], self.spec.get("guard"), self.spec.get("chunk")).label()

    @property
    def tok_s(self) -> list[float]:
        return [rep.tok_s for rep in self.reps]

    @property
    def flags(self) -> list[bool]:
        return [rep.flagged for rep in self.reps]

    @property
    def flagged_count(self) -> int:
        return sum(self.flags)

    def summary(self):
        """stats.ArmSummary of the reps (None without reps)."""
        return summarize(self.tok_s) if self.reps else None

    @property
    def warm_ms(self) -> float | None:
        """Median wall time of the measured reps, to set beside the cold run's."""
        return _median_or_none([rep.wall_ms for rep in self.reps])

    @property
    def host_us_per_launch(self) -> float | None:
        return _median_or_none([rep.host_us_per_launch for rep in self.reps])

    @property
    def sm_mhz_min(self) -> int | None:
        return min((m for m in (rep.telemetry.sm_mhz_min for rep in self.reps) if m is not None), default=None)

    @property
    def sm_mhz_median(self) -> float | None:
        """Median of the reps' median SM clocks."""
        return _median_or_none([rep.telemetry.sm_mhz_median for rep in self.reps])

    @property
    def temp_c_max(self) -> int | None:
        return max((t for t in (rep.telemetry.temp_c_max for rep in self.reps) if t is not None), default=None)

    @property
    def power_w_median(self) -> float | None:
        return _median_or_none([rep.telemetry.power_w_median for rep in self.reps])

    @property
    def throttle_reasons(self) -> list[str] | None:
        """Throttle reasons seen in any rep ([] = none seen, None = no telemetry at all)."""
        seen = [rep.telemetry.throttle_reasons for rep in self.reps]
        if all(reasons is None for reasons in seen):
            return None
        return sorted({reason for reasons in seen if reasons for reason in reasons})

    def to_dict(self) -> dict:
        summary = self.summary()
        return {
            "name": self.name,
            "spec": dict(self.spec),
            "chunk_size": self.chunk_size,
            "capture": self.capture.to_dict(),
            "gemm_paths": dict(self.gemm_paths),
            "cold": None if self.cold is None else self.cold.to_dict(),
            "reps": [rep.to_dict() for rep in self.reps],
            "derived": {  # written for readers; from_dict recomputes from the reps
                "summary": None if summary is None else summary.to_dict(),
                "warm_ms": self.warm_ms,
                "host_us_per_launch": self.host_us_per_launch,
                "sm_mhz_min": self.sm_mhz_min,
                "sm_mhz_median": self.sm_mhz_median,
                "flagged": self.flagged_count,
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> ArmResult:
        return cls(
            name=data["name"],
            spec=dict(data["spec"]),
            reps=[Rep.from_dict(rep) for rep in data.get("reps", [])],
            cold=None if data.get("cold") is None else Rep.from_dict(data["cold"]),
            chunk_size=data.get("chunk_size"),
            capture=CaptureInfo.from_dict(data.get("capture") or {"status": EAGER}),
            gemm_paths={str(k): int(v) for k, v in (data.get("gemm_paths") or {}).items()},
        )


@dataclass
class ABRow:
    """One model at one prompt length: arm A against arm B."""

    model: str
    pp: int  # prompt tokens
    a: ArmResult
    b: ArmResult
    # True when rep i of A and rep i of B ran side by side (schedule.interleaved_order), so the
    # bootstrap may resample pairs (see stats.bootstrap_delta_ci).
    paired: bool = True

    def comparison(self) -> Comparison:
        return compare_arms(self.a.tok_s, self.b.tok_s, paired=self._paired())

    def _paired(self) -> bool:
        return self.paired and len(self.a.reps) == len(self.b.reps)

    @property
    def flagged_count(self) -> int:
        return self.a.flagged_count + self.b.flagged_count

    @property
    def rep_count(self) -> int:
        return len(self.a.reps) + len(self.b.reps)

    def comparison_without_flagged(self) -> Comparison | None:
        """The comparison over unflagged reps only; None when nothing is flagged or an arm has no rep left."""
        if not self.flagged_count:
            return None
        paired = self._paired()
        a_tok_s, b_tok_s = drop_flagged(self.a.tok_s, self.b.tok_s, self.a.flags, self.b.flags, paired=paired)
        if not a_tok_s or not b_tok_s:
            return None
        return compare_arms(a_tok_s, b_tok_s, paired=paired)

    def verdict_without_flagged(self) -> str | None:
        """The verdict without flagged reps: None if nothing is flagged, "n/a" if an arm has no rep left."""
        if not self.flagged_count:
            return None
        unflagged = self.comparison_without_flagged()
        return "n/a" if unflagged is None else unflagged.verdict

    def to_dict(self) -> dict:
        comparison = self.comparison()
        return {
            "model": self.model,
            "pp": self.pp,
            "paired": self.paired,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "derived": {  # written for readers; from_dict recomputes from the reps
                "comparison": comparison.to_dict(),
                "flagged": self.flagged_count,
                "verdict_without_flagged": self.verdict_without_flagged(),
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> ABRow:
        return cls(
            model=data["model"],
            pp=int(data["pp"]),
            a=ArmResult.from_dict(data["a"]),
            b=ArmResult.from_dict(data["b"]),
            paired=bool(data.get("paired", True)),
        )


@dataclass
class ABResult:
    """A whole `impbench ab` run: its rows, where and how it ran (metadata.collect_metadata), settings."""

    rows: list[ABRow] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # reps, warmup, tolerance_pct, interval_ms, ...

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "metadata": dict(self.metadata),
            "settings": dict(self.settings),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        # allow_nan=False: a NaN or inf would make the file invalid JSON; the model uses None instead.
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> ABResult:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an impbench A/B result (\"format\" is not {FORMAT!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return cls(
            rows=[ABRow.from_dict(row) for row in data.get("rows", [])],
            metadata=dict(data.get("metadata") or {}),
            settings=dict(data.get("settings") or {}),
        )


def load_result(path: str | Path) -> ABResult:
    """Read a result file written by report.write_result; any problem is one InputError line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such result file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not JSON ({exc})") from None
    try:
        return ABResult.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise InputError(f"{path}: not a valid impbench A/B result: {what}") from None
