"""Ray Tune's placement of trials on slots, as list scheduling in grid order.

Tune starts trials in the order it generates them (the grid's) and starts the next one as
soon as a trial ends and frees its resources. :func:`simulate` replays that: each trial, in
order, takes the slot that frees first (ties: the lowest slot index), so a wave of equal
trials, a straggler holding one slot, and a grid smaller than the slots all come out as a
real run would lay them out. ``relaunch_seconds`` is what a slot stands idle between two
trials (a new Tune trial process, a new Train worker group, the next configuration): a trial
on a fresh slot starts at 0, one on a used slot that long after it freed.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """Where and when each trial ran: index ``i`` of every tuple is trial ``i`` (grid order).

    Times are seconds from the run's start; ``makespan_seconds`` is the last end (0 with no
    trials) plus ``teardown_seconds``, what the run spends after its last trial.
    """

    start_seconds: tuple[float, ...]
    end_seconds: tuple[float, ...]
    slot: tuple[int, ...]
    slots: int
    teardown_seconds: float = 0.0

    @property
    def makespan_seconds(self) -> float:
        return max(self.end_seconds, default=0.0) + self.teardown_seconds


def simulate(durations: Sequence[float], slots: int, relaunch_seconds: float = 0.0) -> Schedule:
    """List-schedule ``durations`` (seconds, grid order) on ``slots`` identical slots, a used
    slot waiting ``relaunch_seconds`` before its next trial."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    if relaunch_seconds < 0:
        raise ValueError(f"relaunch_seconds must be >= 0, got {relaunch_seconds}")
    negative = [d for d in durations if d < 0]
    if negative:
        raise ValueError(f"durations must be >= 0, got {negative[:3]}")
    # (time the slot frees, slot index): the heap's order is the earliest free, then lowest.
    free_at = [(0.0, index) for index in range(slots)]
    used: set[int] = set()
    starts: list[float] = []
    ends: list[float] = []
    placed: list[int] = []
    for duration in durations:
        freed, index = heapq.heappop(free_at)
        start = freed + (relaunch_seconds if index in used else 0.0)
        used.add(index)
        end = start + float(duration)
        heapq.heappush(free_at, (end, index))
        starts.append(start)
        ends.append(end)
        placed.append(index)
    return Schedule(tuple(starts), tuple(ends), tuple(placed), slots)
