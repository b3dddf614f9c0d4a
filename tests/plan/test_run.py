"""``distmis plan`` end to end on fake measured runs: calibration written, every (mode, k, G)
predicted, and each measured run predicted beside its measured makespan."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys

from distmis.plan.calibration import Calibration
from tests.plan.test_calibration import runs  # noqa: F401  (the fixture)


def test_plan_writes_calibration_and_every_row_with_measured_beside_predicted(runs, tmp_path):  # noqa: F811
    results = tmp_path / "results"
    for run in runs:  # into the workflow's layout, results/{backend}/{mode}/{G}gpu
        backend = json.loads((run / "summary.json").read_text())["backend"]
        shutil.copytree(run, results / backend / run.parent.name / run.name)
    out = tmp_path / "plan"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distmis.cli",
            "plan",
            "--results",
            str(results),
            "--out",
            str(out),
            "--gpus",
            "1",
            "2",
            "4",
            "8",
            "--gpus-per-trial",
            "2",
            "4",
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "plan.csv").open()))
    keys = {(r["mode"], int(r["gpus_per_trial"]), int(r["gpus"])) for r in rows}
    assert {("data", 8, 8), ("experiment", 1, 8), ("hybrid", 2, 8), ("hybrid", 4, 4)} <= keys
    assert ("hybrid", 4, 2) not in keys  # k must divide G and be <= G
    measured = [r for r in rows if r["measured_makespan_seconds"]]
    assert len(measured) == len(runs)
    for row in measured:
        predicted, actual = (
            float(row["predicted_makespan_seconds"]),
            float(row["measured_makespan_seconds"]),
        )
        assert float(row["relative_error"]) == (predicted - actual) / actual
    for row in rows:
        assert (
            float(row["gpu_hours"])
            == float(row["predicted_makespan_seconds"]) * int(row["gpus"]) / 3600
        )
        assert "step_seconds" in json.loads(row["assumptions"])
    (calibration_file,) = out.glob("calibration_*.json")
    assert Calibration.read(calibration_file).backend == rows[0]["backend"]


def test_plan_without_runs_or_calibration_says_what_to_do(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "distmis.cli",
            "plan",
            "--results",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "plan"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "no measured runs" in done.stderr
