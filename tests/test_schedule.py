"""schedule.interleaved_order: ABBA blocks, each arm reps times, pairs side by side."""

import pytest

from impbench.errors import InputError
from impbench.schedule import interleaved_order


def test_abba_blocks():
    assert interleaved_order(1) == ["A", "B"]
    assert interleaved_order(4) == ["A", "B", "B", "A", "A", "B", "B", "A"]


@pytest.mark.parametrize("reps", [1, 2, 3, 10, 11])
def test_each_arm_runs_reps_times_and_pair_i_is_adjacent(reps):
    order = interleaved_order(reps)
    assert order.count("A") == order.count("B") == reps
    assert all(sorted(order[2 * i : 2 * i + 2]) == ["A", "B"] for i in range(reps))


def test_linear_drift_cancels_over_whole_blocks():
    order = interleaved_order(10)  # an even number of pairs = whole ABBA blocks
    mean_position = {arm: sum(i for i, x in enumerate(order) if x == arm) / 10 for arm in "AB"}
    assert mean_position["A"] == mean_position["B"]


@pytest.mark.parametrize("reps", [0, -1, 2.5, True, "3"])
def test_bad_reps(reps):
    with pytest.raises(InputError):
        interleaved_order(reps)
