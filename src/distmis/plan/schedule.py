"""Ray Tune's placement of trials on slots, as list scheduling in grid order.

Tune starts trials in the order it generates them (the grid's) and starts the next one as
soon as a trial ends and frees its resources. :func:`simulate` replays that: each trial, in
order, takes the slot that frees first (ties: the lowest slot index), so a wave of equal
trials, a straggler holding one slot, and a grid smaller than the slots all come out as a
real run would lay them out. ``relaunch_seconds`` is what a slot stands idle between two
trials (a new Tune trial process, a new Train worker group, the next configuration): a trial
on a used slot starts that long after it freed. The first wave, one trial on each fresh slot,
is spread evenly over ``first_wave_spread_seconds``: its first trial starts at 0 and its last
that long after (a wave of trial processes does not start at one instant).
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


def simulate(
    durations: Sequence[float],
    slots: int,
    relaunch_seconds: float = 0.0,
    first_wave_spread_seconds: float = 0.0,
) -> Schedule:
    """List-schedule ``durations`` (seconds, grid order) on ``slots`` identical slots, a used
    slot waiting ``relaunch_seconds`` before its next trial and the first wave's starts spread
    evenly over ``first_wave_spread_seconds``."""
    if slots < 1:
        raise ValueError(f"slots must be >= 1, got {slots}")
    for name, value in (
        ("relaunch_seconds", relaunch_seconds),
        ("first_wave_spread_seconds", first_wave_spread_seconds),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    negative = [d for d in durations if d < 0]
    if negative:
        raise ValueError(f"durations must be >= 0, got {negative[:3]}")
    wave = min(slots, len(durations))
    spacing = first_wave_spread_seconds / (wave - 1) if wave > 1 else 0.0
    # The first wave takes fresh slots 0, 1, ... in order (the runner fills every free slot
    # before any frees again), its starts `spacing` apart.
    starts = [index * spacing for index in range(wave)]
    ends = [start + float(duration) for start, duration in zip(starts, durations, strict=False)]
    placed = list(range(wave))
    # Then (time the slot frees, slot index): the earliest free, then the lowest index.
    free_at = [(end, index) for index, end in enumerate(ends)]
    heapq.heapify(free_at)
    for duration in durations[wave:]:
        freed, index = heapq.heappop(free_at)
        start = freed + relaunch_seconds
        end = start + float(duration)
        heapq.heappush(free_at, (end, index))
        starts.append(start)
        ends.append(end)
        placed.append(index)
    return Schedule(tuple(starts), tuple(ends), tuple(placed), slots)
