"""Both parallelism modes for real: Ray Train and Ray Tune on CPU workers, tiny volumes."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distmis.config import validate_config
from distmis.run_folder import read_attempts
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords
from tests.train.kill import kill_after_a_result

pytestmark = pytest.mark.slow

GRID = {"lr": [0.001, 0.005, 0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=10, seed=3)


def make_settings(tfrecords: Path, out: Path, mode: str, gpus: int, **train) -> TrainSettings:
    config = validate_config({"train": {"epochs": 1, "search_space": GRID, **train}})
    return TrainSettings.from_config(
        config["train"], mode=mode, gpus=gpus, tfrecord_dir=tfrecords, out_dir=out
    )


def read_trials(out: Path) -> dict[str, dict]:
    return {row["trial_id"]: row for row in csv.DictReader((out / "trials.csv").open())}


def test_experiment_mode_runs_two_at_once_and_records_a_failure(tfrecords, tmp_path):
    from distmis.shards import node_cache
    from distmis.train.run import run_training

    cache_root = tmp_path / "node-cache"
    settings = make_settings(
        tfrecords, tmp_path / "exp", "experiment", 2, max_failures=1, cache_dir=str(cache_root)
    )
    grid = settings.configurations()
    failing = grid[1].trial_id
    summary = run_training(replace(settings, fail_trials=(failing,)))
    # The trials read one shared copy per split from the run's scope, gone with the run.
    scope = Path(summary["settings"]["cache_scope"])
    assert scope.parent == node_cache.scopes_dir(cache_root) and not scope.exists()

    trials = read_trials(settings.out_dir)
    assert len(trials) == 3
    assert trials[failing]["status"] == "failed"
    assert "InjectedFailure" in trials[failing]["error"]
    assert trials[failing]["attempts"] == "2"  # one retry, then recorded
    first, third = trials[grid[0].trial_id], trials[grid[2].trial_id]
    assert first["status"] == third["status"] == "ok"
    # Two trials ran at the same time. Tune starts the grid in order, so on one slot nothing
    # after the first trial could start before it ended. The failing trial's attempts (each
    # logs its start and fails at once; the record keeps only the last) or the third must
    # have. Not "started after the first did": both slots start together, in either order.
    attempts = read_attempts(settings.out_dir / "trials" / failing)
    later_starts = [*attempts, float(third["start_time"])]
    assert min(later_starts) < float(first["end_time"])
    assert float(first["val_dice"]) >= 0 and float(first["volumes_per_second"]) > 0
    assert (summary["trial_count"], summary["failed_count"]) == (3, 1)
    assert summary["best"]["trial_id"] in {grid[0].trial_id, grid[2].trial_id}
    assert summary["makespan_seconds"] >= max(float(t["end_time"]) for t in trials.values()) - min(
        float(t["start_time"]) for t in trials.values()
    )
    assert {"tensorflow", "keras", "ray", "python"} <= set(summary["versions"])
    assert (settings.out_dir / "best_model.keras").is_file()
    assert any((settings.out_dir / "tensorboard" / grid[0].trial_id).rglob("events.out.tfevents.*"))


def test_data_mode_uses_two_workers_with_the_per_replica_batch(tfrecords, tmp_path):
    import tf_keras as keras

    from distmis.train.run import run_training

    settings = make_settings(
        tfrecords,
        tmp_path / "dp",
        "data",
        2,
        batch_size_per_replica=2,
        search_space={**GRID, "lr": [0.005]},
    )
    summary = run_training(settings)
    ((trial_id, row),) = read_trials(settings.out_dir).items()
    assert row["status"] == "ok", row["error"]
    assert (row["workers"], row["batch_size_per_replica"], row["global_batch_size"]) == (
        "2",
        "2",
        "4",
    )
    workers = [
        json.loads(p.read_text())
        for p in sorted((settings.out_dir / "trials" / trial_id / "workers").glob("*.json"))
    ]
    assert [w["rank"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    assert all(w["batch_size_per_replica"] == 2 and w["global_batch_size"] == 4 for w in workers)
    assert summary["workers"] == 2 and summary["mode"] == "data"
    model = keras.models.load_model(settings.out_dir / "best_model.keras", compile=False)
    assert model.output_shape == (None, 16, 16, 16, 1)


def test_killed_experiment_resumes_without_retraining_finished_trials(tfrecords, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"train": {"epochs": 2, "search_space": {**GRID, "lr": [0.001, 0.005]}}})
    )
    out = tmp_path / "exp1"
    command = [
        sys.executable,
        "-m",
        "distmis.cli",
        "train",
        "--mode",
        "experiment",
        "--gpus",
        "1",
        "--data",
        str(tfrecords),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    first_id = "lr=0.001_norm=batch_beta2=0.999_amsgrad=0"
    second_id = "lr=0.005_norm=batch_beta2=0.999_amsgrad=0"
    # One trial at a time, in grid order: the first to finish is the first configuration.
    first_result = kill_after_a_result(command, out, timeout=240)[first_id]
    assert not (out / "summary.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    trials = read_trials(out)
    assert set(trials) == {first_id, second_id}
    assert all(row["status"] == "ok" for row in trials.values())
    # The finished trial was not trained again: one attempt, result untouched.
    assert len(read_attempts(out / "trials" / first_id)) == 1
    assert (out / "trials" / first_id / "result.json").read_text() == first_result
    assert json.loads((out / "summary.json").read_text())["resumed"] is True
