"""Where each trial ran and when: the bars of a run's timeline (Gantt) figure.

trials.csv does not say which GPU a trial held in a way that survives every cluster (Ray
renumbers devices per worker), so lanes are derived from the times alone: trials in start
order each take the lowest block of ``workers`` consecutive lanes free at their start.
An experiment-parallel trial (1 worker) thus takes the lowest free lane, a hybrid trial
(k workers) the lowest free block of k, and a data-parallel trial (G workers) lanes
0..G-1, one bar per rank. Concurrent trials never
share a lane, so the number of lanes in use is the run's real concurrency: lanes beyond
G would expose oversubscription, empty stretches idle GPUs, a late bar a straggler.
"""

from __future__ import annotations

from dataclasses import dataclass

from distmis.scaling.timings import STATUS_OK, STATUS_STOPPED, Run, TrialTiming


@dataclass(frozen=True)
class Bar:
    """One trial on one lane; times in seconds since the run's ``makespan_start``."""

    trial_id: str
    lane: int
    left: float
    width: float
    status: str  # ok | failed | stopped, as in trials.csv

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def stopped(self) -> bool:
        return self.status == STATUS_STOPPED


def assign_lanes(trials: tuple[TrialTiming, ...] | list[TrialTiming]) -> dict[str, list[int]]:
    """The lanes each trial holds, by trial id (see the module docstring for the rule)."""
    free_at: list[float] = []  # per lane: when its last trial ended
    lanes: dict[str, list[int]] = {}
    for trial in sorted(trials, key=lambda t: (t.start_time, t.end_time, t.trial_id)):
        width = max(trial.workers, 1)
        first = 0
        # A lane is free if its last trial ended by this one's start (touching is fine).
        while any(
            lane < len(free_at) and free_at[lane] > trial.start_time
            for lane in range(first, first + width)
        ):
            first += 1
        taken = list(range(first, first + width))
        free_at.extend([float("-inf")] * (taken[-1] + 1 - len(free_at)))
        for lane in taken:
            free_at[lane] = trial.end_time
        lanes[trial.trial_id] = taken
    return lanes


def timeline_bars(run: Run) -> list[Bar]:
    """Every bar of ``run``'s timeline, in trials.csv order then lane order."""
    lanes = assign_lanes(run.trials)
    origin = run.summary.makespan_start
    return [
        Bar(
            trial_id=trial.trial_id,
            lane=lane,
            left=trial.start_time - origin,
            width=trial.end_time - trial.start_time,
            status=trial.status,
        )
        for trial in run.trials
        for lane in lanes[trial.trial_id]
    ]


def lane_count(run: Run, bars: list[Bar]) -> int:
    """Lanes to draw: all G (an idle GPU must show), more if trials needed more."""
    return max(run.gpus, max((bar.lane + 1 for bar in bars), default=0))


def busy_fraction(run: Run, bars: list[Bar]) -> float:
    """Share of the G × makespan device-seconds that some trial was running on."""
    return sum(bar.width for bar in bars) / (run.gpus * run.summary.makespan_seconds)
