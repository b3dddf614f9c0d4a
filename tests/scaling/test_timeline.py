"""Timeline lanes: which GPU (or worker) each trial held, from the times alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from distmis.scaling.timeline import Bar, assign_lanes, busy_fraction, lane_count, timeline_bars
from distmis.scaling.timings import Run, TrialTiming
from tests.scaling.helpers import START, trial_row, write_run


def test_experiment_lanes_greedy_lowest_free(tmp_path: Path):
    rows = [
        trial_row("a", START + 1, START + 11),  # lane 0
        trial_row("b", START + 2, START + 6),  # lane 1
        trial_row("c", START + 6, START + 9),  # lane 1 again: b ended exactly at c's start
        trial_row("d", START + 7, START + 12),  # 0 and 1 busy: lane 2, beyond G = 2
        trial_row("e", START + 11, START + 13, status="failed"),  # lane 0: a just ended
    ]
    run = Run.from_dir(write_run(tmp_path, "experiment", 2, 14.0, rows))
    bars = timeline_bars(run)
    assert [(b.trial_id, b.lane, b.left, b.width, b.ok) for b in bars] == [
        ("a", 0, 1.0, 10.0, True),
        ("b", 1, 2.0, 4.0, True),
        ("c", 1, 6.0, 3.0, True),
        ("d", 2, 7.0, 5.0, True),
        ("e", 0, 11.0, 2.0, False),
    ]
    assert lane_count(run, bars) == 3  # the oversubscribed lane is drawn, not hidden
    assert busy_fraction(run, bars) == pytest.approx(24.0 / (2 * 14.0))


def test_data_parallel_trial_holds_every_rank(tmp_path: Path):
    # trials.csv is in trial-id order, here not the order the trials started in.
    rows = [
        trial_row("a", START + 12, START + 20, workers=2),
        trial_row("b", START + 5, START + 10, workers=2),
    ]
    run = Run.from_dir(write_run(tmp_path, "data", 2, 22.0, rows))
    assert timeline_bars(run) == [
        Bar("a", 0, 12.0, 8.0, "ok"),
        Bar("a", 1, 12.0, 8.0, "ok"),
        Bar("b", 0, 5.0, 5.0, "ok"),
        Bar("b", 1, 5.0, 5.0, "ok"),
    ]


def test_hybrid_trials_hold_blocks_of_k_and_stopped_ones_are_not_failed(tmp_path: Path):
    rows = [
        trial_row("a", START + 0.5, START + 9, workers=2),  # lanes 0-1
        trial_row("b", START + 1, START + 4, workers=2, status="stopped"),  # lanes 2-3
        trial_row("c", START + 4, START + 8, workers=2, status="failed"),  # 2-3 again
    ]
    run = Run.from_dir(write_run(tmp_path, "hybrid", 4, 10.0, rows, gpus_per_trial=2))
    bars = timeline_bars(run)
    assert [(b.trial_id, b.lane, b.status) for b in bars] == [
        ("a", 0, "ok"),
        ("a", 1, "ok"),
        ("b", 2, "stopped"),
        ("b", 3, "stopped"),
        ("c", 2, "failed"),
        ("c", 3, "failed"),
    ]
    assert [(b.ok, b.stopped) for b in bars[1:3]] == [(True, False), (False, True)]
    assert lane_count(run, bars) == 4


def test_idle_gpus_still_get_lanes(tmp_path: Path):
    rows = [trial_row("only", START, START + 5)]
    run = Run.from_dir(write_run(tmp_path, "experiment", 4, 5.0, rows))
    bars = timeline_bars(run)
    assert [b.lane for b in bars] == [0]
    assert lane_count(run, bars) == 4
    assert busy_fraction(run, bars) == pytest.approx(0.25)


def test_assign_lanes_blocks_of_workers():
    def timing(trial_id: str, start: float, end: float, workers: int) -> TrialTiming:
        return TrialTiming(trial_id, "ok", start, end, end - start, 1.0, workers, None, 1, None)

    lanes = assign_lanes(
        [timing("one", 0, 10, 1), timing("pair", 1, 5, 2), timing("late", 5, 6, 2)]
    )
    assert lanes == {"one": [0], "pair": [1, 2], "late": [1, 2]}
