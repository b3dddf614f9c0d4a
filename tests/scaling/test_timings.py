"""The timings contract: trials.csv + summary.json of a run, each fault naming file and rule."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from distmis.errors import ContractError
from distmis.run_folder import RunSummary
from distmis.scaling.timings import Run, TrialTiming, load_runs, made_by
from tests.scaling.helpers import (
    START,
    edit_summary,
    set_cell,
    trial_row,
    write_run,
    write_trials,
)


def test_summary_without_makespan_names_file_and_rule(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    edit_summary(run, makespan_seconds=None)
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    message = str(err.value)
    assert str(run / "summary.json") in message
    assert "makespan_seconds" in message and "train_data_parallel" in message


def test_zero_byte_trials_csv(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 10.0)
    (run / "trials.csv").write_bytes(b"")
    with pytest.raises(ContractError, match=r"trials\.csv is empty.*train_experiment_parallel"):
        load_runs(tmp_path)


def test_header_only_trials_csv(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 10.0)
    write_trials(run / "trials.csv", [])
    with pytest.raises(ContractError, match=r"trials\.csv has a header but no trial rows"):
        load_runs(tmp_path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("trial_id,status", r"no format column: written before distmis-trial-record/2"),
        ("format,trial_id,status", r"columns format,trial_id,status, expected format,trial_id,lr"),
    ],
)
def test_trials_csv_of_another_format_or_columns(tmp_path: Path, header: str, message: str):
    run = write_run(tmp_path, "data", 1, 10.0)
    (run / "trials.csv").write_text(f"{header}\nt1,ok\n")
    with pytest.raises(ContractError, match=message + ".*rerun train_data_parallel"):
        load_runs(tmp_path)


@pytest.mark.parametrize("absent", ["trials.csv", "summary.json"])
def test_folder_with_one_file_only(tmp_path: Path, absent: str):
    run = write_run(tmp_path, "data", 2, 10.0)
    (run / absent).unlink()
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    assert str(run / absent) in str(err.value)
    assert "train_data_parallel" in str(err.value)


def test_explicit_run_dir_without_files(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 1, 10.0)
    for name in ("trials.csv", "summary.json"):
        (run / name).unlink()
    with pytest.raises(ContractError, match=r"summary\.json is missing.*train_experiment"):
        load_runs(directories=[run])


def test_no_runs_at_all(tmp_path: Path):
    (tmp_path / "torch" / "data" / "1gpu").mkdir(parents=True)  # a run that wrote nothing
    with pytest.raises(ContractError, match="no {backend}/{mode}/{G}gpu/summary.json under"):
        load_runs(tmp_path)


def test_runs_in_the_layout_without_backend_folders_are_skipped_with_a_hint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    run = write_run(tmp_path / "scratch", "data", 1, 10.0)
    train = tmp_path / "train"
    train.mkdir()
    run.parent.rename(train / "data")  # train/data/1gpu, as before backends had folders
    with caplog.at_level(logging.WARNING), pytest.raises(ContractError, match="no {backend}"):
        load_runs(train)
    assert f"skipping {train / 'data' / '1gpu'}" in caplog.text
    assert f"move it to {train / 'tensorflow' / 'data' / '1gpu'}" in caplog.text


def test_bad_number_names_line(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    rows = [trial_row("t1", START, START + 1), trial_row("t2", START + 1, START + 2)]
    write_trials(run / "trials.csv", rows)
    set_cell(run / "trials.csv", 3, "end_time", "soon")
    with pytest.raises(
        ContractError, match=r"trials\.csv line 3: end_time must be float, got 'soon'"
    ):
        load_runs(tmp_path)


def test_trial_count_mismatch_means_mixed_runs(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0)
    rows = [trial_row("t1", START, START + 1), trial_row("t2", START + 1, START + 2)]
    write_trials(run / "trials.csv", rows)
    with pytest.raises(ContractError, match="counts 1 trials but .* has 2 rows"):
        load_runs(tmp_path)


def test_summary_in_wrong_folder(tmp_path: Path):
    run = write_run(tmp_path, "data", 2, 10.0)
    edit_summary(run, gpus=4, gpus_per_trial=4)  # a whole 4-GPU data run, misplaced
    with pytest.raises(ContractError, match="says gpus=4 but sits in 2gpu/"):
        load_runs(tmp_path)


@pytest.mark.parametrize(
    ("folder", "key", "message"),
    [
        ("torch", "tensorflow", "says backend=tensorflow but sits in torch/"),
        ("tensorflow", "torch", "says backend=torch but sits in tensorflow/"),
        # Every summary records its backend: none is a broken file, not TensorFlow's.
        ("torch", None, r"missing \['backend'\]"),
    ],
)
def test_summary_in_another_backends_folder(tmp_path: Path, folder, key, message):
    run = write_run(tmp_path, "experiment", 1, 10.0, backend=folder)
    edit_summary(run, backend=key)
    with pytest.raises(ContractError, match=message) as err:
        load_runs(tmp_path)
    assert "train_experiment_parallel" in str(err.value)


def test_resumed_must_be_boolean(tmp_path: Path):
    write_run(tmp_path, "data", 1, 10.0, resumed="yes")  # type: ignore[arg-type]
    with pytest.raises(ContractError, match="resumed must be bool, got 'yes'"):
        load_runs(tmp_path)


def test_failed_trial_without_dice_loads(tmp_path: Path):
    rows = [trial_row("t1", START, START + 1, status="failed")]
    run = write_run(tmp_path, "data", 1, 10.0, rows)
    (trial,) = TrialTiming.from_csv(run / "trials.csv")
    assert (trial.ok, trial.val_dice, trial.volumes_trained) == (False, None, 0.0)


# --- hybrid mode, early stopping and start-up; files of an older format ----------------------


def test_each_hybrid_k_is_its_own_series_labelled_hybrid_k(tmp_path: Path):
    write_run(tmp_path, "hybrid", 2, 50.0, gpus_per_trial=2)
    write_run(tmp_path, "hybrid", 4, 30.0, gpus_per_trial=2)
    write_run(tmp_path, "hybrid", 4, 40.0, gpus_per_trial=4)
    write_run(tmp_path, "data", 4, 20.0)
    runs = load_runs(tmp_path)
    assert [(r.directory.relative_to(tmp_path).as_posix(), r.series) for r in runs] == [
        ("tensorflow/data/4gpu", ("tensorflow", "data", "grid", "none")),
        ("tensorflow/hybrid2/2gpu", ("tensorflow", "hybrid2", "grid", "none")),
        ("tensorflow/hybrid2/4gpu", ("tensorflow", "hybrid2", "grid", "none")),
        ("tensorflow/hybrid4/4gpu", ("tensorflow", "hybrid4", "grid", "none")),
    ]
    assert [(r.summary.mode, r.summary.gpus_per_trial) for r in runs] == [
        ("data", 4),
        ("hybrid", 2),
        ("hybrid", 2),
        ("hybrid", 4),
    ]
    assert made_by("hybrid4") == made_by("hybrid") == "train_hybrid_parallel"


def test_hybrid_k_that_disagrees_with_its_folder(tmp_path: Path):
    run = write_run(tmp_path, "hybrid", 4, 30.0, gpus_per_trial=2, folder="hybrid4")
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    message = str(err.value)
    assert str(run / "summary.json") in message
    assert "says gpus_per_trial=2 but sits in hybrid4/ (expected hybrid2/)" in message
    assert "train_hybrid_parallel" in message


def test_hybrid_run_in_the_data_folder(tmp_path: Path):
    write_run(tmp_path, "hybrid", 4, 30.0, gpus_per_trial=2, folder="data")
    with pytest.raises(ContractError, match="says mode=hybrid2 but sits in data/"):
        load_runs(tmp_path)


@pytest.mark.parametrize(
    ("mode", "gpus", "gpus_per_trial", "message"),
    [
        ("hybrid", 4, None, r"missing \['gpus_per_trial'\].*train_hybrid_parallel"),
        ("hybrid", 4, 3, "hybrid gpus_per_trial=3 must be >= 2 and divide gpus=4"),
        ("hybrid", 4, 1, "hybrid gpus_per_trial=1 must be >= 2"),
        ("data", 4, 2, "gpus_per_trial=2 but a data-parallel run on 4 GPUs .* on 4"),
        ("experiment", 2, 2, "gpus_per_trial=2 but a experiment-parallel run .* on 1"),
        ("data", 2, True, "gpus_per_trial must be int, got True"),
    ],
)
def test_gpus_per_trial_must_fit_the_mode(tmp_path: Path, mode, gpus, gpus_per_trial, message):
    folder = {"hybrid": "hybrid2"}.get(mode, mode)
    run = write_run(tmp_path, mode, gpus, 10.0, gpus_per_trial=2, folder=folder)
    edit_summary(run, gpus_per_trial=gpus_per_trial)
    with pytest.raises(ContractError, match=message):
        load_runs(tmp_path)


def test_unknown_mode_and_scheduler_are_refused(tmp_path: Path):
    write_run(tmp_path / "a", "pipeline", 1, 10.0)
    with pytest.raises(ContractError, match="mode must be one of data, experiment, hybrid"):
        load_runs(tmp_path / "a")
    write_run(tmp_path / "b", "data", 1, 10.0, scheduler="hyperband")
    with pytest.raises(ContractError, match="scheduler must be one of none, asha, got 'hyper"):
        load_runs(tmp_path / "b")


def test_a_summary_and_trials_csv_of_an_older_distmis_are_refused_in_one_line(tmp_path: Path):
    """Files from before the contract's formats (no format key, no format column) are not
    guessed at: the message names the file and the rule that rewrites it."""
    run = write_run(tmp_path, "data", 4, 10.0)
    edit_summary(run, format=None)
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"{run / 'summary.json'}: no format: written before distmis-run-summary/2 (an older "
        "DistMIS); rerun train_data_parallel"
    )
    edit_summary(run, format="distmis-run-summary/1")  # a version before this one
    with pytest.raises(ContractError, match=r"format 'distmis-run-summary/1', expected '.*/2'"):
        load_runs(tmp_path)
    edit_summary(run, format=RunSummary.FORMAT)
    trials = run / "trials.csv"
    trials.write_text("\n".join(line.partition(",")[2] for line in trials.read_text().splitlines()))
    with pytest.raises(ContractError, match=r"trials\.csv: no format column.*train_data_parallel"):
        load_runs(tmp_path)


def test_new_columns_and_keys_are_read(tmp_path: Path):
    rows = [
        trial_row("a", START, START + 9, epochs_run=3, startup_seconds=2.5),
        trial_row("b", START, START + 2, status="stopped", val_dice=0.3),
    ]
    run = Run.from_dir(
        write_run(tmp_path, "experiment", 2, 10.0, rows, scheduler="asha", startup_seconds=4.0)
    )
    assert (run.summary.scheduler, run.summary.startup_seconds) == ("asha", 4.0)
    a, b = run.trials
    assert (a.ok, a.epochs_run, a.startup_seconds) == (True, 3, 2.5)
    # Stopped early by ASHA: not ok, not failed, with the Dice and work of its last epoch.
    assert (b.ok, b.stopped, b.failed, b.val_dice) == (False, True, False, 0.3)
    assert (b.epochs_run, b.startup_seconds) == (1, None)  # empty startup: not measured
    assert b.volumes_trained == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("status", "paused", "line 2: status must be one of ok, failed, stopped, got 'paused'"),
        ("epochs_run", "2.5", "line 2: epochs_run must be int, got '2.5'"),
        ("startup_seconds", "slow", "line 2: startup_seconds must be float, got 'slow'"),
    ],
)
def test_bad_trial_values_name_the_line(tmp_path: Path, column, value, message):
    run = write_run(tmp_path, "data", 1, 10.0)
    set_cell(run / "trials.csv", 2, column, value)
    with pytest.raises(ContractError, match=message + ".*rerun train_data_parallel"):
        load_runs(tmp_path)


def test_a_gpu_run_whose_workers_trained_on_the_cpu_is_refused_by_name(tmp_path: Path):
    run = write_run(tmp_path, "experiment", 2, 10.0, use_gpu=True)
    edit_summary(
        run,
        worker_devices=[
            {"host": "node1", "device_type": "gpu", "device_name": "NVIDIA H100 80GB HBM3"},
            {"host": "node2", "device_type": "cpu", "device_name": "x86_64"},
        ],
    )
    with pytest.raises(ContractError) as err:
        load_runs(tmp_path)
    message = str(err.value)
    assert str(run / "summary.json") in message
    assert "node2 (cpu: x86_64)" in message and "node1" not in message
    assert "train_experiment_parallel" in message


def test_a_gpu_run_that_does_not_say_what_its_workers_trained_on_is_refused(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 10.0, use_gpu=True)
    edit_summary(run, worker_devices=None)
    with pytest.raises(ContractError, match=r"worker_devices.*rerun train_data_parallel"):
        load_runs(tmp_path)


def test_cpu_worker_runs_and_gpu_runs_on_gpus_are_read(tmp_path: Path):
    write_run(tmp_path, "data", 1, 10.0, use_gpu=False)
    write_run(tmp_path, "experiment", 1, 10.0, use_gpu=True)
    assert sorted(run.summary.uses_gpus for run in load_runs(tmp_path)) == [False, True]
