"""The order in which the two arms of an A/B run their measured repetitions.

Reps run in ABBA blocks (A B B A A B B A ...), not A B A B: in every A B B A block both arms sit at
the same mean position in time (A at 0 and 3, B at 1 and 2), so a drift that is linear over the block
(warming card, falling clock, a host getting busier) adds the same amount to both arms instead of
always favouring the arm that runs first. Pair i -- the arms' i-th reps -- is positions 2i and 2i+1,
side by side in time, which is what lets stats.compare_arms treat the reps as paired.
"""

from __future__ import annotations

from impbench.errors import InputError

ARMS = ("A", "B")


def interleaved_order(reps: int, arms: tuple[str, ...] = ARMS) -> list[str]:
    """The arm of each of the len(arms)*reps measured runs: "A","B","B","A","A","B",... (reps per arm
    >= 1). More arms go the same way, forward then backward (A B C C B A ...): every round holds each
    arm once and two rounds put every arm at the same mean position."""
    if isinstance(reps, bool) or not isinstance(reps, int) or reps < 1:
        raise InputError(f"reps must be an integer >= 1, got {reps!r}")
    order: list[str] = []
    for round_index in range(reps):
        order.extend(arms if round_index % 2 == 0 else arms[::-1])
    return order
