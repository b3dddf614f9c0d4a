"""Calibration.from_runs on tiny fake run folders, and the calibration.json round trip.

The fake runs (epochs 2, batch 2, 2 configurations, 8 training and 2 validation volumes
from info.json) are built so the numbers come out round: one validation step is a third
of a training step, so at one worker an epoch is ``4 s + 1/3 s`` and with s = 1.5 s an epoch
is 6.5 s (fit 13 s) and a validation pass 0.5 s. Data mode at 2 workers steps in 1.75 s
(all-reduce 0.25 s): an epoch 2 × 1.75 + 0.5/2 = 3.75 s; at 4 workers 2.0 s (all-reduce
0.5 s): 1 × 2.0 + 0.5/4 = 2.125 s.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from distmis.errors import ContractError
from distmis.plan.calibration import CALIBRATION_FORMAT, UNET_PARAMETERS, Calibration
from distmis.plan.model import predict
from distmis.plan.runs import read_run

TRAIN_VOLUMES, VAL_VOLUMES, BATCH, EPOCHS = 8, 2, 2, 2


def write_info(folder: Path) -> Path:
    """The parts of info.json :class:`~distmis.data.info.DatasetInfo` reads."""
    folder.mkdir(parents=True)
    shard = {"file": "s.tfrecord", "sha256": ""}
    payload = {
        "image_shape": [8, 8, 8, 4],
        "label_shape": [8, 8, 8, 1],
        "image_dtype": "float16",
        "compression": "none",
        "label_channels": ["whole_tumor"],
        "modalities": ["FLAIR", "T1w", "t1gd", "T2w"],
        "splits": {
            "train": {"shards": [{**shard, "records": TRAIN_VOLUMES}]},
            "val": {"shards": [{**shard, "records": VAL_VOLUMES}]},
        },
    }
    (folder / "info.json").write_text(json.dumps(payload))
    return folder


def write_run(
    root: Path,
    mode: str,
    gpus: int,
    *,
    workers: int,
    fit_seconds: float,
    startups: list[float],
    tfrecord_dir: Path | None,
    status: str = "ok",
) -> Path:
    """A run folder: summary.json, trials.csv and per trial result.json + rank0.json.

    Trials start one second apart, in the order of ``startups``.
    """
    label = f"hybrid{workers}" if mode == "hybrid" else mode
    run = root / label / f"{gpus}gpu"
    steps = -(-TRAIN_VOLUMES // (BATCH * workers))
    rows = []
    for index, startup in enumerate(startups):
        trial_id = f"t{index}"
        folder = run / "trials" / trial_id
        (folder / "workers").mkdir(parents=True)
        result = {"fit_seconds": fit_seconds, "epochs": EPOCHS, "startup_seconds": startup}
        (folder / "result.json").write_text(json.dumps({**result, "history": []}))
        rank0 = {"steps_per_epoch": steps, "global_batch_size": BATCH * workers}
        (folder / "workers" / "rank0.json").write_text(json.dumps({**rank0, "world_size": workers}))
        start = 100.0 + index
        rows.append(
            {
                "trial_id": trial_id,
                "status": status,
                "start_time": start,
                "end_time": start + fit_seconds,
                "seconds": fit_seconds,
                "workers": workers,
                "epochs": EPOCHS,
                "epochs_run": EPOCHS,
                "startup_seconds": "",  # older runs: result.json has it
            }
        )
    with (run / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "backend": "torch",
        "mode": mode,
        "gpus": gpus,
        "gpus_per_trial": workers,
        "makespan_seconds": 50.0,
        "scheduler": "none",
        "trial_count": len(startups),
        "settings": {
            "epochs": EPOCHS,
            "batch_size_per_replica": BATCH,
            "tfrecord_dir": str(tfrecord_dir) if tfrecord_dir else None,
        },
        "devices_seen": ["CPU:x86_64"],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run


@pytest.fixture
def runs(tmp_path) -> list[Path]:
    data = write_info(tmp_path / "tfrecords")
    return [
        write_run(
            tmp_path,
            "experiment",
            1,
            workers=1,
            fit_seconds=13.0,
            startups=[4.0, 6.0],
            tfrecord_dir=data,
        ),
        # Two trials sharing the machine run slower: their steps must not set step_seconds.
        write_run(
            tmp_path,
            "experiment",
            2,
            workers=1,
            fit_seconds=20.0,
            startups=[5.0, 5.0],
            tfrecord_dir=data,
        ),
        write_run(
            tmp_path, "data", 2, workers=2, fit_seconds=7.5, startups=[12.0, 0.5], tfrecord_dir=data
        ),
        write_run(
            tmp_path,
            "data",
            4,
            workers=4,
            fit_seconds=4.25,
            startups=[14.0, 0.7],
            tfrecord_dir=data,
        ),
    ]


def test_from_runs_derives_the_numbers_worked_out_by_hand(runs):
    calibration = Calibration.from_runs(runs)
    assert calibration.step_seconds == pytest.approx(1.5)
    assert calibration.val_seconds == pytest.approx(0.5)
    assert calibration.allreduce_seconds == pytest.approx({2: 0.25, 4: 0.5})
    assert calibration.trial_startup_seconds == pytest.approx(5.0)  # median of 4, 6, 5, 5
    assert calibration.group_startup_seconds == pytest.approx(13.0)  # first configs: 12, 14
    assert calibration.config_startup_seconds == pytest.approx(0.6)  # later: 0.5, 0.7
    assert (calibration.train_volumes, calibration.batch_size_per_replica) == (8, 2)
    assert (calibration.epochs, calibration.grid_size) == (2, 2)
    assert (calibration.backend, calibration.hardware) == ("torch", "CPU:x86_64")
    assert calibration.parameter_count == UNET_PARAMETERS
    assert calibration.steps_per_epoch(4) == 1
    assert calibration.sources["step_seconds"] == "measured: median of 2 trials (experiment G=1)"
    assert calibration.sources["train_volumes"].startswith("config: info.json")


def test_without_info_json_validation_stays_inside_the_step(tmp_path):
    run = write_run(
        tmp_path, "experiment", 1, workers=1, fit_seconds=13.0, startups=[4.0], tfrecord_dir=None
    )
    calibration = Calibration.from_runs([run])
    # 4 steps × 2 volumes bound the training split; an epoch of 6.5 s is 4 steps alone.
    assert calibration.train_volumes == 8
    assert calibration.step_seconds == pytest.approx(6.5 / 4)
    assert calibration.val_seconds == 0.0
    assert calibration.sources["val_seconds"].startswith("default")
    # No data run: a Tune trial's start-up stands in for a worker group's; the per-config
    # start-up falls back to its default.
    assert calibration.group_startup_seconds == 4.0
    assert calibration.sources["config_startup_seconds"].startswith("default")


def test_a_calibration_needs_a_one_worker_run(tmp_path):
    data = write_info(tmp_path / "tfrecords")
    run = write_run(
        tmp_path, "data", 2, workers=2, fit_seconds=7.5, startups=[12.0], tfrecord_dir=data
    )
    with pytest.raises(ValueError, match="one worker per trial"):
        Calibration.from_runs([run])


def test_runs_of_different_shapes_are_refused(tmp_path):
    one = write_run(
        tmp_path / "a",
        "experiment",
        1,
        workers=1,
        fit_seconds=1.0,
        startups=[1.0],
        tfrecord_dir=None,
    )
    two = write_run(
        tmp_path / "b",
        "experiment",
        1,
        workers=1,
        fit_seconds=1.0,
        startups=[1.0, 1.0],
        tfrecord_dir=None,
    )
    with pytest.raises(ValueError, match="grid_size"):
        Calibration.from_runs([one, two])


def test_a_missing_result_names_the_file_and_its_rule(tmp_path):
    run = write_run(
        tmp_path, "experiment", 1, workers=1, fit_seconds=1.0, startups=[1.0], tfrecord_dir=None
    )
    (run / "trials" / "t0" / "result.json").unlink()
    with pytest.raises(ContractError, match=r"result.json is missing .*train_experiment_parallel"):
        Calibration.from_runs([run])


def test_json_round_trip_keeps_every_number(runs, tmp_path):
    calibration = Calibration.from_runs(runs)
    path = tmp_path / "calibration.json"
    calibration.write(path)
    payload = json.loads(path.read_text())
    assert payload["format"] == CALIBRATION_FORMAT
    assert payload["allreduce_seconds"] == {"2": pytest.approx(0.25), "4": pytest.approx(0.5)}
    assert Calibration.read(path) == calibration


def test_a_calibration_file_with_a_missing_key_is_refused(runs, tmp_path):
    payload = Calibration.from_runs(runs).to_json()
    del payload["step_seconds"]
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ContractError, match="missing \\['step_seconds'\\]"):
        Calibration.read(path)


def test_a_prediction_from_the_runs_reproduces_a_measured_configuration(runs):
    # The two measured all-reduce points fit latency 0.25 s per log2 round and no per-byte
    # cost, so allreduce(4) = 0.5 s as measured: data G=4 is 13 + 4.25 + 0.6 + 4.25 s.
    prediction = predict(Calibration.from_runs(runs), "data", 4)
    assert prediction.makespan_seconds == pytest.approx(22.1)
    assert prediction.assumptions["allreduce_latency_seconds"]["value"] == pytest.approx(0.25)
    assert prediction.assumptions["allreduce_bandwidth"]["value"] is None


def test_a_hybrid_asha_run_gives_group_start_ups_and_epochs_per_trial(tmp_path):
    single = write_run(
        tmp_path,
        "experiment",
        1,
        workers=1,
        fit_seconds=13.0,
        startups=[4.0, 6.0],
        tfrecord_dir=None,
    )
    hybrid = write_run(
        tmp_path, "hybrid", 4, workers=2, fit_seconds=7.5, startups=[9.0, 11.0], tfrecord_dir=None
    )
    # ASHA stopped t1 after one epoch: no result.json, one epoch in trials.csv.
    rows = list(csv.DictReader((hybrid / "trials.csv").read_text().splitlines()))
    rows[1].update(status="stopped", epochs_run="1", startup_seconds="")
    (hybrid / "trials" / "t1" / "result.json").unlink()
    with (hybrid / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert read_run(hybrid).epochs_per_trial == [2, 1]
    calibration = Calibration.from_runs([single, hybrid])
    assert calibration.group_startup_seconds == 9.0  # only the finished trial recorded one
    assert calibration.trial_startup_seconds == 5.0
    assert set(calibration.allreduce_seconds) == {2}
