"""``distmis plan`` end to end on fake measured runs, in a subprocess as a user runs it:
calibration written, every (mode, k, G) predicted, each measured run predicted beside its
measured makespan (in and out of sample), the projection, and the printed table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace

import pytest

from distmis.plan.calibration import Calibration
from distmis.plan.model import H200_STEP_SECONDS
from tests.plan.fake_runs import Timing, write_info, write_run


def plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distmis.cli", "plan", *args], capture_output=True, text=True
    )


@pytest.fixture
def results(tmp_path):
    data = write_info(tmp_path / "tfrecords")
    root = tmp_path / "results"
    write_run(root / "torch", "experiment", 1, tfrecord_dir=data)
    write_run(root / "torch", "experiment", 2, timing=Timing(step=1.25), tfrecord_dir=data)
    slow = replace(Timing(), step=1.75, setup=6.0)
    write_run(root / "torch", "data", 2, timing=slow, tfrecord_dir=data)
    return root


def test_plan_writes_calibration_and_every_row_with_measured_beside_predicted(results, tmp_path):
    out = tmp_path / "plan"
    done = plan(
        "--results", str(results), "--out", str(out), "--gpus", "1", "2", "4", "8",
        "--gpus-per-trial", "2", "4",
        "--gpu-step-seconds", "h200", "--grid-size", "8", "--train-volumes", "64",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "plan.csv").open()))
    keys = {(r["study"], r["mode"], int(r["gpus_per_trial"]), int(r["gpus"])) for r in rows}
    assert {("measured", "data", 8, 8), ("measured", "hybrid", 4, 4)} <= keys
    assert ("measured", "hybrid", 4, 2) not in keys  # k must divide G and be <= G
    assert {("projected", "experiment", 1, 8), ("projected", "hybrid", 2, 8)} <= keys
    measured = [r for r in rows if r["measured_makespan_seconds"]]
    assert {(r["mode"], r["gpus"]) for r in measured} == {
        ("experiment", "1"),
        ("experiment", "2"),
        ("data", "2"),
    }
    for row in measured:
        predicted = float(row["predicted_makespan_seconds"])
        actual = float(row["measured_makespan_seconds"])
        assert float(row["relative_error"]) == (predicted - actual) / actual
        assert row["loo_relative_error"] != "" or row["mode"] != "data"
    experiment_2 = next(r for r in measured if (r["mode"], r["gpus"]) == ("experiment", "2"))
    assert float(experiment_2["measured_speedup"]) == pytest.approx(
        float(next(r for r in measured if r["gpus"] == "1")["measured_makespan_seconds"])
        / float(experiment_2["measured_makespan_seconds"])
    )
    projected = [r for r in rows if r["study"] == "projected"]
    assert all(float(r["step_seconds"]) == H200_STEP_SECONDS for r in projected)
    assert all(json.loads(r["assumptions"])["grid_size"]["value"] == 8 for r in projected)
    for row in rows:
        assert float(row["gpu_hours"]) == pytest.approx(
            float(row["predicted_makespan_seconds"]) * int(row["gpus"]) / 3600
        )
    (calibration_file,) = out.glob("calibration_*.json")
    assert Calibration.read(calibration_file).backend == "torch"
    # The printed table: one line per row under a header, then the csv's path.
    lines = done.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["backend", "study", "mode", "G"]
    assert len(lines) == 1 + len(rows) + 1
    assert json.loads(lines[-1]) == {"plan_csv": str(out / "plan.csv")}


def test_a_calibration_file_replaces_the_runs(results, tmp_path):
    first = plan("--results", str(results), "--out", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr[-2000:]
    again = plan(
        "--results", str(tmp_path / "none"), "--out", str(tmp_path / "b"),
        "--calibration", str(tmp_path / "a" / "calibration_torch.json"),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    rows = list(csv.DictReader((tmp_path / "b" / "plan.csv").open()))
    assert rows and not any(r["measured_makespan_seconds"] for r in rows)


def test_plan_without_runs_or_calibration_says_what_to_do(tmp_path):
    done = plan("--results", str(tmp_path / "none"), "--out", str(tmp_path / "plan"))
    assert done.returncode == 2
    assert "no measured runs" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_gpu_step_is_refused_in_one_line(results, tmp_path):
    done = plan("--results", str(results), "--gpu-step-seconds", "cuda=0.1")
    assert done.returncode == 2
    assert "unknown backend 'cuda'" in done.stderr and "Traceback" not in done.stderr
