"""Data mode's outcomes once its one Ray Train run is over (no Ray here: the files the workers
leave are written by hand)."""

from __future__ import annotations

from pathlib import Path

from distmis.config import validate_config
from distmis.run_folder import FAILED_FILE, EpochRecord, FailedAttempt, append_epoch
from distmis.train.data_parallel import outcomes_of_run, stopped_by_asha
from distmis.train.grid import run_grid
from distmis.train.settings import TrainSettings
from distmis.train.trials import trial_dir
from tests.train.test_grid import GRID, make_settings, write_result


def test_only_a_configuration_that_left_no_file_takes_the_runs_error(tmp_path: Path):
    settings = make_settings(tmp_path)
    finished, failed, unreached = settings.configurations()
    write_result(settings, finished, 1000.0, val_dice=0.5)
    FailedAttempt(start_time=50.0, end_time=60.0, error="DeviceError: rank 1 lost").write(
        trial_dir(settings, failed.trial_id) / FAILED_FILE
    )

    def run_that_failed(pending):
        return outcomes_of_run(settings, pending, "RayTaskError: group died\n...", 10.0, 90.0)

    records = run_grid(settings, settings.configurations(), lambda r: None, run_that_failed)
    assert [(r.status, r.error) for r in records] == [
        ("ok", ""),
        ("failed", "DeviceError: rank 1 lost"),  # the worker's own reason
        ("failed", "RayTaskError: group died"),
    ]
    assert (records[2].start_time, records[2].end_time) == (10.0, 90.0)


def test_a_run_that_ended_well_before_a_configuration_says_so(tmp_path: Path):
    settings = make_settings(tmp_path)
    (hparams, *_) = settings.configurations()
    (outcome,) = outcomes_of_run(settings, [hparams], None, 10.0, 90.0)
    assert outcome.error == "the run ended before this configuration"


def test_a_configuration_asha_stopped_is_recorded_stopped_with_its_last_epoch(tmp_path: Path):
    config = validate_config(
        {
            "train": {
                "epochs": 4,
                "search_space": GRID,
                "scheduler": "asha",
                "asha": {"grace_period": 1, "reduction_factor": 2},
            }
        }
    )
    settings = TrainSettings.from_config(
        config["train"], mode="data", gpus=2, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )
    good, hopeless, unreached = settings.configurations()
    write_result(settings, good, 100.0, val_dice=0.5)
    for epoch in range(1, 5):
        append(settings, good, epoch, 100.0 + epoch, 0.1 * epoch)
    # hopeless trails good's 0.1 at rung 1 (after a failed first attempt: it is the retry's)
    append(settings, hopeless, 1, 200.0, 0.05)
    FailedAttempt(start_time=190.0, end_time=195.0, error="DeviceError: lost").write(
        trial_dir(settings, hopeless.trial_id) / FAILED_FILE
    )
    stopped = stopped_by_asha(settings, settings.configurations())
    assert stopped == {hopeless.trial_id}

    def run_that_stopped_one(pending):
        return outcomes_of_run(settings, pending, None, 10.0, 90.0, stopped=stopped)

    records = run_grid(settings, settings.configurations(), lambda r: None, run_that_stopped_one)
    assert [(r.status, r.epochs_run, r.error) for r in records] == [
        ("ok", 4, ""),
        ("stopped", 1, ""),
        ("failed", 0, "the run ended before this configuration"),
    ]
    assert records[1].val_dice == 0.05
    no_asha = make_settings(tmp_path)
    assert stopped_by_asha(no_asha, no_asha.configurations()) == frozenset()


def append(settings, hparams, epoch: int, time: float, val_dice: float) -> None:
    record = EpochRecord(
        epoch=epoch,
        time=time,
        started=time - 1.0,
        train_seconds=0.8,
        val_seconds=0.2,
        metrics={"loss": 0.5, "dice": 0.6, "val_loss": 0.4, "val_dice": val_dice},
    )
    folder = trial_dir(settings, hparams.trial_id)
    folder.mkdir(parents=True, exist_ok=True)
    append_epoch(folder, record)
