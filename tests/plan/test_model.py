"""Makespan predictions on a made-up calibration, every number worked out by hand.

The calibration: a step of 2 s and a validation pass of 6 s on one worker, 16 training
volumes at batch 2 (8 steps on 1 worker, 4 on 2, 2 on 4, 1 on 8), 2 epochs, 4
configurations; all-reduce measured once, 0.5 s at 2 workers, so the ring fit has
parameter_bytes / bandwidth = 0.5 s and no latency: allreduce(4) = 1.5 × 0.5 = 0.75 s,
allreduce(8) = 1.75 × 0.5 = 0.875 s.
"""

from __future__ import annotations

import pytest

from distmis.plan.calibration import Calibration
from distmis.plan.model import H200_STEP_SECONDS, predict, validate

PARAMETERS = 1000  # 4000 bytes: the fitted bandwidth is 8000 bytes/s


@pytest.fixture
def calibration() -> Calibration:
    return Calibration(
        backend="torch",
        hardware="CPU:x86_64",
        step_seconds=2.0,
        val_seconds=6.0,
        trial_startup_seconds=10.0,
        group_startup_seconds=20.0,
        config_startup_seconds=1.0,
        allreduce_seconds={2: 0.5},
        train_volumes=16,
        batch_size_per_replica=2,
        epochs=2,
        grid_size=4,
        parameter_count=PARAMETERS,
        sources={"step_seconds": "measured: by hand"},
    )


def test_experiment_trials_pay_their_start_up_and_run_in_waves(calibration):
    # A trial: 10 + 2 × (8 × 2 + 6) = 54 s; 4 trials on G slots.
    one, two, four = (predict(calibration, "experiment", g) for g in (1, 2, 4))
    assert one.trial_seconds == (54.0,) * 4
    assert (one.makespan_seconds, two.makespan_seconds, four.makespan_seconds) == (
        216.0,
        108.0,
        54.0,
    )
    assert four.speedup == pytest.approx(4.0)
    assert four.efficiency == pytest.approx(1.0)
    assert four.gpu_hours == pytest.approx(54.0 * 4 / 3600)


def test_data_mode_pays_the_group_start_up_once(calibration):
    # G=1: 20 + 44 + 3 × (1 + 44) = 199. G=2: an epoch 4 × (2 + 0.5) + 6/2 = 13 s, so
    # 20 + 26 + 3 × 27 = 127. G=4: an epoch 2 × (2 + 0.75) + 1.5 = 7 s: 20 + 14 + 3 × 15 = 79.
    predictions = {g: predict(calibration, "data", g) for g in (1, 2, 4)}
    assert predictions[1].makespan_seconds == pytest.approx(199.0)
    assert predictions[2].makespan_seconds == pytest.approx(127.0)
    assert predictions[4].trial_seconds == pytest.approx((34.0, 15.0, 15.0, 15.0))
    assert predictions[4].makespan_seconds == pytest.approx(79.0)
    assert predictions[4].speedup == pytest.approx(199.0 / 79.0)
    assert predictions[4].concurrent_trials == 1


def test_hybrid_trials_start_a_worker_group_each(calibration):
    # k=2 on G=4: a trial 20 + 2 × 13 = 46 s, 2 at once: 92 s, against experiment G=1's 216.
    prediction = predict(calibration, "hybrid", 4, k=2)
    assert prediction.trial_seconds == pytest.approx((46.0,) * 4)
    assert prediction.makespan_seconds == pytest.approx(92.0)
    assert prediction.speedup == pytest.approx(216.0 / 92.0)
    assert prediction.assumptions["speedup_baseline"]["value"] == "experiment at G=1"


