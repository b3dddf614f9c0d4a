"""Calibration.from_runs: the runs' own calibrations merged, and calibration_<backend>.json.

The fake runs (:mod:`tests.plan.fake_runs`: 8 training and 2 validation volumes, batch 2,
2 epochs, 2 configurations) step in 1 s on one worker alone on its node and 1.25 s with two
busy (experiment G = 2), so the node's contention is 0.25 s a step; a data step over 2
workers takes 1.75 s: 1.25 s at two busy plus 0.5 s of all-reduce.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from distmis.errors import ContractError
from distmis.plan.calibration import (
    CALIBRATION_FORMAT,
    DEFAULT_PARTS,
    UNET_PARAMETERS,
    Calibration,
)
from distmis.plan.measure import measure_run
from tests.plan.fake_runs import Timing, write_info, write_run

ALONE = Timing()
SHARED = replace(ALONE, step=1.25, setup=4.0)
DATA = replace(ALONE, step=1.75, first_startup=8.0, startup=0.5, relaunch=0.25, setup=6.0)


@pytest.fixture
def runs(tmp_path):
    data = write_info(tmp_path / "tfrecords")
    return [
        write_run(tmp_path, "experiment", 1, timing=ALONE, tfrecord_dir=data),
        write_run(tmp_path, "experiment", 2, timing=SHARED, tfrecord_dir=data),
        write_run(tmp_path, "data", 2, timing=DATA, tfrecord_dir=data),
    ]


def test_from_runs_derives_the_numbers_worked_out_by_hand(runs):
    calibration = Calibration.from_runs(runs)
    assert calibration.step_seconds == pytest.approx({1: 1.0, 2: 1.25})
    assert calibration.allreduce_seconds == pytest.approx({2: 0.5})
    assert calibration.val_step_seconds == pytest.approx(0.25)  # G = 1's, alone on the node
    assert (calibration.train_volumes, calibration.val_volumes) == (8, 2)
    assert (calibration.batch_size_per_replica, calibration.epochs, calibration.grid_size) == (
        2,
        2,
        2,
    )
    assert (calibration.backend, calibration.hardware) == ("torch", "CPU:x86_64")
    assert calibration.parameter_count == UNET_PARAMETERS
    # Parts per mode and busy count: experiment G = 1 alone, G = 2 with two busy.
    assert calibration.parts["experiment"][1]["setup_seconds"] == 3.0
    assert calibration.parts["experiment"][2]["setup_seconds"] == 4.0
    assert "relaunch_seconds" not in calibration.parts["experiment"][2]  # two slots, two trials
    assert calibration.part("experiment", 2, "relaunch_seconds") == (
        1.0,
        "measured: experiment runs at 1 busy per node (at 1 busy: experiment G=1; at 2 busy: "
        "experiment G=2)",
    )
    data = calibration.parts["data"][2]
    assert data["setup_seconds"] == 6.0 and data["startup_seconds"] == 0.5
    assert data["first_startup_seconds"] == 8.0 and data["relaunch_seconds"] == 0.25
    assert calibration.sources["step_seconds[2]"].startswith("measured: median of 1 runs")
    assert calibration.sources["train_volumes"].startswith("config: info.json")


def test_hybrid_not_run_is_composed_of_experiment_and_data(runs):
    calibration = Calibration.from_runs(runs)
    # A hybrid trial: a Tune trial (experiment's relaunch, 1 s) starting a Train group (data's
    # set-up, 6 s), then a fresh group's first configuration (data's first start-up, 8 s).
    assert calibration.part("hybrid", 2, "relaunch_seconds")[0] == pytest.approx(7.0)
    assert calibration.part("hybrid", 2, "setup_seconds")[0] == pytest.approx(10.0)
    value, source = calibration.part("hybrid", 2, "startup_seconds")
    assert value == 8.0 and source.startswith("measured: composed from the other modes")


def test_parts_no_run_measured_fall_back_to_the_defaults(tmp_path):
    data = write_info(tmp_path / "tfrecords")
    # Two slots for two trials: nothing relaunched, in any mode.
    calibration = Calibration.from_runs([write_run(tmp_path, "experiment", 2, tfrecord_dir=data)])
    assert calibration.part("data", 2, "relaunch_seconds") == (
        DEFAULT_PARTS["relaunch_seconds"],
        "default: no run measured it",
    )
    # Data's teardown: experiment's stands in (no composition gives it).
    assert calibration.part("data", 2, "teardown_seconds")[1].startswith(
        "measured: experiment stands in"
    )


def test_step_at_takes_the_largest_measured_busy_count_below(runs):
    calibration = Calibration.from_runs(runs)
    assert calibration.step_at(1) == (1.0, 1)
    assert calibration.step_at(4) == (pytest.approx(1.25), 2)


def test_a_calibration_needs_a_one_worker_run(tmp_path):
    data = write_info(tmp_path / "tfrecords")
    run = write_run(tmp_path, "data", 2, tfrecord_dir=data)
    with pytest.raises(ValueError, match="one worker per trial"):
        Calibration.from_runs([run])


def test_given_volumes_win_over_the_runs(tmp_path):
    run = write_run(tmp_path, "experiment", 1)
    calibration = Calibration.from_runs([run], train_volumes=80, val_volumes=20)
    assert (calibration.train_volumes, calibration.val_volumes) == (80, 20)
    assert calibration.sources["val_volumes"] == "config: given"


def test_split_sizes_recorded_by_the_run_outlive_its_data(tmp_path):
    # The sizes are in the run's summary.json: its data may be gone.
    workdir = tmp_path / "work"
    write_info(workdir / "results" / "tfrecords")
    run = write_run(
        workdir / "results" / "train" / "torch", "experiment", 1, tfrecord_dir="results/tfrecords"
    )
    shutil.rmtree(workdir / "results" / "tfrecords")
    calibration = Calibration.from_runs([run])
    assert (calibration.train_volumes, calibration.val_volumes) == (8, 2)


def test_a_relative_tfrecord_dir_never_resolves_against_the_current_directory(
    tmp_path, monkeypatch
):
    """A checkout whose own results/tfrecords holds another data set (the demo's, after
    `make demo`) must not lend its sizes to a run elsewhere: the sizes are the run's own."""
    elsewhere = tmp_path / "checkout"
    write_info(elsewhere / "results" / "tfrecords")
    info = elsewhere / "results" / "tfrecords" / "info.json"
    payload = json.loads(info.read_text())
    payload["splits"]["train"]["shards"][0]["records"] = 17
    info.write_text(json.dumps(payload))
    monkeypatch.chdir(elsewhere)
    workdir = tmp_path / "work"
    write_info(workdir / "results" / "tfrecords")
    run = write_run(
        workdir / "results" / "train" / "torch", "experiment", 1, tfrecord_dir="results/tfrecords"
    )
    assert (measure_run(run).train_volumes, measure_run(run).val_volumes) == (8, 2)
    # Gone from the run's place: still the run's 8, never the checkout's 17.
    shutil.rmtree(workdir / "results" / "tfrecords")
    assert measure_run(run).train_volumes == 8


