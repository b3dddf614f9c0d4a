"""Random search and TPE through the runners (issue 27): the same seed trains the same
configurations, each recorded with its proposal number and time; a killed TPE run resumes the
same study without repeating or losing a configuration: in the local runner, under Ray Tune
(experiment mode) and in data mode's one worker group."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distmis.config import validate_config
from distmis.hparams import HParams
from distmis.run_folder import SEARCH_FILE, read_attempts, read_search_events
from distmis.search import Proposal, Search
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords
from tests.train.kill import kill_after_a_result
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


def ray_settings(
    tfrecords: Path, out: Path, search: dict, mode: str, k: int | None = None
) -> TrainSettings:
    """A Ray run of ``mode`` on two workers (hybrid: trials of ``k``)."""
    config = validate_config({"train": train_section(search)})
    return TrainSettings.from_config(
        config["train"], mode=mode, gpus=2, gpus_per_trial=k, tfrecord_dir=tfrecords, out_dir=out
    )


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
@pytest.mark.parametrize(("mode", "k"), [("experiment", None), ("hybrid", 2)])
def test_random_search_under_tune_trains_the_same_seeded_samples(tfrecords, tmp_path, mode, k):
    """Ray Tune (experiment: two trials at once; hybrid: Train runs of two workers): the very
    configurations the local runner trains for the seed (each its own s### folder), whichever
    finishes first."""
    from distmis.train.run import run_training

    settings = ray_settings(tfrecords, tmp_path / mode, RANDOM, mode, k)
    local = local_settings(tfrecords, tmp_path / "local", RANDOM).configurations()
    summary = run_training(settings)

    rows = trials_rows(settings.out_dir)
    assert [r["trial_id"] for r in rows] == [p.trial_id for p in local]
    assert [int(r["proposal"]) for r in rows] == [0, 1, 2]
    assert {r["status"] for r in rows} == {"ok"}
    assert summary["search"] == {"algorithm": "random", "samples": 3, "seed": 7}
    assert summary["trial_count"] == 3


def asked_trial_ids(out: Path) -> dict[int, str]:
    """search.jsonl's asks: proposal number -> the trial id its params make."""
    asks = [e for e in read_search_events(out) if e.event == "ask"]
    assert len({e.number for e in asks}) == len(asks), "a number asked twice"
    return {
        e.number: Proposal(e.number, HParams.from_dict(e.params or {}), sampled=True).trial_id
        for e in asks
    }


@pytest.mark.slow
@pytest.mark.parametrize(("mode", "k"), [("experiment", None), ("hybrid", 2)])
def test_tpe_under_tune_is_proposed_by_its_searcher(tfrecords, tmp_path, mode, k):
    """Three proposals from Tune's numbered Optuna searcher (experiment: two trials at once;
    hybrid: one at a time, each a Train run of two workers): three distinct s### trials, each
    recorded as asked (search.jsonl) and told how it ended."""
    from distmis.train.run import run_training

    settings = ray_settings(tfrecords, tmp_path / mode, TPE, mode, k)
    assert settings.tune_proposes
    started = time.time()
    summary = run_training(settings)

    rows = trials_rows(settings.out_dir)
    assert [int(r["proposal"]) for r in rows] == [0, 1, 2]
    assert [r["trial_id"][:5] for r in rows] == ["s000_", "s001_", "s002_"]
    assert len({(float(r["lr"]), r["norm"]) for r in rows}) == 3
    assert {r["status"] for r in rows} == {"ok"}
    for row in rows:
        assert started <= float(row["proposed_time"]) <= float(row["start_time"])
    assert asked_trial_ids(settings.out_dir) == {int(r["proposal"]): r["trial_id"] for r in rows}
    told = sorted(
        (e.number, e.state, e.value)
        for e in read_search_events(settings.out_dir)
        if e.event == "tell"
    )
    assert told == [(int(r["proposal"]), "COMPLETE", float(r["val_dice"])) for r in rows]
    assert summary["search"] == {"algorithm": "tpe", "samples": 3, "seed": 11}
    assert summary["trial_count"] == 3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("mode", "resumed"),
    [
        ("experiment", "restoring the interrupted experiment"),
        ("data", "resuming the interrupted run"),
    ],
)
def test_a_killed_tpe_run_resumes_its_search(tfrecords, tmp_path, mode, resumed):
    """The whole job SIGKILLed once a configuration has finished, then run again: three
    proposals keep their numbers, none is asked twice or lost, and the one that finished
    before the kill is not trained again. Experiment mode (two at once): Tune restores its
    searcher. Data mode (two workers): the group's rank 0 replays search.jsonl; one at a time,
    each told before the next is asked, so they are the very proposals a fresh seeded search
    makes from the same results."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"train": train_section(TPE)}))
    out = tmp_path / mode
    command = [sys.executable, "-m", "distmis.cli", "train", "--mode", mode, "--gpus", "2",
               "--data", str(tfrecords), "--out", str(out), "--config", str(config)]  # fmt: skip
    before = kill_after_a_result(command, out)
    assert before and len(before) < 3, before

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert resumed in rerun.stderr
    rows = trials_rows(out)
    assert [int(r["proposal"]) for r in rows] == [0, 1, 2]
    assert {r["status"] for r in rows} == {"ok"}
    assert asked_trial_ids(out) == {int(r["proposal"]): r["trial_id"] for r in rows}
    for name, result in before.items():  # trained once, before the kill
        assert (out / "trials" / name / "result.json").read_text() == result
        assert len(read_attempts(out / "trials" / name)) == 1, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trial_count"] == 3 and summary["resumed"] is True
    events = read_search_events(out)
    told = sorted((e.number, e.state, e.value) for e in events if e.event == "tell")
    assert told == [(int(r["proposal"]), "COMPLETE", float(r["val_dice"])) for r in rows]
    if mode == "experiment":
        return
    assert [(e.event, e.number) for e in events] == [
        (event, n) for n in range(3) for event in ("ask", "tell")
    ]
    settings = ray_settings(tfrecords, out, TPE, "data")
    fresh = Search.open(settings.search, settings.search_space, None)
    for row in rows:
        assert fresh.ask().trial_id == row["trial_id"]
        fresh.tell(int(row["proposal"]), float(row["val_dice"]))
    for row in rows:  # recorded when rank 0 asked, before the configuration started
        assert float(row["proposed_time"]) <= float(row["start_time"])