def test_a_ring_across_nodes_runs_at_the_inter_node_bandwidth(calibration):
    # G=8 over nodes of 4: at 4000 bytes/s allreduce(8) = 1.75 × 4000 / 4000 = 1.75 s; an
    # epoch 1 × (2 + 1.75) + 6/8 = 4.5 s: 20 + 9 + 3 × 10 = 59. Without the flag the fitted
    # 8000 bytes/s holds: epoch 2.875 + 0.75 = 3.625 s, 20 + 7.25 + 3 × 8.25 = 52.
    across = predict(calibration, "data", 8, gpus_per_node=4, inter_node_bandwidth=4000.0)
    assert across.makespan_seconds == pytest.approx(59.0)
    assert across.assumptions["inter_node_bandwidth"]["source"] == "flag"
    same = predict(calibration, "data", 8, gpus_per_node=4)
    assert same.makespan_seconds == pytest.approx(52.0)
    assert same.assumptions["allreduce_bandwidth"]["value"] == pytest.approx(8000.0)
    within = predict(calibration, "data", 8, gpus_per_node=8, inter_node_bandwidth=4000.0)
    assert within.makespan_seconds == pytest.approx(52.0)


def test_asha_shortened_trials_change_the_schedule(calibration):
    # Epochs [2, 1, 1, 1]: 54, 32, 32, 32 s on 2 slots. Slot 1 runs trials 1 (0-32) and
    # 2 (32-64); slot 0 frees at 54 and takes trial 3 (54-86).
    prediction = predict(calibration, "experiment", 2, epochs_per_trial=[2, 1, 1, 1])
    assert prediction.trial_seconds == (54.0, 32.0, 32.0, 32.0)
    assert prediction.schedule.start_seconds == (0.0, 0.0, 32.0, 54.0)
    assert prediction.makespan_seconds == 86.0
    # The baseline trains the same epochs: 54 + 3 × 32 = 150 s on one GPU.
    assert prediction.baseline_makespan_seconds == 150.0
    assert prediction.assumptions["epochs_per_trial"] == {
        "value": [2, 1, 1, 1],
        "source": "flag",
        "detail": "",
    }


def test_a_gpu_step_replaces_the_measured_one_and_scales_validation(calibration):
    # Step 0.5 s, validation 6 × 0.5 / 2 = 1.5 s: a trial 10 + 2 × (8 × 0.5 + 1.5) = 21 s.
    prediction = predict(calibration, "experiment", 1, gpu_step_seconds=0.5)
    assert prediction.makespan_seconds == pytest.approx(84.0)
    assert prediction.assumptions["step_seconds"]["source"] == "flag"
    assert prediction.assumptions["val_seconds"]["value"] == pytest.approx(1.5)
    assert H200_STEP_SECONDS == 0.0717


def test_assumptions_name_each_number_and_its_source(calibration):
    assumptions = predict(calibration, "data", 2).assumptions
    assert assumptions["step_seconds"]["source"] == "measured"
    assert assumptions["step_seconds"]["detail"] == "by hand"
    assert assumptions["allreduce_seconds[2]"]["value"] == pytest.approx(0.5)
    assert "2(w-1)/w" in assumptions["allreduce_formula"]["value"]
    assert assumptions["steps_per_epoch[2]"]["value"] == 4
    assert {a["source"] for a in assumptions.values()} <= {"measured", "config", "default", "flag"}


def test_validate_gives_the_relative_error(calibration):
    prediction = predict(calibration, "experiment", 4)  # 54 s
    assert validate(prediction, 60.0) == pytest.approx(-0.1)
    with pytest.raises(ValueError):
        validate(prediction, 0.0)


@pytest.mark.parametrize(
    ("mode", "gpus", "k", "epochs"),
    [
        ("model", 1, None, None),
        ("hybrid", 4, None, None),
        ("hybrid", 4, 3, None),
        ("data", 4, 2, None),
        ("experiment", 0, None, None),
        ("experiment", 2, None, [2, 2]),
        ("experiment", 2, None, [3, 2, 2, 2]),
    ],
)
def test_impossible_requests_are_refused(calibration, mode, gpus, k, epochs):
    with pytest.raises(ValueError):
        predict(calibration, mode, gpus, k=k, epochs_per_trial=epochs)
