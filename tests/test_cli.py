"""The distmis console script, run as a real subprocess."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from distmis.run_folder import RunSearch
from tests.scaling.helpers import (
    BACKENDS,
    MODES,
    make_results,
    timeline_names,
    write_search_runs,
)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "distmis.cli", *args], capture_output=True, text=True, cwd=cwd
    )


def test_synthesize_convert_inspect(tmp_path):
    result = run_cli(
        "synthesize",
        "--out",
        str(tmp_path / "raw"),
        "--cases",
        "8",
        "--shape",
        "20",
        "20",
        "18",
        "--seed",
        "1",
    )
    assert result.returncode == 0, result.stderr
    task = Path(result.stdout.strip())
    assert (task / "dataset.json").is_file()

    result = run_cli(
        "convert",
        "--msd-dir",
        str(tmp_path / "raw"),
        "--out",
        str(tmp_path / "tfr"),
        "--shape",
        "16",
        "16",
        "16",
        "--labels",
        "regions",
        "--split",
        "0.5",
        "0.25",
        "0.25",
        "--shards",
        "2",
        "1",
        "1",
        "--seed",
        "3",
        "--workers",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["records"] == {
        "train": 4,
        "val": 2,
        "test": 2,
    }

    result = run_cli("inspect", str(tmp_path / "tfr"))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["train"]["records"] == 4
    assert report["train"]["image_shapes"] == [[16, 16, 16, 4]]
    assert report["val"]["label_shapes"] == [[16, 16, 16, 3]]
    assert abs(report["train"]["channel_mean"]["FLAIR"]) < 1e-3
    assert abs(report["train"]["channel_std"]["t1gd"] - 1) < 1e-3
    voxels = report["train"]["label_voxels"]
    assert voxels["WT"] >= voxels["TC"] >= voxels["ET"] > 0
    assert voxels["background"] + voxels["WT"] == 4 * 16**3


def test_convert_resize_records_the_resample_per_case(make_task, tmp_path):
    task = make_task(cases=4, shape=(20, 18, 14))
    out = tmp_path / "tfr"
    result = run_cli(
        "convert",
        "--msd-dir",
        str(task),
        "--out",
        str(out),
        # Down along x and z, to fewer voxels than --shape along y: resample, then pad y.
        "--resize",
        "16",
        "12",
        "8",
        "--shape",
        "16",
        "16",
        "8",
        "--split",
        "0.5",
        "0.25",
        "0.25",
        "--shards",
        "1",
        "1",
        "1",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((out / "info.json").read_text())
    assert info["preprocessing"]["resize"] == [16, 12, 8]
    assert "resampled to [16, 12, 8]" in info["preprocessing"]["resampling"]
    assert len(info["cases"]) == 4
    for case in info["cases"]:
        assert case["resampled_shape"] == [16, 12, 8]
        assert case["source_shape"] == [20, 18, 14]
        assert case["crop_start"] == [0, -2, 0]
    result = run_cli("inspect", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for split in ("train", "val", "test"):
        assert report[split]["image_shapes"] == [[16, 16, 8, 4]]
        assert report[split]["label_shapes"] == [[16, 16, 8, 1]]


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["convert", "--msd-dir", "/nonexistent", "--out", "/tmp/x"], "does not exist"),
        (["convert", "--msd-dir", ".", "--out", "/tmp/x", "--split", "0.5", "0.5", "0.5"], "sum"),
        (["inspect", "/nonexistent"], "info.json is missing"),
        (["synthesize", "--out", "/tmp/x", "--cases", "0"], "cases"),
        (["download", "--out", "/tmp/x", "--archive", "/nonexistent.tar"], "nonexistent.tar"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(args, reason, tmp_path):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("distmis ")]
    assert len(lines) == 1 and reason in lines[0], result.stderr


def test_scaling_reads_the_results_folder(tmp_path):
    results = make_results(tmp_path / "train")
    out = tmp_path / "scaling"
    result = run_cli("scaling", "--results", str(results), "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = json.loads(result.stdout.splitlines()[-1])
    figures = {"speedup", "efficiency", "makespan", "quality", "time_to_target"}
    assert set(written) == figures | timeline_names((1, 2, 4)) | {"scaling_csv"}
    table = (out / "scaling.csv").read_text().splitlines()
    assert len(table) == 1 + len(BACKENDS) * len(MODES) * 3


def test_scaling_of_several_results_folders_is_one_study_of_their_searches(tmp_path):
    # The search study's layout: each search's runs in a results folder of its own.
    grid, random8 = RunSearch("grid", None, 0), RunSearch("random", 8, 0)
    write_search_runs(tmp_path, [(grid, "data", 1, 100.0), (grid, "data", 2, 60.0)])
    write_search_runs(tmp_path, [(random8, "data", 1, 80.0), (random8, "data", 2, 40.0)])
    out = tmp_path / "scaling"
    folders = [str(tmp_path / "grid_0"), str(tmp_path / "random8_0")]
    result = run_cli("scaling", "--results", *folders, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with (out / "scaling.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["search"], r["gpus"], float(r["speedup_vs_1gpu"])) for r in rows] == [
        ("grid", "1", 1.0),
        ("grid", "2", pytest.approx(100.0 / 60.0, rel=1e-5)),  # written to 6 digits
        ("random×8", "1", 1.0),
        ("random×8", "2", 2.0),
    ]
    # The same folder twice holds every run twice: refused, naming both.
    twice = run_cli("scaling", "--results", folders[0], folders[0], "--out", str(out), cwd=tmp_path)
    assert twice.returncode != 0 and "may have only one run" in twice.stderr
