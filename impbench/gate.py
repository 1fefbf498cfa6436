"""The CI gate: which compared arms fail a `--fail-on` rule, and why.

A rule fails an arm only on a verdict whose whole confidence interval lies past the threshold:
`slower` fails an arm judged SLOWER with its interval's upper end below -threshold %, `faster` one
judged FASTER with its lower end above +threshold %, `change` either. Drift of a control arm between
two runs is never gated (impbench.report.compare_results marks it), so a machine that warmed up
between a base and a head run does not fail a pull request.

Exit codes of a gated command: 0 passed, 1 the gate failed, 2 bad input (as every command).
"""

from __future__ import annotations

from dataclasses import dataclass

from impbench.errors import InputError
from impbench.stats import FASTER, SLOWER, Comparison

FAIL_ON = ("slower", "faster", "change")
EXIT_FAILED = 1


@dataclass(frozen=True)
class Judged:
    """One compared arm: where it is, and its comparison (None where it has nothing to compare)."""

    model: str
    pp: int
    arm: str
    comparison: Comparison | None


@dataclass(frozen=True)
class Gate:
    fail_on: str
    threshold_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.fail_on not in FAIL_ON:
            raise InputError(f"--fail-on must be one of {', '.join(FAIL_ON)}, got {self.fail_on!r}")
        if not (self.threshold_pct >= 0 and self.threshold_pct < 100):
            raise InputError(f"--threshold must be a percentage in [0, 100), got {self.threshold_pct!r}")

    def why_failed(self, c: Comparison | None) -> str | None:
        if c is None or c.ci_low_pct is None:
            return None
        t = self.threshold_pct
        if self.fail_on in ("slower", "change") and c.verdict == SLOWER and c.ci_high_pct < -t:
            return f"SLOWER {c.delta_pct:+.1f}% [{c.ci_low_pct:+.1f}, {c.ci_high_pct:+.1f}]%, interval below -{t:g}%"
        if self.fail_on in ("faster", "change") and c.verdict == FASTER and c.ci_low_pct > t:
            return f"FASTER {c.delta_pct:+.1f}% [{c.ci_low_pct:+.1f}, {c.ci_high_pct:+.1f}]%, interval above +{t:g}%"
        return None

    def judge(self, judged: list[Judged]) -> list[str]:
        """One line per failing arm (empty: the gate passes)."""
        lines = []
        for j in judged:
            why = self.why_failed(j.comparison)
            if why:
                lines.append(f"{j.model} pp={j.pp} {j.arm}: {why}")
        return lines

    def report(self, judged: list[Judged]) -> tuple[bool, list[str]]:
        """(passed, lines to print): the verdict of the gate and which rows failed it."""
        failures = self.judge(judged)
        rule = f"--fail-on {self.fail_on} --threshold {self.threshold_pct:g}"
        if not failures:
            return True, [f"gate passed ({rule}): {len(judged)} compared arm(s), none failed"]
        return False, [f"gate FAILED ({rule}): {len(failures)} of {len(judged)} compared arm(s)"] + [f"  {line}" for line in failures]
