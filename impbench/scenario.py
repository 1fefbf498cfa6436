"""A sweep scenario: a TOML file naming the grid `impbench sweep` measures (scenarios/sweeps/*.toml).

Keys, each with its type checked here before any GPU work (a wrong type or an empty list is one
InputError line naming the key and what it accepts; nothing is silently replaced by a default):
  models    list of preset names, non-empty
  pp        list of prompt lengths in tokens, non-empty
  arms      list of arm SPECs (impbench.arms), at least two; the first is the baseline
  reps      whole number >= stats.MIN_REPS, or "auto"   warmup     whole number >= 0
  layers    whole number >= 1 (first N layers)    tolerance  percent > 0 (SM clock flag)
  seed      whole number (synthetic weights and prompt)
  gpu_kinds list of GPU kinds (h100, h200, ...): with --ray, every row once on each
A SCENARIO argument is a path, or the name of a packaged scenario (`ci` for scenarios/sweeps/ci.toml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from impbench import resources
from impbench.errors import InputError
from impbench.files import read_toml

KEYS = ("models", "pp", "arms", "reps", "warmup", "layers", "tolerance", "seed", "gpu_kinds")


@dataclass(frozen=True)
class Scenario:
    """A scenario's keys as given (None where the file does not set one)."""

    path: str
    models: tuple[str, ...] | None = None
    pp: tuple[int, ...] | None = None
    arms: tuple[str, ...] | None = None
    reps: int | str | None = None  # "auto": impbench.stopping
    warmup: int | None = None
    layers: int | None = None
    tolerance: float | None = None
    seed: int | None = None
    gpu_kinds: tuple[str, ...] | None = None


def resolve_path(text: str) -> Path:
    """A scenario path as given, else a packaged scenario of that name."""
    path = Path(text)
    if path.exists() or path.suffix == ".toml" or len(path.parts) > 1:  # "qwen3.6" is a name, not a path
        return path
    packaged = resources.sweeps_dir() / f"{text}.toml"
    if packaged.is_file():
        return packaged
    names = ", ".join(sorted(p.stem for p in resources.sweeps_dir().glob("*.toml")))
    raise InputError(f"no scenario file {text!r}; give a path to a TOML file or a packaged scenario name ({names})")


def _whole(where: str, key: str, value, low: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{where}: {key} must be a whole number, got {value!r}")
    if low is not None and value < low:
        raise InputError(f"{where}: {key} must be >= {low}, got {value}")
    return value


def _list(where: str, key: str, value, item_type: type, what: str) -> tuple:
    if not isinstance(value, list):
        raise InputError(f"{where}: {key} must be a list of {what} such as [{'512, 1024' if item_type is int else '...'}], "
                         f"got {value!r}")  # fmt: skip
    if not value:
        raise InputError(f"{where}: {key} is an empty list; give at least one of {what}, or leave the key out")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, item_type):
            raise InputError(f"{where}: every entry of {key} must be one of {what}, got {item!r}")
    return tuple(value)


def load_scenario(text: str) -> Scenario:
    from impbench.stats import MIN_REPS

    path = resolve_path(text)
    where = str(path)
    data = read_toml(path, "scenario file")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise InputError(f"{where}: unknown keys {unknown}; accepted: {', '.join(KEYS)}")
    values: dict = {"path": where}
    if "models" in data:
        values["models"] = _list(where, "models", data["models"], str, "preset names")
    if "pp" in data:
        values["pp"] = _list(where, "pp", data["pp"], int, "whole numbers of tokens")
    if "arms" in data:
        values["arms"] = _list(where, "arms", data["arms"], str, "arm specs")
        if len(values["arms"]) < 2:
            raise InputError(f"{where}: arms must list at least two arm specs (the first is the baseline)")
    if "reps" in data:
        values["reps"] = "auto" if data["reps"] == "auto" else _whole(where, "reps", data["reps"], MIN_REPS)
    if "warmup" in data:
        values["warmup"] = _whole(where, "warmup", data["warmup"], 0)
    if "layers" in data:
        values["layers"] = _whole(where, "layers", data["layers"], 1)
    if "seed" in data:
        values["seed"] = _whole(where, "seed", data["seed"], None)
    if "gpu_kinds" in data:
        values["gpu_kinds"] = _list(where, "gpu_kinds", data["gpu_kinds"], str, "GPU kinds")
    if "tolerance" in data:
        tolerance = data["tolerance"]
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
                or tolerance <= 0:  # fmt: skip
            raise InputError(f"{where}: tolerance must be a number of percent > 0, got {tolerance!r}")
        values["tolerance"] = float(tolerance)
    return Scenario(**values)
