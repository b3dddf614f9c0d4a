"""A run's own calibration: its makespan's parts measured from its files."""

from __future__ import annotations

import json

import pytest

from distmis.errors import ContractError
from distmis.plan.measure import measure_run, slot_gaps
from distmis.plan.runs import MeasuredTrial
from tests.plan.fake_runs import VAL_VOLUMES, Timing, write_run


def test_every_part_of_an_experiment_run_is_read_back(tmp_path):
    timing = Timing(step=1.5, val_step=0.5, first_startup=6.0, startup=2.5, relaunch=1.25)
    # G = 1, three configurations: one slot, so two relaunches are measured.
    measured = measure_run(write_run(tmp_path, "experiment", 1, timing=timing, grid=3))
    assert (measured.mode, measured.gpus, measured.workers_per_trial, measured.slots) == (
        "experiment",
        1,
        1,
        1,
    )
    assert measured.steps_per_epoch == 4 and measured.timed_trials == 3
    assert measured.setup_seconds == pytest.approx(3.0)
    assert measured.relaunch_seconds == pytest.approx(1.25)
    assert measured.first_startup_seconds == pytest.approx(6.0)
    assert measured.startup_seconds == pytest.approx(2.5)
    # The first epoch's extra 0.5 s is not a step: steps come from the later epochs.
    assert measured.step_seconds == pytest.approx(1.5)
    assert measured.val_seconds == pytest.approx(0.5)  # one validation step of 2 volumes
    assert measured.first_epoch_extra_seconds == pytest.approx(0.5)
    assert measured.epoch_gap_seconds == pytest.approx(0.1)
    assert measured.finish_seconds == pytest.approx(0.2)
    assert measured.teardown_seconds == pytest.approx(0.5)


def test_trials_that_never_shared_a_slot_measure_no_relaunch(tmp_path):
    measured = measure_run(write_run(tmp_path, "experiment", 2, timing=Timing(spread=1.5)))
    assert measured.slots == 2 and measured.busy_workers_per_node == 2
    assert measured.relaunch_seconds is None
    # ... but how far apart the wave's two trials started.
    assert measured.first_wave_spread_seconds == pytest.approx(1.5)


def test_a_run_with_one_slot_measures_no_first_wave_spread(tmp_path):
    assert (
        measure_run(write_run(tmp_path, "experiment", 1, grid=3)).first_wave_spread_seconds is None
    )


def test_busy_workers_per_node_spread_over_the_nodes(tmp_path):
    measured = measure_run(write_run(tmp_path, "data", 4, node_count=2))
    assert measured.busy_workers_per_node == 2 and measured.steps_per_epoch == 1


def test_slot_gaps_follow_the_slot_that_freed_first():
    def trial(start: float, end: float) -> MeasuredTrial:
        return MeasuredTrial("t", "ok", start, 1, None, None, None, None, end_time=end)

    # Two slots: trials end at 5 and 2; the third starts at 3 (1 s after the slot that freed
    # at 2), the fourth at 7.5 (2.5 s after the one that freed at 5).
    trials = [trial(0, 5), trial(0, 2), trial(3, 9), trial(7.5, 8)]
    assert slot_gaps(trials, 2) == [1.0, 2.5]


def test_the_split_sizes_are_the_ones_the_run_recorded(tmp_path):
    run = write_run(tmp_path, "hybrid", 4, workers=2, train_volumes=13)
    measured = measure_run(run)
    assert (measured.train_volumes, measured.val_volumes) == (13, VAL_VOLUMES)
    assert measured.path == str(run)
    # The run folder holds no calibration of its own: the planner measures it each time.
    assert not (run / "calibration.json").exists()


def test_a_malformed_epochs_line_names_the_file_line_and_rule(tmp_path):
    run = write_run(tmp_path, "experiment", 1)
    epochs = run / "trials" / "t1" / "epochs.jsonl"
    bad = {"format": "distmis-trial-epoch/1", "epoch": 3, "train_seconds": 1}
    epochs.write_text(epochs.read_text() + json.dumps(bad) + "\n")
    with pytest.raises(
        ContractError, match=r"t1/epochs.jsonl line 3: missing .*rerun train_experiment_parallel"
    ):
        measure_run(run)
