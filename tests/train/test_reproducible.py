"""A configuration's metrics depend on the configuration and the run's seed alone: not on the
runner, not on the mode at G = 1, not on what trained before it in the same process.

Each run is the real ``distmis train`` in a fresh interpreter (a configuration trained alone
must not inherit anything from the test process), Ray's runs on one CPU worker. On the CPU
with one thread per worker both backends came out bit-identical (2026-12-07); the tolerance
only absorbs a printing round trip, not a real difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import synthetic_tfrecords

pytestmark = pytest.mark.slow

FIRST, SECOND = 0.001, 0.005
TOLERANCE = 1e-6
METRICS = ("loss", "dice", "val_loss", "val_dice")


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=12, seed=5)


def train(tmp_path: Path, tfrecords: Path, backend: str, lrs, mode: str, runner: str) -> Path:
    """``distmis train`` of the grid ``lrs`` (in that order), 2 epochs at G = 1; its folder."""
    name = f"{mode}-{runner}-{'-'.join(map(str, lrs))}"
    config = tmp_path / f"{name}.yaml"
    search_space = {"lr": list(lrs), "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
    config.write_text(
        yaml.safe_dump({"train": {"backend": backend, "epochs": 2, "search_space": search_space}})
    )
    out = tmp_path / name
    command = [
        *(sys.executable, "-m", "distmis.cli", "train", "--mode", mode, "--gpus", "1"),
        *("--data", str(tfrecords), "--out", str(out), "--config", str(config)),
        *("--runner", runner),
    ]
    env = {**os.environ, "DISTMIS_CACHE_DIR": str(tmp_path / "cache")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def epochs_of(run: Path, lr: float) -> list[dict[str, float]]:
    """Each epoch's metrics of the configuration with learning rate ``lr``."""
    (folder,) = [p for p in (run / "trials").iterdir() if p.name.startswith(f"lr={lr}_")]
    lines = (folder / "epochs.jsonl").read_text().splitlines()
    return [{k: json.loads(line)[k] for k in METRICS} for line in lines]


def assert_same(a: list[dict[str, float]], b: list[dict[str, float]], what: str) -> None:
    assert len(a) == len(b) == 2, what
    for epoch, (x, y) in enumerate(zip(a, b, strict=True), start=1):
        for name in METRICS:
            assert abs(x[name] - y[name]) <= TOLERANCE, f"{what}, epoch {epoch}: {name} {x} != {y}"


@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_a_configuration_trains_the_same_whatever_ran_before_it_and_whoever_runs_it(
    backend, tfrecords, tmp_path
):
    alone = epochs_of(train(tmp_path, tfrecords, backend, [SECOND], "experiment", "local"), SECOND)
    runs = {
        "local runner": train(tmp_path, tfrecords, backend, [FIRST, SECOND], "experiment", "local"),
        # Data mode's one worker group trains the grid one configuration after another in
        # the same processes, under MultiWorkerMirroredStrategy / DDP.
        "data mode, G = 1": train(tmp_path, tfrecords, backend, [FIRST, SECOND], "data", "ray"),
        "experiment mode, G = 1": train(
            tmp_path, tfrecords, backend, [FIRST, SECOND], "experiment", "ray"
        ),
    }
    # The two configurations really differ (the comparison below could not pass by accident).
    first = epochs_of(runs["local runner"], FIRST)
    assert first[-1]["val_dice"] != alone[-1]["val_dice"]
    for what, run in runs.items():
        assert_same(epochs_of(run, SECOND), alone, f"{backend}: lr {SECOND} after {FIRST}, {what}")
        assert_same(epochs_of(run, FIRST), first, f"{backend}: lr {FIRST}, {what} vs local")
