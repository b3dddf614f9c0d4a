"""The PyTorch backend for real: Ray Tune and Ray Train's TorchTrainer on CPU workers (Gloo)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from distmis.backends.torch.checkpoint import load_model
from distmis.config import validate_config
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords

pytestmark = pytest.mark.slow

GRID = {"lr": [0.005, 0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=12, seed=5)


def make_settings(tfrecords: Path, out: Path, mode: str, gpus: int, **train) -> TrainSettings:
    config = validate_config(
        {"train": {"backend": "torch", "epochs": 1, "search_space": GRID, **train}}
    )
    return TrainSettings.from_config(
        config["train"], mode=mode, gpus=gpus, tfrecord_dir=tfrecords, out_dir=out
    )


def read_trials(out: Path) -> dict[str, dict]:
    return {row["trial_id"]: row for row in csv.DictReader((out / "trials.csv").open())}


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_experiment_mode_overlaps_two_torch_trials_that_learn(tfrecords, tmp_path):
    from distmis.train.run import run_training

    settings = make_settings(tfrecords, tmp_path / "exp", "experiment", 2, epochs=8)
    summary = run_training(settings)

    trials = read_trials(settings.out_dir)
    assert len(trials) == 2 and all(t["status"] == "ok" for t in trials.values()), trials
    first, second = trials.values()
    overlap = min(float(first["end_time"]), float(second["end_time"])) - max(
        float(first["start_time"]), float(second["start_time"])
    )
    assert overlap > 0, "the two trials did not run at the same time"
    for trial_id in trials:
        history = read_json(settings.out_dir / "trials" / trial_id / "result.json")["history"]
        assert len(history) == 8
        # It learns: validation Dice of the thresholded prediction climbs well above the start.
        assert history[-1]["val_dice"] > max(0.5, history[0]["val_dice"] + 0.2), history
        assert history[-1]["loss"] < history[0]["loss"]
        (worker,) = [
            read_json(p)
            for p in (settings.out_dir / "trials" / trial_id / "workers").glob("rank*.json")
        ]
        assert worker["frameworks_loaded"] == ["torch"]  # never TensorFlow in a torch trial
        assert worker["backend"] == "torch"
    assert summary["backend"] == "torch"
    assert {"torch", "ray", "python"} <= set(summary["versions"])
    assert "tensorflow" not in summary["versions"]
    card = read_json(settings.out_dir / "best_model.json")
    assert (card["backend"], card["model_file"]) == ("torch", "best_model.pt")
    assert card["trial"]["trial_id"] == summary["best"]["trial_id"]
    assert not (settings.out_dir / "best_model.keras").exists()
    model = load_model(settings.out_dir / "best_model.pt")
    with torch.no_grad():
        assert model(torch.zeros(1, 4, 16, 16, 16)).shape == (1, 1, 16, 16, 16)
    best = summary["best"]["trial_id"]
    assert any((settings.out_dir / "tensorboard" / best).rglob("events.out.tfevents.*"))


def test_data_mode_cli_with_original_torch_json_uses_both_workers(tfrecords, tmp_path):
    # The original PyTorch extension's JSON; -g 2 as its `multiexperiment.py -g 2`.
    seed_config = tmp_path / "config.json"
    seed_config.write_text(
        json.dumps(
            {
                "lr": 0.005,
                "epochs": 2,
                "verbose": 0,
                "nodes": 1,
                "gpus": 2,
                "batch_size": 2,
                "num_workers": 2,
                "use_gpu": False,
            }
        )
    )
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": {"search_space": GRID}}))
    out = tmp_path / "dp"
    command = [
        sys.executable,
        "-m",
        "distmis.cli",
        "train",
        "--backend",
        "torch",
        "--mode",
        "data",
        "-g",
        "2",
        "--seed-config",
        str(seed_config),
        "--data",
        str(tfrecords),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]

    ((trial_id, row),) = read_trials(out).items()  # lr 0.005 replaced the grid's lr axis
    assert row["status"] == "ok", row["error"]
    assert trial_id.startswith("lr=0.005_")
    assert (row["workers"], row["batch_size_per_replica"], row["global_batch_size"]) == (
        "2",
        "2",
        "4",
    )
    workers = [
        read_json(p) for p in sorted((out / "trials" / trial_id / "workers").glob("rank*.json"))
    ]
    assert [w["rank"] for w in workers] == [0, 1]
    assert len({w["pid"] for w in workers}) == 2
    steps = workers[0]["steps_per_epoch"]
    # 8 training volumes, global batch 4: 2 steps per epoch on each worker, both read their part.
    assert steps == 2 and all(w["steps_per_epoch"] == steps for w in workers)
    assert all(w["train_volumes_read"] == 2 * steps * 2 for w in workers), workers
    summary = read_json(out / "summary.json")
    assert (summary["backend"], summary["mode"], summary["workers"]) == ("torch", "data", 2)
    assert summary["settings"]["epochs"] == 2
    result = read_json(out / "trials" / trial_id / "result.json")
    assert result["volumes_trained"] == 2 * steps * 4
    assert (out / "best_model.pt").is_file()


def test_mixed_precision_runs_on_cpu(tfrecords, tmp_path):
    # bf16 with channels_last_3d is refused on CPUs (TorchOptions.device_problem says why). The
    # loss is not checked: PyTorch's CPU bf16 Conv3d backward now and then returns NaN.
    from distmis.train.run import run_training

    settings = make_settings(
        tfrecords,
        tmp_path / "bf16",
        "experiment",
        1,
        search_space={**GRID, "lr": [0.005]},
        torch={"precision": "bf16"},
    )
    summary = run_training(settings)
    assert summary["ok_count"] == 1, read_trials(settings.out_dir)
    assert summary["settings"]["backend_options"]["precision"] == "bf16"
    # The saved weights are float32 whatever the autocast precision.
    model = load_model(settings.out_dir / "best_model.pt")
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.timeout(600)  # it used to hang: rank 0 alone in a collective, for good
def test_data_mode_configurations_failing_on_one_rank_are_recorded_and_the_run_ends(tmp_path):
    # Eight cases leave one validation volume: rank 1 of 2 has none, so it fails alone, every
    # attempt, while rank 0 goes on into the group's first collective.
    tfrecords = synthetic_tfrecords(tmp_path / "data", cases=8, seed=5)
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"train": {"backend": "torch", "epochs": 1, "search_space": GRID}})
    )
    out = tmp_path / "dp"
    command = [
        *(sys.executable, "-m", "distmis.cli", "train", "--mode", "data", "--gpus", "2"),
        *("--data", str(tfrecords), "--out", str(out), "--config", str(config)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=540)
    trials = read_trials(out)
    assert [t["status"] for t in trials.values()] == ["failed", "failed"], done.stderr[-3000:]
    for row in trials.values():
        assert "rank 1 of 2 no records" in row["error"]
        assert row["attempts"] == "2"  # 1 + max_failures, then left failed
    summary = read_json(out / "summary.json")
    assert (summary["trial_count"], summary["failed_count"]) == (2, 2)
