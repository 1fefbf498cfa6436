"""The one result schema of a prefill measurement, written by `run` (1 arm), `ab` (2) and `sweep` (N).

A Result holds rows, one per (model, prompt length); a row holds every arm measured on one engine,
the first arm being the baseline the others are compared with. Raw measurements are stored (every
rep's tok/s, wall time, launches, telemetry readings and flag); statistics are derived from them on
demand (stats.compare_arms is seeded, so a file always gives the same verdict). `to_dict` also
writes the derived numbers, for people and tools reading the JSON; `from_dict` ignores them.

The file format is "impbench.result", schema_version 2. Files of the earlier "impbench.ab" and
"impbench.sweep" formats (schema 1) are read too, converted on load. Printers live in report.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from impbench.arms import ArmSpec
from impbench.capture import EAGER, CaptureStatus
from impbench.errors import InputError
from impbench.files import read_json
from impbench.metadata import run_settings
from impbench.stats import Comparison, compare_arms, drop_flagged, summarize
from impbench.telemetry import RepTelemetry

FORMAT = "impbench.result"
SCHEMA_VERSION = 2
COMMANDS = ("run", "ab", "sweep")
LEGACY_FORMATS = {"impbench.ab": "ab", "impbench.sweep": "sweep"}


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

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tok_s) and self.tok_s > 0 and math.isfinite(self.wall_ms) and self.wall_ms > 0):
            raise ValueError(f"a rep needs finite tok_s and wall_ms > 0, got {self.tok_s!r} and {self.wall_ms!r}")

    @property
    def flagged(self) -> bool:
        return self.flag_reason is not None

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
    """One arm of one row: its settings, cold run, measured reps and what it dispatched."""

    name: str  # "A", "B", ...
    spec: ArmSpec
    reps: list[Rep] = field(default_factory=list)
    cold: Rep | None = None  # the first prefill: capture, first touch, lazy init
    chunk_size: int | None = None  # tokens per chunk actually used (0 = one chunk)
    capture: CaptureStatus = field(default_factory=CaptureStatus)
    gemm_paths: dict[str, int] = field(default_factory=dict)  # dense GEMM path -> GEMMs per prefill
    discarded: list[Rep] = field(default_factory=list)  # flagged reps measured again (impbench.stopping)

    @property
    def label(self) -> str:
        return self.spec.label()

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
            "spec": self.spec.to_dict(),
            "chunk_size": self.chunk_size,
            "capture": self.capture.to_dict(),
            "gemm_paths": dict(self.gemm_paths),
            "cold": None if self.cold is None else self.cold.to_dict(),
            "reps": [rep.to_dict() for rep in self.reps],
            "discarded": [rep.to_dict() for rep in self.discarded],
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
            name=str(data["name"]),
            spec=ArmSpec.from_dict(data["spec"]),
            reps=[Rep.from_dict(rep) for rep in data.get("reps", [])],
            cold=None if data.get("cold") is None else Rep.from_dict(data["cold"]),
            chunk_size=data.get("chunk_size"),
            capture=CaptureStatus.from_dict(data.get("capture") or {"status": EAGER}),
            gemm_paths={str(k): int(v) for k, v in (data.get("gemm_paths") or {}).items()},
            discarded=[Rep.from_dict(rep) for rep in data.get("discarded", [])],
        )


@dataclass
class Profile:
    """`run --profile`: device µs of every launch of one eager prefill by op, and each op's plan floor."""

    device_us: dict[str, list[float]]  # op -> µs of each launch
    floor_us: dict[str, float] = field(default_factory=dict)  # op -> plan floor for its launches

    def records(self) -> list[dict]:
        """Per op: calls, device µs, share, plan floor and how far above it (under it: a measurement error),
        longest first."""
        total = sum(sum(times) for times in self.device_us.values()) or 1.0
        records = []
        for op, times in sorted(self.device_us.items(), key=lambda item: -sum(item[1])):
            floor = self.floor_us.get(op)
            x_floor = sum(times) / floor if floor else None
            records.append({"op": op, "calls": len(times), "device_us": sum(times), "share_pct": 100 * sum(times) / total,
                            "floor_us": floor, "x_floor": x_floor, "below_floor": x_floor is not None and x_floor < 1.0})  # fmt: skip
        return records

    def to_dict(self) -> dict:
        return {"device_us": self.device_us, "floor_us": self.floor_us}

    @classmethod
    def from_dict(cls, data: dict) -> Profile:
        return cls({str(k): [float(x) for x in v] for k, v in data["device_us"].items()},
                   {str(k): float(v) for k, v in (data.get("floor_us") or {}).items()})  # fmt: skip


