"""`impbench sweep`: a grid of models x prompt lengths x arms, measured as `ab` measures, for CI tables.

One engine per (model, pp) is shared by every arm; the arms' reps run interleaved (A B C C B A ...)
and each arm is compared with the first. A scenario TOML (scenarios/sweeps/*.toml) names the grid;
command-line options override it. The result file is rewritten after every (model, pp), and a run
given the same --out and the same settings resumes: rows already in the file are not measured again.
"""

from __future__ import annotations

import json
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from impbench.ab import ABSettings, measure_arms, measure_grid
from impbench.arms import ArmSpec, parse_arm
from impbench.errors import InputError
from impbench.results import ArmResult
from impbench.stats import compare_arms

FORMAT = "impbench.sweep"
SCHEMA_VERSION = 1
SCENARIO_KEYS = {"models", "pp", "arms", "reps", "warmup", "layers", "tolerance", "seed"}

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@dataclass
class SweepRow:
    model: str
    pp: int
    arms: list[ArmResult]

    def to_dict(self) -> dict:
        return {"model": self.model, "pp": self.pp, "arms": [arm.to_dict() for arm in self.arms]}

    @classmethod
    def from_dict(cls, data: dict) -> SweepRow:
        return cls(data["model"], int(data["pp"]), [ArmResult.from_dict(arm) for arm in data["arms"]])


