"""Makespan predictions on a made-up calibration, every number worked out by hand.

The calibration: a step of 1 s on one worker alone on its node (1.25 s with two busy), a
validation step of 0.25 s, 8 training and 2 validation volumes at batch 2 (4 steps and 1
validation step on 1 worker, 2 and 1 on 2), 2 epochs, 2 configurations; all-reduce measured
once, 0.5 s at 2 workers, so the ring fit has parameter_bytes / bandwidth = 0.5 s and no
latency: allreduce(4) = 1.5 x 0.5 = 0.75 s. Every mode's parts: set-up 3, relaunch 1, first
start-up 4, start-up 2, first-epoch extra 0.5, epoch gap 0.1, finish 0.2, teardown 0.5.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import pytest

from distmis.modes import NAMES as MODES
from distmis.plan.calibration import Calibration
from distmis.plan.model import (
    GPU_INTER_NODE_BANDWIDTH,
    H200_STEP_SECONDS,
    Study,
    asha_epochs,
    predict,
    validate,
)
from distmis.plan.run import run_plan
from distmis.run_folder import RunSearch
from tests.plan.fake_runs import Timing, write_info, write_run

PARAMETERS = 1000  # 4000 bytes: the fitted bandwidth is 8000 bytes/s
PARTS = {
    "setup_seconds": 3.0,
    "relaunch_seconds": 1.0,
    "first_startup_seconds": 4.0,
    "startup_seconds": 2.0,
    "first_epoch_extra_seconds": 0.5,
    "epoch_gap_seconds": 0.1,
    "finish_seconds": 0.2,
    "teardown_seconds": 0.5,
}


@pytest.fixture
def calibration() -> Calibration:
    return Calibration(
        backend="torch",
        hardware="CPU:x86_64",
        step_seconds={1: 1.0, 2: 1.25},
        allreduce_seconds={2: 0.5},
        val_step_seconds=0.25,
        parts={mode: {1: dict(PARTS)} for mode in MODES},
        train_volumes=8,
        val_volumes=2,
        batch_size_per_replica=2,
        epochs=2,
        grid_size=2,
        parameter_count=PARAMETERS,
        sources={"step_seconds[1]": "measured: by hand"},
    )


def test_experiment_at_one_gpu_runs_the_trials_back_to_back(calibration):
    # epoch = 4 x 1.0 + 1 x 0.25 + 0.1 = 4.35; trial 0 = 4 + 0.5 - 0.1 + 0.2 + 2 x 4.35 = 13.3,
    # trial 1 = 11.3; 3 + 13.3 + 1 (relaunch) + 11.3 + 0.5 = 29.1.
    prediction = predict(calibration, "experiment", 1)
    assert prediction.trial_seconds == pytest.approx((13.3, 11.3))
    assert prediction.makespan_seconds == pytest.approx(29.1)
    assert prediction.speedup == pytest.approx(1.0)


def test_experiment_trials_side_by_side_contend_for_their_node(calibration):
    # Two busy: step 1.25 and validation slowed alike (0.3125): epoch = 5 + 0.3125 + 0.1.
    epoch = 4 * 1.25 + 0.3125 + 0.1
    prediction = predict(calibration, "experiment", 2)
    assert prediction.trial_seconds == pytest.approx((4.6 + 2 * epoch, 2.6 + 2 * epoch))
    assert prediction.makespan_seconds == pytest.approx(3 + 4.6 + 2 * epoch + 0.5)
    assert prediction.speedup == pytest.approx(29.1 / (8.1 + 2 * epoch))
    assert prediction.assumptions["busy_workers_per_node"]["value"] == 2


def test_data_mode_splits_the_steps_and_pays_the_all_reduce(calibration):
    # 2 steps of 1.25 + 0.5, 1 validation step of 0.3125: epoch = 3.5 + 0.3125 + 0.1 = 3.9125;
    # trials 4.6 + 7.825 and 2.6 + 7.825, one after another with a relaunch.
    prediction = predict(calibration, "data", 2)
    assert prediction.trial_seconds == pytest.approx((12.425, 10.425))
    assert prediction.makespan_seconds == pytest.approx(3 + 12.425 + 1 + 10.425 + 0.5)
    assert prediction.assumptions["allreduce_seconds[2]"]["value"] == pytest.approx(0.5)


def test_hybrid_runs_g_over_k_trials_at_once(calibration):
    # k = 2 on G = 4: two slots of 2 workers, 4 busy (step at 2, the largest measured).
    prediction = predict(calibration, "hybrid", 4, k=2)
    assert prediction.concurrent_trials == 2
    assert prediction.makespan_seconds == pytest.approx(3 + 12.425 + 0.5)
    assert prediction.baseline_makespan_seconds == pytest.approx(29.1)  # experiment at G = 1


def test_a_ring_across_nodes_runs_at_the_inter_node_bandwidth(calibration):
    # 4 workers over nodes of 2: allreduce(4) = 1.5 x 4000 / 2000 = 3 s instead of 0.75 s.
    within = predict(calibration, "data", 4, gpus_per_node=4)
    across = predict(calibration, "data", 4, gpus_per_node=2, inter_node_bandwidth=2000.0)
    assert within.assumptions["allreduce_seconds[4]"]["value"] == pytest.approx(0.75)
    assert across.assumptions["allreduce_seconds[4]"]["value"] == pytest.approx(3.0)
    assert across.assumptions["inter_node_bandwidth"]["source"] == "flag"


def test_asha_keeps_the_top_fraction_at_each_rung():
    # 4 trials, 4 epochs, rungs at 1 and 2: 2 go past epoch 1, 1 past epoch 2.
    assert asha_epochs(4, 4, 1, 2) == [4, 2, 1, 1]
    # 9 trials, rf 3, 9 epochs: rungs at 1 and 3; 3 past 1, 1 past 3.
    assert asha_epochs(9, 9, 1, 3) == [9, 3, 3, 1, 1, 1, 1, 1, 1]
    assert asha_epochs(3, 2, 2, 2) == [2, 2, 2]  # grace reaches max_t: no rung
    with pytest.raises(ValueError, match="reduction_factor"):
        asha_epochs(4, 4, 1, 1)


def test_asha_stopped_trials_free_their_slot_early(calibration):
    study = replace(Study.measured(calibration), scheduler="asha")
    # 2 trials, grace 1, rf 2: the second stops after epoch 1: 2.6 + 4.35 = 6.95.
    prediction = predict(calibration, "experiment", 1, study=study)
    assert prediction.trial_seconds == pytest.approx((13.3, 6.95))
    assert prediction.makespan_seconds == pytest.approx(3 + 13.3 + 1 + 6.95 + 0.5)


def test_a_projection_takes_the_gpu_step_and_the_gpu_link(calibration):
    study = Study(
        label="projected",
        grid_size=4,
        epochs=2,
        train_volumes=16,
        val_volumes=4,
        batch_size_per_replica=2,
        step_seconds=H200_STEP_SECONDS,
    )
    prediction = predict(calibration, "data", 8, study=study, gpus_per_node=4)
    assumed = prediction.assumptions
    assert assumed["step_seconds"] == {
        "value": H200_STEP_SECONDS,
        "source": "flag",
        "detail": "the target device's step replaces it",
    }
    # Validation scales with the step: 0.25 x 0.0717 / 1.0.
    assert assumed["val_step_seconds"]["value"] == pytest.approx(0.25 * H200_STEP_SECONDS)
    assert assumed["inter_node_bandwidth"]["value"] == GPU_INTER_NODE_BANDWIDTH
    assert assumed["grid_size"] == {"value": 4, "source": "flag", "detail": ""}
    assert len(prediction.trial_seconds) == 4


def test_validate_gives_the_relative_error(calibration):
    prediction = predict(calibration, "experiment", 1)
    assert validate(prediction, 29.1 / 1.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="> 0"):
        validate(prediction, 0.0)


@pytest.mark.parametrize(
    "mode, gpus, k, epochs",
    [
        ("model", 2, None, None),
        ("hybrid", 4, 3, None),
        ("hybrid", 2, None, None),
        ("data", 2, 1, None),
        ("experiment", 0, None, None),
        ("experiment", 1, None, [1]),
        ("experiment", 1, None, [1, 3]),
    ],
)
def test_impossible_requests_are_refused(calibration, mode, gpus, k, epochs):
    with pytest.raises(ValueError):
        predict(calibration, mode, gpus, k, epochs_per_trial=epochs)


@pytest.mark.parametrize(
    "mode, gpus, workers",
    [("experiment", 1, None), ("experiment", 2, None), ("data", 2, None), ("hybrid", 4, 2)],
)
def test_runs_timed_as_the_model_assumes_are_predicted_exactly(tmp_path, mode, gpus, workers):
    """Fake runs whose clocks follow the model: calibrated on all of them, each run's
    makespan comes back exactly; left out of its own calibration too, where the other runs
    measured what it needs."""
    data = write_info(tmp_path / "tfrecords")
    # Two busy on a node: training and validation steps 25 % slower; data and hybrid steps
    # add 0.5 s of all-reduce to that.
    # Two trials started side by side enter their functions 1 s apart (the first wave's
    # spread; in experiment mode it is hidden behind the first trial's longer start-up).
    alone, shared = Timing(), Timing(step=1.25, val_step=0.3125, spread=1.0)
    synced = Timing(step=1.75, val_step=0.3125)
    results = tmp_path / "results" / "torch"
    write_run(results, "experiment", 1, timing=alone, tfrecord_dir=data)
    write_run(results, "experiment", 2, timing=shared, tfrecord_dir=data)
    write_run(results, "data", 2, timing=synced, tfrecord_dir=data)
    write_run(results, "data", 1, timing=alone, tfrecord_dir=data)
    # A hybrid trial is a Tune trial starting a Train group (parts composed of the two):
    # set-up 3 + 3, relaunch 1 + 3, every trial starting up as a group's first (4 s).
    hybrid = replace(synced, setup=6.0, relaunch=4.0, startup=4.0, spread=1.0)
    write_run(results, "hybrid", 4, workers=2, timing=hybrid, tfrecord_dir=data)
    plan = run_plan(tmp_path / "results", tmp_path / "plan", gpus=[1, 2, 4], ks=[2])
    rows = {
        (r["mode"], int(r["gpus"])): r
        for r in csv.DictReader(plan.open())
        if r["measured_makespan_seconds"]
    }
    row = rows[(mode, gpus)]
    assert float(row["relative_error"]) == pytest.approx(0.0, abs=1e-9)
    if (mode, gpus) == ("experiment", 2):
        # Left out, no other run shows a one-worker step with two busy: the contention is
        # missed. Measured 3 + 4.6 + 2 x 5.4125 + 0.5 = 18.925 s, predicted with the lone
        # step 3 + 4.6 + 2 x 4.35 + 0.5 = 16.8 s.
        assert float(row["loo_relative_error"]) == pytest.approx(16.8 / 18.925 - 1)
    else:
        assert float(row["loo_relative_error"]) == pytest.approx(0.0, abs=1e-9)


def test_data_mode_with_asha_trains_the_epochs_experiment_mode_would(calibration):
    # Data mode stops configurations by ASHA's own rule, one after another (the first never):
    # the same epochs per configuration as experiment mode's prediction, one at a time.
    study = replace(Study.measured(calibration), scheduler="asha")
    plain = predict(calibration, "data", 2)
    data = predict(calibration, "data", 2, study=study)
    experiment = predict(calibration, "experiment", 2, study=study)
    assert data.assumptions["epochs_per_trial"]["value"] == [2, 1]
    assert experiment.assumptions["epochs_per_trial"]["value"] == [2, 1]
    assert data.trial_seconds[1] < data.trial_seconds[0] == plain.trial_seconds[0]
    assert data.makespan_seconds < plain.makespan_seconds


def test_a_sampled_search_is_planned_as_its_samples(tmp_path):
    """TPE runs with ASHA: the planner sizes the study by the runs' trial_count (the samples
    proposed, not a grid's product), and runs timed as the model assumes, each configuration
    the epochs ASHA let it train, come back exactly."""
    data = write_info(tmp_path / "tfrecords")
    results = tmp_path / "results" / "torch"
    tpe = RunSearch("tpe", 4, 0)
    # ASHA (grace 1, reduction factor 2) over 2 epochs: 2 of the 4 go past epoch 1.
    rungs = [2, 2, 1, 1]
    shared = Timing(step=1.25, val_step=0.3125)
    for gpus, timing in ((1, Timing()), (2, shared)):
        write_run(results, "experiment", gpus, timing=timing, grid=4, search=tpe,
                  epochs_per_trial=rungs, tfrecord_dir=data)  # fmt: skip
    plan = run_plan(tmp_path / "results", tmp_path / "plan", gpus=[1, 2], ks=[2])
    measured = [r for r in csv.DictReader(plan.open()) if r["measured_makespan_seconds"]]
    assert [(r["mode"], r["gpus"]) for r in measured] == [("experiment", "1"), ("experiment", "2")]
    assert all(float(r["relative_error"]) == pytest.approx(0.0, abs=1e-9) for r in measured)
    calibration = json.loads((tmp_path / "plan" / "calibration_torch.json").read_text())
    assert calibration["grid_size"] == 4
