"""Random search and TPE through the runners (issue 27): the same seed trains the same
configurations, each recorded with its proposal number and time; a killed TPE run resumes the
same study without repeating or losing a configuration."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distmis.config import validate_config
from distmis.run_folder import SEARCH_FILE, read_search_events
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords
from tests.train.test_local import run_cli

# A distribution and a list: the samples are real draws, not grid points.
SPACE = {
    "lr": {"loguniform": [0.001, 0.02]},
    "norm": ["batch", "group"],
    "beta_2": [0.999],
    "amsgrad": [False],
}


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=12, seed=5)


def train_section(search: dict) -> dict:
    return {"backend": "torch", "epochs": 1, "search_space": SPACE, "search": search}


def local_settings(tfrecords: Path, out: Path, search: dict) -> TrainSettings:
    config = validate_config({"train": train_section(search)})
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tfrecords, out_dir=out
    )
    return replace(settings, runner="local")


def trials_rows(out: Path) -> list[dict]:
    """trials.csv's rows in proposal order."""
    rows = list(csv.DictReader((out / "trials.csv").open()))
    return sorted(rows, key=lambda row: int(row["proposal"]))


def proposals(rows: list[dict]) -> list[tuple]:
    return [(r["trial_id"], float(r["lr"]), r["norm"]) for r in rows]


RANDOM = {"algorithm": "random", "samples": 3, "seed": 7}
TPE = {"algorithm": "tpe", "samples": 3, "seed": 11, "startup_trials": 1}


@pytest.mark.slow
def test_random_search_in_the_local_runner_trains_the_seeded_samples(tfrecords, tmp_path):
    from distmis.train.run import run_training

    settings = local_settings(tfrecords, tmp_path / "run", RANDOM)
    expected = settings.configurations()  # the seeded list, drawn without a run folder
    started = time.time()
    summary = run_training(settings)

    rows = trials_rows(settings.out_dir)
    assert [r["trial_id"] for r in rows] == [p.trial_id for p in expected]
    assert [r["trial_id"][:5] for r in rows] == ["s000_", "s001_", "s002_"]
    assert [int(r["proposal"]) for r in rows] == [0, 1, 2]
    assert [float(r["lr"]) for r in rows] == [p.hparams.lr for p in expected]  # numbers
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert started <= float(row["proposed_time"]) <= float(row["start_time"])
        assert (settings.out_dir / "trials" / row["trial_id"] / "result.json").is_file()
    events = read_search_events(settings.out_dir)
    assert [(e.event, e.number) for e in events] == [("ask", 0), ("ask", 1), ("ask", 2)]
    assert summary["search"] == {"algorithm": "random", "samples": 3, "seed": 7}
    assert summary["trial_count"] == 3


@pytest.mark.slow
def test_a_killed_tpe_local_run_resumes_the_same_study(tfrecords, tmp_path):
    """An uninterrupted seeded TPE run, and one SIGKILLed after its first configuration and
    run again: the same three proposals, each trained once (concurrency 1 is reproducible)."""
    from distmis.train.run import run_training

    whole = local_settings(tfrecords, tmp_path / "whole", TPE)
    summary = run_training(whole)
    reference = trials_rows(whole.out_dir)
    assert [int(r["proposal"]) for r in reference] == [0, 1, 2]
    assert all(r["trial_id"].startswith(f"s{i:03d}_") for i, r in enumerate(reference))
    assert summary["search"] == {"algorithm": "tpe", "samples": 3, "seed": 11}
    told = [e for e in read_search_events(whole.out_dir) if e.event == "tell"]
    assert [(e.number, e.state) for e in told] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "COMPLETE"),
    ]
    assert [e.value for e in told] == [float(r["val_dice"]) for r in reference]

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": train_section(TPE)}))
    out = tmp_path / "killed"
    args = ["train", "--runner", "local", "--mode", "experiment", "--gpus", "1"]
    args += ["--data", str(tfrecords), "--out", str(out), "--config", str(config)]
    child = run_cli(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "trials").glob("*/record.json")) and time.time() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = [p.parent.name for p in (out / "trials").glob("*/record.json")]
    assert finished and len(finished) < 3, finished

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming the interrupted run" in again.stderr
    assert proposals(trials_rows(out)) == proposals(reference)
    asks = [e.number for e in read_search_events(out) if e.event == "ask"]
    assert asks == [0, 1, 2]  # none asked twice, none lost
    for name in finished:  # trained once, before the kill
        attempts = (out / "trials" / name / "attempts.log").read_text().splitlines()[1:]
        assert len(attempts) == 1, name
    assert json.loads((out / "summary.json").read_text())["trial_count"] == 3
    assert (out / SEARCH_FILE).is_file()


@pytest.mark.slow
def test_random_search_in_experiment_mode_trains_the_same_seeded_samples(tfrecords, tmp_path):
    """Ray Tune, two trials at once: the very configurations the local runner trains for the
    seed (each its own s### folder), whichever finishes first."""
    from distmis.train.run import run_training

    config = validate_config({"train": train_section(RANDOM)})
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=2, tfrecord_dir=tfrecords, out_dir=tmp_path / "exp"
    )
    local = local_settings(tfrecords, tmp_path / "local", RANDOM).configurations()
    summary = run_training(settings)

    rows = trials_rows(settings.out_dir)
    assert [r["trial_id"] for r in rows] == [p.trial_id for p in local]
    assert [int(r["proposal"]) for r in rows] == [0, 1, 2]
    assert {r["status"] for r in rows} == {"ok"}
    assert summary["search"] == {"algorithm": "random", "samples": 3, "seed": 7}
    assert summary["trial_count"] == 3
