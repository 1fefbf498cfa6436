"""stats: summaries, the bootstrap CI of the median delta, and the verdict's error rates."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impbench.stats import (
    FASTER,
    MIN_REPS,
    SAME,
    SLOWER,
    bootstrap_delta_ci,
    compare_arms,
    drop_flagged,
    summarize,
)

TRIALS = 200
REPS = 10
NOISE = 0.01  # 1% Gaussian rep-to-rep noise
TOK_S = 20_000.0


def _arm(rng, shift=0.0, reps=REPS, noise=NOISE):
    return TOK_S * (1.0 + shift) * (1.0 + noise * rng.standard_normal(reps))


def test_summarize():
    s = summarize([100.0, 110.0, 90.0, 105.0, 95.0])
    assert (s.n, s.median_tok_s, s.min_tok_s, s.max_tok_s) == (5, 100.0, 90.0, 110.0)
    assert s.spread_pct == pytest.approx(20.0)
    assert s.iqr_pct == pytest.approx(10.0)  # quartiles 95 and 105


@pytest.mark.parametrize("paired", [True, False])
def test_a_a_says_same_in_at_least_95_percent(paired):
    rng = np.random.default_rng(1234)
    verdicts = [compare_arms(_arm(rng), _arm(rng), paired=paired, seed=t).verdict for t in range(TRIALS)]
    assert verdicts.count(SAME) >= 0.95 * TRIALS


@pytest.mark.parametrize("paired", [True, False])
@pytest.mark.parametrize("shift, expected", [(0.03, FASTER), (-0.03, SLOWER)])
def test_planted_3_percent_shift_found_with_right_sign(paired, shift, expected):
    rng = np.random.default_rng(99)
    verdicts = [compare_arms(_arm(rng), _arm(rng, shift), paired=paired, seed=t).verdict for t in range(TRIALS)]
    assert verdicts.count(expected) >= 0.95 * TRIALS
    assert verdicts.count(FASTER if expected == SLOWER else SLOWER) == 0  # never the wrong sign


def test_delta_is_median_based_and_sign_means_b_faster():
    c = compare_arms([100.0, 100.0, 100.0, 1.0], [110.0, 110.0, 110.0, 110.0])
    assert c.delta_pct == pytest.approx(10.0)  # the 1.0 outlier does not move the median
    assert c.ci_low_pct <= c.delta_pct <= c.ci_high_pct


def test_seeded_same_samples_same_answer():
    rng = np.random.default_rng(5)
    a, b = _arm(rng), _arm(rng, 0.01)
    assert compare_arms(a, b) == compare_arms(a, b)
    assert bootstrap_delta_ci(a, b, seed=1) != bootstrap_delta_ci(a, b, seed=2)


def test_significant_but_under_the_noise_is_same():
    # 400 reps make the CI narrow; a 1% shift stays under 2% noise (IQR ~2.7%), so SAME.
    rng = np.random.default_rng(7)
    c = compare_arms(_arm(rng, reps=400, noise=0.02), _arm(rng, 0.01, reps=400, noise=0.02))
    assert c.ci_low_pct > 0
    assert abs(c.delta_pct) < c.noise_pct
    assert c.verdict == SAME and "under the noise" in c.reason


def test_ci_containing_zero_is_same():
    c = compare_arms([100.0, 101.0, 99.0, 100.5], [100.2, 99.5, 101.0, 100.0], paired=True)
    assert c.ci_low_pct <= 0 <= c.ci_high_pct
    assert c.verdict == SAME and "contains 0" in c.reason


def test_clear_difference_reason():
    c = compare_arms([100.0, 100.5, 99.5, 100.2], [120.0, 120.5, 119.5, 120.2], paired=True)
    assert c.verdict == FASTER and "excludes 0" in c.reason


def test_too_few_reps_gives_no_ci():
    c = compare_arms([100.0] * (MIN_REPS - 1), [200.0] * (MIN_REPS - 1))
    assert c.verdict == SAME and c.ci_low_pct is None and c.ci_high_pct is None
    assert "too few reps" in c.reason


def test_paired_resamples_pairs():
    # Both arms drift together by 20%; B is 5% faster at every pair. Paired sees 5% tightly,
    # unpaired sees the drift as noise.
    drift = np.linspace(1.0, 1.2, 10)
    a, b = 100.0 * drift, 105.0 * drift
    paired = bootstrap_delta_ci(a, b, paired=True)
    unpaired = bootstrap_delta_ci(a, b, paired=False)
    assert paired[1] - paired[0] < unpaired[1] - unpaired[0]


@pytest.mark.parametrize(
    "a, b, kwargs",
    [
        ([], [1.0, 2.0, 3.0], {}),
        ([1.0, 0.0, 2.0], [1.0, 2.0, 3.0], {}),
        ([1.0, math.nan, 2.0], [1.0, 2.0, 3.0], {}),
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0], {"paired": True}),
    ],
)
def test_bad_samples_raise_value_error(a, b, kwargs):
    with pytest.raises(ValueError):
        compare_arms(a, b, **kwargs)


def test_drop_flagged():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    fa, fb = [False, True, False], [False, False, True]
    assert drop_flagged(a, b, fa, fb, paired=True) == ([1.0], [4.0])
    assert drop_flagged(a, b, fa, fb, paired=False) == ([1.0, 3.0], [4.0, 5.0])
    with pytest.raises(ValueError):
        drop_flagged(a, b, fa[:2], fb, paired=False)


samples = st.lists(st.floats(min_value=1.0, max_value=1e6), min_size=MIN_REPS, max_size=12)


@settings(max_examples=50, deadline=None)
@given(a=samples, b=samples, power=st.integers(min_value=-20, max_value=20))
def test_scaling_both_arms_changes_nothing(a, b, power):
    # Scaling by a power of two is exact in floating point, so every statistic must be identical.
    scale = 2.0**power
    before = compare_arms(a, b)
    after = compare_arms([x * scale for x in a], [x * scale for x in b])
    assert (after.verdict, after.delta_pct, after.ci_low_pct, after.ci_high_pct, after.noise_pct) == (
        before.verdict, before.delta_pct, before.ci_low_pct, before.ci_high_pct, before.noise_pct)  # fmt: skip


@settings(max_examples=50, deadline=None)
@given(values=samples)
def test_summary_is_ordered(values):
    s = summarize(values)
    assert s.min_tok_s <= s.median_tok_s <= s.max_tok_s
    assert 0 <= s.iqr_pct <= s.spread_pct + 1e-9