def test_runs_of_different_shapes_are_refused(tmp_path):
    one = write_run(tmp_path / "a", "experiment", 1, grid=1)
    two = write_run(tmp_path / "b", "experiment", 1, grid=2)
    with pytest.raises(ValueError, match="grid_size"):
        Calibration.from_runs([one, two], train_volumes=8, val_volumes=2)


def test_a_missing_result_names_the_file_and_its_rule(tmp_path):
    run = write_run(tmp_path, "experiment", 1)
    (run / "trials" / "t0" / "result.json").unlink()
    with pytest.raises(ContractError, match=r"result.json is missing .*train_experiment_parallel"):
        Calibration.from_runs([run], train_volumes=8, val_volumes=2)


def test_json_round_trip_keeps_every_number(runs, tmp_path):
    calibration = Calibration.from_runs(runs)
    path = tmp_path / "calibration.json"
    calibration.write(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == CALIBRATION_FORMAT
    assert payload["allreduce_seconds"] == {"2": pytest.approx(0.5)}
    assert Calibration.read(path) == calibration


def test_a_calibration_file_with_a_missing_key_is_refused(runs, tmp_path):
    payload = Calibration.from_runs(runs).to_json()
    del payload["step_seconds"]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ContractError, match="missing \\['step_seconds'\\]"):
        Calibration.read(path)
