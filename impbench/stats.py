"""Statistics of an A/B: per-arm summary, delta of B over A with a bootstrap CI, and a verdict.

Every number is median-based: a rep hit by a clock dip or a host hiccup moves a mean, not a median.

Definitions (the report prints these words, so they are fixed here):
- spread_pct: (max - min) / median of an arm, in %. Shown to the reader; one outlier moves it.
- iqr_pct: interquartile range / median of an arm, in % (numpy's linear-interpolated quartiles).
- noise_pct: the larger of the two arms' iqr_pct -- the rep-to-rep variation this run measured.
  The IQR rather than the range because one throttled rep should not silence a real difference;
  with Gaussian noise of sigma the IQR is about 1.35 sigma.
- delta_pct: 100 * (median(B) / median(A) - 1): B's throughput over A's. Positive = B faster.
- CI: percentile bootstrap of delta_pct (seeded, so the same samples always give the same answer).
- verdict: SAME when the CI contains 0 (not shown to differ) or |delta_pct| < noise_pct (a difference
  smaller than the run's own noise is not worth acting on, however many reps made the CI narrow),
  or when an arm has fewer than MIN_REPS reps; otherwise FASTER (delta > 0) or SLOWER (delta < 0).

On 10 reps with 1% Gaussian noise this says SAME for about 98.5% of A/A runs and finds a planted
3% shift with the right sign about 98.5% of the time (tests/test_stats.py checks >= 95% of 200).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

FASTER, SLOWER, SAME = "FASTER", "SLOWER", "SAME"
VERDICTS = (FASTER, SLOWER, SAME)
MIN_REPS = 3  # below this an arm's quartiles and bootstrap say nothing
RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class ArmSummary:
    n: int
    median_tok_s: float
    min_tok_s: float
    max_tok_s: float
    spread_pct: float
    iqr_pct: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Comparison:
    """B against A: the delta, its confidence interval, the noise it was judged against, the verdict."""

    a: ArmSummary
    b: ArmSummary
    delta_pct: float
    ci_low_pct: float | None  # None where an arm has fewer than MIN_REPS reps
    ci_high_pct: float | None
    noise_pct: float
    verdict: str
    reason: str  # one line: why this verdict
    paired: bool
    resamples: int
    confidence: float

    def to_dict(self) -> dict:
        out = asdict(self)
        out["a"], out["b"] = self.a.to_dict(), self.b.to_dict()
        return out


def _samples(name: str, tok_s: Sequence[float]) -> np.ndarray:
    values = np.asarray(tok_s, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of tok/s, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"{name} must hold finite tok/s > 0, got {values.tolist()}")
    return values


def summarize(tok_s: Sequence[float]) -> ArmSummary:
    """Median, min, max, spread and IQR (both % of the median) of one arm's tok/s samples."""
    values = _samples("tok_s", tok_s)
    median = float(np.median(values))
    q1, q3 = np.percentile(values, [25, 75])
    return ArmSummary(
        n=int(values.size),
        median_tok_s=median,
        min_tok_s=float(values.min()),
        max_tok_s=float(values.max()),
        spread_pct=float(100.0 * (values.max() - values.min()) / median),
        iqr_pct=float(100.0 * (q3 - q1) / median),
    )


def bootstrap_delta_ci(
    a_tok_s: Sequence[float],
    b_tok_s: Sequence[float],
    *,
    paired: bool = False,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of delta_pct, all resamples drawn at once as a (resamples, n) index array.

    paired=True resamples rep *indices* and takes A and B at the same indices. That is right when
    rep i of A and rep i of B ran side by side (schedule.interleaved_order): a slow drift shared by
    the pair then stays shared in every resample, so the interval measures the A-B difference, not
    drift that interleaving already cancelled. paired=False resamples each arm on its own; use it
    when reps are not matched (different runs, as in `impbench compare`, or unequal counts) --
    it is the conservative choice, never narrower because of an assumed pairing.
    """
    a, b = _samples("a_tok_s", a_tok_s), _samples("b_tok_s", b_tok_s)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    if paired:
        if a.size != b.size:
            raise ValueError(f"paired samples need equal counts, got {a.size} (A) and {b.size} (B)")
        index_a = index_b = rng.integers(0, a.size, size=(resamples, a.size))
    else:
        index_a = rng.integers(0, a.size, size=(resamples, a.size))
        index_b = rng.integers(0, b.size, size=(resamples, b.size))
    deltas = 100.0 * (np.median(b[index_b], axis=1) / np.median(a[index_a], axis=1) - 1.0)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(deltas, [tail, 100.0 - tail])
    return float(low), float(high)


def compare_arms(
    a_tok_s: Sequence[float],
    b_tok_s: Sequence[float],
    *,
    paired: bool = False,
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> Comparison:
    """B against A from raw tok/s samples (see the module docstring for every definition)."""
    a, b = summarize(a_tok_s), summarize(b_tok_s)
    delta = 100.0 * (b.median_tok_s / a.median_tok_s - 1.0)
    noise = max(a.iqr_pct, b.iqr_pct)
    low = high = None
    if min(a.n, b.n) < MIN_REPS:
        verdict, reason = SAME, f"too few reps for a verdict ({a.n} A, {b.n} B; need {MIN_REPS} each)"
    else:
        low, high = bootstrap_delta_ci(
            a_tok_s, b_tok_s, paired=paired, resamples=resamples, confidence=confidence, seed=seed
        )
        ci = f"{confidence:.0%} CI [{low:+.2f}, {high:+.2f}]%"
        if low <= 0.0 <= high:
            verdict, reason = SAME, f"{ci} contains 0"
        elif abs(delta) < noise:
            verdict, reason = SAME, f"|delta| {abs(delta):.2f}% is under the noise {noise:.2f}% (IQR)"
        else:
            verdict = FASTER if delta > 0 else SLOWER
            reason = f"{ci} excludes 0 and |delta| {abs(delta):.2f}% >= noise {noise:.2f}% (IQR)"
    return Comparison(a, b, delta, low, high, noise, verdict, reason, paired, resamples, confidence)


def median_interval(tok_s: Sequence[float], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                    seed: int = SEED) -> tuple[float, float, float]:
    """(low, median, high): an arm's median tok/s with its percentile-bootstrap interval (for plots)."""
    values = _samples("tok_s", tok_s)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, values.size, size=(resamples, values.size))], axis=1)
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(medians, [tail, 100.0 - tail])
    return float(low), float(np.median(values)), float(high)


def drop_flagged(
    a_tok_s: Sequence[float],
    b_tok_s: Sequence[float],
    a_flagged: Sequence[bool],
    b_flagged: Sequence[bool],
    *,
    paired: bool,
) -> tuple[list[float], list[float]]:
    """The samples without flagged reps; paired, a pair goes when either of its reps is flagged."""
    if len(a_flagged) != len(a_tok_s) or len(b_flagged) != len(b_tok_s):
        raise ValueError("one flag per sample is needed in each arm")
    if paired:
        if len(a_tok_s) != len(b_tok_s):
            raise ValueError(f"paired samples need equal counts, got {len(a_tok_s)} (A) and {len(b_tok_s)} (B)")
        a_flagged = b_flagged = [fa or fb for fa, fb in zip(a_flagged, b_flagged, strict=True)]
    a_kept = [x for x, flagged in zip(a_tok_s, a_flagged, strict=True) if not flagged]
    b_kept = [x for x, flagged in zip(b_tok_s, b_flagged, strict=True) if not flagged]
    return a_kept, b_kept