@dataclass
class SweepResult:
    rows: list[SweepRow] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        data = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "metadata": self.metadata,
                "settings": self.settings, "rows": [row.to_dict() for row in self.rows]}  # fmt: skip
        return json.dumps(data, indent=1, allow_nan=False) + "\n"

    @classmethod
    def load(cls, path: Path) -> SweepResult:
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT or data.get("schema_version") != SCHEMA_VERSION:
                raise ValueError(f"not an {FORMAT} v{SCHEMA_VERSION} file")
            return cls([SweepRow.from_dict(r) for r in data["rows"]], data["metadata"], data["settings"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"--out {path}: cannot resume from it ({exc}); give another path") from None


@dataclass(frozen=True)
class SweepPlan:
    models: list[str]
    prompt_lengths: list[int]
    arms: list[ArmSpec]
    settings: ABSettings
    layers: int | None = None

    def settings_dict(self) -> dict:
        return {**self.settings.to_dict(), "layers": self.layers, "arms": [arm.to_dict() for arm in self.arms]}


def load_scenario(path: str | Path) -> dict:
    """The keys of a sweep scenario TOML (models, pp, arms, reps, warmup, layers, tolerance, seed)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - SCENARIO_KEYS)
    if unknown:
        raise InputError(f"{path}: unknown keys {unknown}; accepted: {', '.join(sorted(SCENARIO_KEYS))}")
    return data


def arm_names(count: int) -> list[str]:
    if count > len(string.ascii_uppercase):
        raise InputError(f"at most {len(string.ascii_uppercase)} arms, got {count}")
    return list(string.ascii_uppercase[:count])


def run_sweep(plan: SweepPlan, presets: list, metadata: dict, out: Path | None, progress=None) -> SweepResult:
    """Measure every (model, pp) of the plan not already in `out`; rewrite `out` after each."""
    from impbench.report import atomic_write_text

    names = arm_names(len(plan.arms))
    arms = dict(zip(names, plan.arms))
    result = SweepResult(metadata=metadata, settings=plan.settings_dict())
    if out is not None and out.exists():
        previous = SweepResult.load(out)
        if previous.settings != result.settings:
            raise InputError(f"--out {out} holds a sweep with other settings; give another path to start anew")
        result.rows = previous.rows
        if progress and result.rows:
            progress(f"resuming {out}: {len(result.rows)} row(s) already measured")
    done = {(row.model, row.pp) for row in result.rows}

    def measure(engine, preset, prompt_tokens, telemetry):
        measured = measure_arms(engine, preset, prompt_tokens, arms, plan.settings, telemetry, progress)
        result.rows.append(SweepRow(preset.name, prompt_tokens, [measured[name] for name in names]))
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, result.to_json())

    measure_grid(presets, plan.prompt_lengths, arms, plan.settings, measure, progress,
                 skip=lambda model, pp: (model, pp) in done)  # fmt: skip
    return result


def sweep_records(result: SweepResult) -> list[dict]:
    """One record per (model, pp, arm): median tok/s, spread, and the delta over the row's first arm."""
    records = []
    for row in result.rows:
        first = row.arms[0]
        for arm in row.arms:
            summary = arm.summary()
            comparison = None if arm is first else compare_arms(first.tok_s, arm.tok_s, paired=True)
            records.append({
                "model": row.model, "pp": row.pp, "arm": f"{arm.name} {arm.label}",
                "tok_s": summary.median_tok_s, "spread_pct": summary.spread_pct,
                "delta_pct": None if comparison is None else comparison.delta_pct,
                "ci_low_pct": None if comparison is None else comparison.ci_low_pct,
                "ci_high_pct": None if comparison is None else comparison.ci_high_pct,
                "verdict": "baseline" if comparison is None else comparison.verdict,
                "flagged": arm.flagged_count, "sm_mhz_median": arm.sm_mhz_median,
                "capture": arm.capture.label(), "host_us_per_launch": arm.host_us_per_launch,
            })  # fmt: skip
    return records


def format_sweep(result: SweepResult, fmt: str = "md") -> str:
    import pandas as pd

    from impbench.report import _ci, _metadata_line, _num, _pct

    records = sweep_records(result)
    if fmt == "json":
        return json.dumps(records, indent=1, allow_nan=False)
    if fmt == "csv":
        return pd.DataFrame(records).to_csv(index=False)
    cells = [{"Model": r["model"], "pp": str(r["pp"]), "arm": r["arm"], "tok/s": _num(r["tok_s"]),
              "spread": _num(r["spread_pct"], 1, "%"), "Δ vs first": _pct(r["delta_pct"]),
              "95% CI": _ci(r["ci_low_pct"], r["ci_high_pct"]), "verdict": r["verdict"],
              "flagged": str(r["flagged"]), "SM MHz": _num(r["sm_mhz_median"]), "capture": r["capture"]}
             for r in records]  # fmt: skip
    if not cells:
        return "(no rows)"
    frame = pd.DataFrame(cells)
    align = ["left", "right", "left"] + ["right"] * 4 + ["left", "right", "right", "left"]
    reps = result.settings.get("reps")
    return "\n".join([_metadata_line(result.metadata),
                      f"{reps} reps per arm, interleaved; Δ = arm over the row's first arm (medians), 95% bootstrap CI.",
                      "", frame.to_markdown(index=False, disable_numparse=True, colalign=align)])  # fmt: skip


def build_plan(scenario: dict, models: str | None, pp: str | None, arm_specs: tuple[str, ...], reps: int | None,
               warmup: int | None, layers: int | None, seed: int, prewarm: bool) -> SweepPlan:  # fmt: skip
    """The grid from a scenario's keys with command-line values winning; checked, InputError otherwise."""

    def listed(value, what) -> list:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not value:
            raise InputError(f"{what} must be a non-empty list, got {value!r}")
        return value

    model_names = listed(models or scenario.get("models") or ["qwen3-coder"], "models")
    try:
        prompt_lengths = [int(v) for v in listed(pp or scenario.get("pp") or [512, 1024], "pp")]
    except (TypeError, ValueError):
        raise InputError(f"pp must be whole numbers of tokens, got {pp or scenario.get('pp')!r}") from None
    if min(prompt_lengths) <= 0:
        raise InputError(f"pp values must be > 0, got {prompt_lengths}")
    specs = list(arm_specs) or listed(scenario.get("arms") or ["mode=eager", "mode=graph"], "arms")
    arms = [parse_arm(str(spec)) for spec in specs]
    if len(arms) < 2:
        raise InputError("a sweep needs at least two arms (the first is the baseline)")
    arm_names(len(arms))
    settings = ABSettings(reps=reps if reps is not None else int(scenario.get("reps", 5)),
                          warmup=warmup if warmup is not None else int(scenario.get("warmup", 1)),
                          tolerance_pct=float(scenario.get("tolerance", 5.0)),
                          seed=seed, prewarm=prewarm)  # fmt: skip
    settings.check()
    return SweepPlan(model_names, prompt_lengths, arms, settings, layers if layers is not None else scenario.get("layers"))
