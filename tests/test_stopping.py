"""--reps auto and the re-measured flagged reps, through the real measurement loop (impbench.measure)
on synthetic prefills (tests/fakes.py): it stops early on quiet data, runs longer on noisy data, keeps
the A/A false-verdict rate at or below 5% and finds a planted 3% at least 95% of the time; throttled
reps are measured again and the verdict rests on clean ones."""

import numpy as np
import pytest
from fakes import FakeGpu

from impbench import measure
from impbench.arms import ArmSpec
from impbench.errors import InputError
from impbench.measure import Protocol
from impbench.presets import get_preset
from impbench.results import Row
from impbench.stopping import MAX_REPS, TARGET, AutoStop, discard_flagged_pairs, stop_reason
from impbench.telemetry import Telemetry

TINY = get_preset("tiny")
ARMS = {"A": ArmSpec("eager"), "B": ArmSpec("graph")}


def _row(fake, protocol, pp=64):
    engine = measure.build_engine(TINY, pp, list(ARMS.values()))
    engines = dict.fromkeys(ARMS, engine)  # one engine shared by both arms
    arms, stopped_by = measure.measure_arms(engines, TINY, pp, ARMS, protocol, Telemetry(nvml=_NoNvml()))
    return Row(TINY.name, pp, arms, stopped_by=stopped_by)


class _NoNvml:
    def nvmlInit(self):
        raise RuntimeError("no NVML in this test")


def _auto(fake_noise, seed, planted=0.0, rule=AutoStop(), monkeypatch=None):
    fake = FakeGpu(monkeypatch, noise=fake_noise, seed=seed)
    fake.tok_s = lambda model, pp, arm: 20_000.0 * (1 + planted if arm.mode == "graph" else 1.0)
    return _row(fake, Protocol(reps=3, warmup=0, auto=rule, max_reruns=0))


def test_quiet_data_stops_early_and_noisy_data_runs_longer(monkeypatch):
    quiet = _auto(0.001, 1, monkeypatch=monkeypatch)
    noisy = _auto(0.01, 2, monkeypatch=monkeypatch)
    assert quiet.stopped_by == TARGET and len(quiet.arms[0].reps) <= 8
    assert len(noisy.arms[0].reps) >= 20 and noisy.stopped_by in (TARGET, MAX_REPS)
    assert len(noisy.arms[0].reps) == len(noisy.arms[1].reps)  # whole A B B A blocks: the reps stay paired


def test_a_a_false_verdicts_at_most_5_percent_and_a_planted_3_percent_found_95_percent(monkeypatch):
    rule = AutoStop(target_ci_pct=2.0, max_reps=30)
    runs = 120
    verdicts_aa, verdicts_planted = [], []
    for seed in range(runs):
        row = _auto(0.01, 1000 + seed, 0.0, rule, monkeypatch)
        verdicts_aa.append(row.comparison(row.arms[1]).verdict)
        row = _auto(0.01, 5000 + seed, -0.03, rule, monkeypatch)
        verdicts_planted.append(row.comparison(row.arms[1]).verdict)
    assert sum(v != "SAME" for v in verdicts_aa) / runs <= 0.05, verdicts_aa
    assert sum(v == "SLOWER" for v in verdicts_planted) / runs >= 0.95, verdicts_planted


def test_the_stopping_rule():
    rule = AutoStop(target_ci_pct=1.0, max_reps=12, max_time_s=10.0, min_reps=6)
    rng = np.random.default_rng(3)
    quiet = [list(20_000 * (1 + 0.0005 * rng.standard_normal(6))) for _ in range(2)]
    assert stop_reason(rule, [arm[:4] for arm in quiet], 0.0) is None  # too few reps to judge
    assert stop_reason(rule, quiet, 0.0) == TARGET
    noisy = [list(20_000 * (1 + 0.05 * rng.standard_normal(12))) for _ in range(2)]
    assert stop_reason(rule, noisy, 0.0) == MAX_REPS
    assert stop_reason(rule, [arm[:8] for arm in noisy], 11.0) == "max time"
    assert discard_flagged_pairs([[False, True, False], [False, False, True]]) == [1, 2]


@pytest.mark.parametrize("kwargs", [{"target_ci_pct": 0.0}, {"max_reps": 2}, {"max_time_s": float("nan")}])
def test_bad_stopping_settings_are_input_errors(kwargs):
    with pytest.raises(InputError):
        AutoStop(**kwargs).check()


def test_throttled_reps_are_measured_again_after_a_cooldown(monkeypatch):
    fake = FakeGpu(monkeypatch, noise=0.002, seed=4)
    # prefills 3, 4 and 5 of the row (reps of the first rounds) ran throttled at a low clock
    fake.clock = lambda model, pp, arm, n: (1400, 0x20) if n in (3, 4, 5) else (1980, 0)
    monkeypatch.setattr(measure.time, "sleep", lambda s: None)
    row = _row(fake, Protocol(reps=5, warmup=0, cooldown_s=0.0, max_reruns=2))
    a, b = row.arms
    assert len(a.reps) == len(b.reps) == 5 and not any(rep.flagged for rep in a.reps + b.reps)
    assert len(a.discarded) + len(b.discarded) >= 3
    flagged = [rep for rep in a.discarded + b.discarded if rep.flagged]  # a pair goes whole: its partner too
    assert len(flagged) == 3 and all("sw_thermal" in rep.flag_reason for rep in flagged)


def test_with_no_reruns_left_flagged_reps_stay_and_are_counted(monkeypatch):
    fake = FakeGpu(monkeypatch, noise=0.002, seed=5)
    fake.clock = lambda model, pp, arm, n: (1400, 0x20) if n >= 3 else (1980, 0)  # throttled from the first rep on
    monkeypatch.setattr(measure.time, "sleep", lambda s: None)
    row = _row(fake, Protocol(reps=4, warmup=0, cooldown_s=0.0, max_reruns=1))
    assert sum(len(arm.discarded) for arm in row.arms) > 0


def test_a_row_whose_clocks_never_settle_keeps_its_flagged_pairs_marked_instead_of_none(monkeypatch):
    fake = FakeGpu(monkeypatch, noise=0.002, seed=6)
    fake.clock = lambda model, pp, arm, n: (1400 if n % 2 else 1980, 0)  # every other prefill far off the median
    monkeypatch.setattr(measure.time, "sleep", lambda s: None)
    row = _row(fake, Protocol(reps=4, warmup=0, cooldown_s=0.0, max_reruns=1))
    a, b = row.arms
    assert len(a.reps) == len(b.reps) == 4  # every pair had a flagged rep: brought back rather than none
    assert a.flagged_count + b.flagged_count >= 4 and all(rep.flag_reason for rep in a.discarded + b.discarded)
    assert row.verdict_without_flagged(b) == "n/a"  # the report says the answer rests on flagged reps