@dataclass
class Row:
    """One model at one prompt length: every arm measured on one engine, the first the baseline."""

    model: str
    pp: int  # prompt tokens
    arms: list[ArmResult]
    # True when rep i of every arm ran side by side (schedule.interleaved_order), so the bootstrap may
    # resample pairs (see stats.bootstrap_delta_ci).
    paired: bool = True
    floor_tok_s: float | None = None  # the `impbench plan` floor on the GPU that ran it (None: no ceilings)
    floor_gpu: str | None = None
    profile: Profile | None = None
    stopped_by: str | None = None  # what ended the reps (impbench.stopping), None in files of earlier versions
    gpu_kind: str | None = None  # a fleet sweep's GPU kind (impbench.fleet); rows of two kinds never compare
    machine: dict | None = None  # a fleet row's host and GPU; None: the result's metadata says
    failed: str | None = None  # a fleet row whose task failed after its retries: why (then no arms)

    @property
    def key(self) -> tuple:
        """What names a row within a result: (model, pp, GPU kind)."""
        return (self.model, self.pp, self.gpu_kind)

    @property
    def baseline(self) -> ArmResult:
        return self.arms[0]

    def _paired(self, arm: ArmResult) -> bool:
        return self.paired and len(arm.reps) == len(self.baseline.reps)

    def comparison(self, arm: ArmResult) -> Comparison | None:
        """`arm` against the baseline (None for the baseline itself or where an arm has no reps)."""
        if arm is self.baseline or not arm.reps or not self.baseline.reps:
            return None
        return compare_arms(self.baseline.tok_s, arm.tok_s, paired=self._paired(arm))

    def comparison_without_flagged(self, arm: ArmResult) -> Comparison | None:
        """The comparison over unflagged reps only; None when nothing is flagged or an arm has no rep left."""
        base = self.baseline
        if arm is base or not (arm.flagged_count or base.flagged_count):
            return None
        paired = self._paired(arm)
        a_tok_s, b_tok_s = drop_flagged(base.tok_s, arm.tok_s, base.flags, arm.flags, paired=paired)
        if not a_tok_s or not b_tok_s:
            return None
        return compare_arms(a_tok_s, b_tok_s, paired=paired)

    def verdict_without_flagged(self, arm: ArmResult) -> str | None:
        """The verdict without flagged reps: None if nothing is flagged, "n/a" if an arm has no rep left."""
        if arm is self.baseline or not (arm.flagged_count or self.baseline.flagged_count):
            return None
        unflagged = self.comparison_without_flagged(arm)
        return "n/a" if unflagged is None else unflagged.verdict

    def to_dict(self) -> dict:
        derived = []
        for arm in self.arms[1:]:  # (a failed row has none)
            comparison = self.comparison(arm)
            derived.append({"arm": arm.name, "comparison": None if comparison is None else comparison.to_dict(),
                            "verdict_without_flagged": self.verdict_without_flagged(arm)})  # fmt: skip
        return {
            "model": self.model,
            "pp": self.pp,
            "paired": self.paired,
            "floor_tok_s": self.floor_tok_s,
            "floor_gpu": self.floor_gpu,
            "stopped_by": self.stopped_by,
            "gpu_kind": self.gpu_kind,
            "machine": self.machine,
            "failed": self.failed,
            "arms": [arm.to_dict() for arm in self.arms],
            "profile": None if self.profile is None else self.profile.to_dict(),
            "derived": {"against_first_arm": derived},  # written for readers; from_dict recomputes
        }

    @classmethod
    def from_dict(cls, data: dict) -> Row:
        arms = [ArmResult.from_dict(arm) for arm in data["arms"]]
        if not arms and not data.get("failed"):
            raise ValueError("a row without arms")
        profile = data.get("profile")
        return cls(str(data["model"]), int(data["pp"]), arms, bool(data.get("paired", True)), data.get("floor_tok_s"),
                   data.get("floor_gpu"), None if profile is None else Profile.from_dict(profile), data.get("stopped_by"),
                   data.get("gpu_kind"), data.get("machine"), data.get("failed"))  # fmt: skip


