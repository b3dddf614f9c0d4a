from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from distmis.config import validate_config
from distmis.errors import ConfigError
from distmis.train.grid import HParams, expand_grid
from distmis.train.results import TRIAL_COLUMNS, TrialRecord, build_summary, write_trials
from distmis.train.settings import TrainSettings


def settings(tmp_path: Path, **train) -> TrainSettings:
    config = validate_config({"train": train})
    return TrainSettings.from_config(
        config["train"], mode="data", gpus=4, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )


def test_paper_grid_has_32_configurations_in_fixed_order(tmp_path):
    grid = settings(tmp_path).grid()
    assert len(grid) == 32
    assert grid[0] == HParams(lr=1e-4, norm="batch", beta_2=0.99, amsgrad=True)
    assert grid[-1] == HParams(lr=5e-3, norm="group", beta_2=0.999, amsgrad=False)
    assert len({hp.trial_id for hp in grid}) == 32
    assert grid[0].trial_id == "lr=0.0001_norm=batch_beta2=0.99_amsgrad=1"


def test_expand_grid_needs_every_hyperparameter():
    with pytest.raises(ValueError, match="lacks"):
        expand_grid({"lr": [0.1]})


def test_linear_lr_scaling_only_in_data_mode_when_switched_on(tmp_path):
    hp = HParams(lr=1e-3, norm="batch", beta_2=0.99, amsgrad=False)
    assert settings(tmp_path).lr_effective(hp) == 1e-3
    scaled = settings(tmp_path, scale_lr=True)
    assert scaled.lr_effective(hp) == pytest.approx(4e-3)
    from dataclasses import replace

    assert replace(scaled, mode="experiment").lr_effective(hp) == 1e-3


def test_seed_config_maps_original_keys(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps({"num_replicas": 2, "batch_size_per_replica": 3, "num_epochs": 7, "debug": True})
    )
    s = settings(tmp_path).with_seed_config(path)
    assert (s.gpus, s.batch_size_per_replica, s.epochs, s.debug) == (2, 3, 7, True)
    path.write_text(json.dumps({"num_epoch": 7}))
    with pytest.raises(ConfigError, match="unknown key.*num_epoch"):
        settings(tmp_path).with_seed_config(path)


def record(
    trial_id: str, start: float, end: float, status: str = "ok", val_dice: float | None = 0.5
) -> TrialRecord:
    return TrialRecord(
        trial_id=trial_id,
        lr=1e-3,
        norm="batch",
        beta_2=0.99,
        amsgrad=False,
        lr_effective=1e-3,
        epochs=1,
        batch_size_per_replica=2,
        global_batch_size=2,
        workers=1,
        status=status,
        start_time=start,
        end_time=end,
        seconds=end - start,
        volumes_per_second=1.0,
        val_dice=val_dice,
        node="n1;n2",
    )


def test_trials_csv_has_the_contract_columns(tmp_path):
    path = tmp_path / "trials.csv"
    write_trials(path, [record("b", 0, 1), record("a", 1, 3, status="failed", val_dice=None)])
    rows = list(csv.DictReader(path.open()))
    assert tuple(rows[0]) == TRIAL_COLUMNS
    assert [r["trial_id"] for r in rows] == ["a", "b"]
    assert rows[0]["status"] == "failed" and rows[0]["val_dice"] == ""


def test_summary_counts_best_and_makespan(monkeypatch):
    monkeypatch.setattr("distmis.train.results.library_versions", lambda: {"python": "3.11"})
    trials = [
        record("a", 10, 20, val_dice=0.4),
        record("b", 12, 30, val_dice=0.7),
        record("c", 11, 12, status="failed", val_dice=None),
    ]
    summary = build_summary(
        mode="experiment",
        gpus=2,
        trials=trials,
        makespan_start=9.0,
        makespan_end=31.5,
        resources={},
        settings={},
        devices_seen=["CPU:x"],
        resumed=False,
    )
    assert summary["makespan_seconds"] == 22.5
    assert (summary["trial_count"], summary["ok_count"], summary["failed_count"]) == (3, 2, 1)
    assert summary["best"]["trial_id"] == "b" and summary["best"]["val_dice"] == 0.7
    assert summary["nodes_seen"] == ["n1", "n2"]
