"""Data mode's outcomes once its one Ray Train run is over (no Ray here: the files the workers
leave are written by hand)."""

from __future__ import annotations

from pathlib import Path

from distmis.run_folder import FAILED_FILE, FailedAttempt
from distmis.train.data_parallel import outcomes_of_run
from distmis.train.grid import run_grid
from distmis.train.trials import trial_dir
from tests.train.test_grid import make_settings, write_result


def test_only_a_configuration_that_left_no_file_takes_the_runs_error(tmp_path: Path):
    settings = make_settings(tmp_path)
    finished, failed, unreached = settings.grid()
    write_result(settings, finished, 1000.0, val_dice=0.5)
    FailedAttempt(start_time=50.0, end_time=60.0, error="DeviceError: rank 1 lost").write(
        trial_dir(settings, failed.trial_id) / FAILED_FILE
    )

    def run_that_failed(pending):
        return outcomes_of_run(settings, pending, "RayTaskError: group died\n...", 10.0, 90.0)

    records = run_grid(settings, settings.grid(), lambda r: None, run_that_failed)
    assert [(r.status, r.error) for r in records] == [
        ("ok", ""),
        ("failed", "DeviceError: rank 1 lost"),  # the worker's own reason
        ("failed", "RayTaskError: group died"),
    ]
    assert (records[2].start_time, records[2].end_time) == (10.0, 90.0)


def test_a_run_that_ended_well_before_a_configuration_says_so(tmp_path: Path):
    settings = make_settings(tmp_path)
    (hparams, *_) = settings.grid()
    (outcome,) = outcomes_of_run(settings, [hparams], None, 10.0, 90.0)
    assert outcome.error == "the run ended before this configuration"