@dataclass
class Result:
    """A whole run of `command`: its rows, where and how it ran (metadata.collect_metadata), settings."""

    command: str  # run | ab | sweep
    rows: list[Row] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # the measurement protocol and the arms

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise ValueError(f"command {self.command!r} is not one of {', '.join(COMMANDS)}")

    @property
    def arm_specs(self) -> list[ArmSpec]:
        return [ArmSpec.from_dict(arm) for arm in self.settings.get("arms", [])]

    def done(self) -> set[tuple[str, int, str | None]]:
        """(model, pp, GPU kind) of every row measured (a failed row is not done: a rerun retries it)."""
        return {row.key for row in self.measured_rows}

    @property
    def measured_rows(self) -> list[Row]:
        return [row for row in self.rows if not row.failed]

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "command": self.command,
            "metadata": dict(self.metadata),
            "settings": dict(self.settings),
            "rows": [row.to_dict() for row in self.rows],
        }

    def to_json(self) -> str:
        # allow_nan=False: a NaN or inf would make the file invalid JSON; the model uses None instead.
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> Result:
        if not isinstance(data, dict):
            raise ValueError(f"not an impbench result (a JSON {type(data).__name__}, not an object)")
        if data.get("format") in LEGACY_FORMATS and data.get("schema_version") == 1:
            data = _upgrade_v1(data)
        if data.get("format") != FORMAT:
            raise ValueError(f"not an impbench result (\"format\" is {data.get('format')!r}, not {FORMAT!r})")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {data.get('schema_version')!r} is not {SCHEMA_VERSION}")
        return cls(
            command=str(data.get("command")),
            rows=[Row.from_dict(row) for row in data.get("rows", [])],
            metadata=dict(data.get("metadata") or {}),
            settings=dict(data.get("settings") or {}),
        )


def _upgrade_v1(data: dict) -> dict:
    """A schema-1 "impbench.ab" (rows with a and b) or "impbench.sweep" (rows with arms) file as schema 2."""
    command = LEGACY_FORMATS[data["format"]]
    settings = dict(data.get("settings") or {})
    rows = []
    for row in data.get("rows", []):
        arms = [row["a"], row["b"]] if command == "ab" else row["arms"]
        rows.append({"model": row["model"], "pp": row["pp"], "paired": row.get("paired", True), "arms": arms})
    if command == "ab":
        settings["arms"] = [settings.pop("a"), settings.pop("b")] if "a" in settings else []
    return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "command": command,
            "metadata": data.get("metadata") or {}, "settings": settings, "rows": rows}  # fmt: skip


def load_result(path: str | Path) -> Result:
    """Read a result file (JSON, or gzip-compressed JSON); any problem is one InputError line."""
    path = Path(path)
    data = read_json(path, "result file", "an impbench result file")
    try:
        return Result.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError, InputError) as exc:
        what = f"missing key {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())
        raise InputError(f"{path}: not a valid impbench result: {what}") from None


# What a result's one metadata block says of every row: the code that ran and how it was set.
CODE_KEYS = {"git_commit": "commit", "kernels_digest": "kernel sources", "impbench_env": "IMPBENCH_* settings"}


def code_difference(mine: dict, theirs: dict) -> str | None:
    """How two results' metadata differ in the code that ran ("kernel sources 'b…' against 'a…'"), or None
    where they agree on everything both record (results from before a key was recorded say nothing)."""
    for key, what in CODE_KEYS.items():
        a, b = (run_settings(m) if key == "impbench_env" else m.get(key) for m in (mine, theirs))
        if None not in (a, b) and "n/a" not in (a, b) and a != b:
            return f"{what} {a!r} against {b!r}"
    return None


def merge_results(results: list[Result], names: list[str]) -> Result:
    """One result of several runs of the same sweep (several clusters, or GPU kinds run apart): the rows of
    all, each (model, pp, GPU kind) from one file only; every file must hold the same command and settings,
    and the same commit, kernel sources and IMPBENCH_* settings where both files record them.
    A row measured on another machine keeps its own machine facts, so no row is read as another's."""
    first = results[0]
    merged = Result(first.command, metadata={**first.metadata, "merged_from": names}, settings=first.settings)
    seen: dict[tuple, str] = {}
    for result, name in zip(results, names):
        if result.command != first.command or result.settings != first.settings:
            raise InputError(f"{name}: another command or other settings than {names[0]}; only runs of one sweep merge")
        differs = code_difference(result.metadata, first.metadata)  # one metadata block will speak for every row
        if differs:
            raise InputError(f"{name}: {differs} in {names[0]}; only runs of the same code and settings merge")
        for row in result.rows:
            key = row.key
            if key in seen and not row.failed:
                raise InputError(f"{name}: row {row.model} pp={row.pp}{' ' + row.gpu_kind if row.gpu_kind else ''} is "
                                 f"also in {seen[key]}; merge files whose rows differ")  # fmt: skip
            if row.machine is None:  # a local run's rows carry the machine of their file's metadata
                row.machine = {"host": result.metadata.get("platform"), "gpu_name": result.metadata.get("gpu_name")}
            if not row.failed:
                seen[key] = name
            merged.rows.append(row)
    return merged
