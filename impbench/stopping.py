"""When a row has measured enough: a fixed number of reps, or (`--reps auto`) the first block of
interleaved reps after which every arm's delta over the first arm is known to `target_ci_pct`.

`--reps auto` adds interleaved rounds two at a time (one A B B A block, so every pair of rounds puts
each arm at the same mean position in time) until the widest 95% confidence interval of an arm's
delta is narrower than the target, or `max_reps` reps per arm or `max_time_s` seconds of the row
have passed; the row records which of these stopped it. The stop depends on the interval's width,
never on where it lies, so stopping early does not bias the verdict: on synthetic A/A data the
false-verdict rate stays under 5% (tests/test_stopping.py).

Flagged reps (a strayed SM clock, a thermal or power throttle: telemetry.flag_reps) are discarded
pair by pair and measured again after `cooldown_s`, up to `max_reruns` rounds, so a verdict rests
on clean reps; what was discarded, and why, stays in the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from impbench.errors import InputError
from impbench.stats import MIN_REPS, compare_arms

TARGET = "target interval"
MAX_REPS = "max reps"
MAX_TIME = "max time"
FIXED = "reps"


@dataclass(frozen=True)
class AutoStop:
    target_ci_pct: float = 1.0  # width (high - low) of the widest 95% interval of a delta, in %
    max_reps: int = 50  # per arm
    max_time_s: float = 600.0  # per row, measured reps only
    min_reps: int = 6  # per arm before the first check: an interval of 3 pairs is wide by chance

    def check(self) -> AutoStop:
        if not (isinstance(self.target_ci_pct, (int, float)) and math.isfinite(self.target_ci_pct) and self.target_ci_pct > 0):
            raise InputError(f"--target-ci must be a width in percent > 0, got {self.target_ci_pct!r}")
        if isinstance(self.max_reps, bool) or not isinstance(self.max_reps, int) or self.max_reps < max(MIN_REPS, 4):
            raise InputError(f"--max-reps must be a whole number >= {max(MIN_REPS, 4)}, got {self.max_reps!r}")
        if not (isinstance(self.max_time_s, (int, float)) and math.isfinite(self.max_time_s) and self.max_time_s > 0):
            raise InputError(f"--max-time must be seconds > 0, got {self.max_time_s!r}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def widest_interval_pct(samples: list[list[float]]) -> float:
    """The widest 95% interval (high - low, %) of an arm's delta over the first arm, reps paired."""
    widths = []
    for arm in samples[1:]:
        comparison = compare_arms(samples[0], arm, paired=len(arm) == len(samples[0]))
        if comparison.ci_low_pct is None:
            return math.inf
        widths.append(comparison.ci_high_pct - comparison.ci_low_pct)
    return max(widths, default=0.0)


def stop_reason(rule: AutoStop, samples: list[list[float]], elapsed_s: float) -> str | None:
    """Why to stop after the reps so far (every arm's tok/s, first arm first), or None to go on."""
    reps = min(len(arm) for arm in samples)
    if reps < rule.min_reps:
        return None if elapsed_s < rule.max_time_s else MAX_TIME
    if widest_interval_pct(samples) <= rule.target_ci_pct:
        return TARGET
    if reps + 2 > rule.max_reps:  # the next block (two rounds) would pass the limit
        return MAX_REPS
    if elapsed_s >= rule.max_time_s:
        return MAX_TIME
    return None


def discard_flagged_pairs(flags: list[list[bool]]) -> list[int]:
    """Indices i of the rep pairs to discard: those where any arm's rep i is flagged."""
    count = min(len(arm) for arm in flags)
    return [i for i in range(count) if any(arm[i] for arm in flags)]
