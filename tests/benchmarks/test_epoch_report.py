"""benchmarks/epoch_report.py, run as a user runs it: two real data-mode runs, one table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def test_it_times_both_poll_intervals_from_the_runs_files(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "epoch_report.py")),
            *("--epochs", "2", "--cases", "12", "--repeats", "1", "--workdir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(
        r"^\| (Ray's default \(2\.0 s\)|training's \(0\.05 s\)) \|", done.stdout, re.M
    )
    assert rows == ["Ray's default (2.0 s)", "training's (0.05 s)"], done.stdout
    assert re.search(r"makespan, Ray's default / training's: \d+\.\d\d", done.stdout)
    # Each setting's run is its own, whole: two configurations, two epochs each.
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert runs == ["torch-data-2-r0-ray-default", "torch-data-2-r0-training"]
    for run in runs:
        epochs = list((tmp_path / "runs" / run / "trials").glob("*/epochs.jsonl"))
        assert [len(p.read_text().splitlines()) for p in epochs] == [2, 2]


def test_a_run_whose_trials_fail_is_named_not_averaged(tmp_path):
    # 8 cases leave one validation volume: two data-parallel ranks cannot share it.
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "epoch_report.py")),
            *("--epochs", "1", "--cases", "8", "--repeats", "1", "--workdir", str(tmp_path)),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=600,
    )
    assert done.returncode == 1
    assert "2 trial(s) of" in done.stderr and "gives rank 1 of 2 no records" in done.stderr
    assert "Traceback" not in done.stderr
