"""``distmis train`` whose node cache does not fit, through the real CLI on a real 256 KiB
tmpfs: the run's room check (``data/node_cache.check_room_for_run``) refuses with one line
before anything is written or any trial starts. (That there is no refusal where there is room, the local runner's contract test
shows: it caches the same tiny data set in a tmp folder.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distmis.shards import node_cache
from distmis.shards.info import DatasetInfo
from tests.conftest import synthetic_tfrecords

REPO = Path(__file__).resolve().parents[2]
TMPFS_BYTES = 256 * 1024
GRID = {"lr": [0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}


@pytest.fixture(scope="module")
def small_tmpfs(tmp_path_factory) -> Path:
    """A real 256 KiB tmpfs (we run as root, here and on CI), unmounted afterwards."""
    folder = tmp_path_factory.mktemp("tmpfs")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            subprocess.run(["umount", str(folder)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def refused_run(tmp_path_factory, small_tmpfs: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """``distmis train`` (local runner, torch, 1 epoch) with ``train.cache_dir`` on the tmpfs."""
    root = tmp_path_factory.mktemp("run")
    tfrecords = synthetic_tfrecords(root / "data", cases=10, seed=3)
    # Refused for the arrays themselves, not only for the allowance added to them.
    assert node_cache.free_bytes(small_tmpfs) < DatasetInfo.from_dir(tfrecords).decoded_bytes(
        "train"
    )
    train = {
        "backend": "torch",
        "epochs": 1,
        "max_failures": 0,
        "cache": True,
        "cache_dir": str(small_tmpfs),
        "search_space": GRID,
    }
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"train": train}))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("SLURM_JOB_ID", None)  # the filesystem's free space is the limit under test
    out = root / "out"
    done = subprocess.run(
        [sys.executable, "-m", "distmis.cli", "train", "--runner", "local"]
        + ["--mode", "experiment", "--gpus", "1", "--data", str(tfrecords)]
        + ["--out", str(out), "--config", str(config)],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, out


@pytest.mark.slow
def test_a_cache_that_does_not_fit_fails_the_run_in_one_line_before_anything_is_written(
    refused_run, small_tmpfs: Path
):
    done, out = refused_run
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = [
        line
        for line in done.stderr.splitlines()
        if "CacheSpaceError" in line or "no room to cache" in line
    ]
    scope = small_tmpfs / f"distmis-cache-{os.getuid()}"
    # The driver's check, before any trial: train and val together, on the run's scope.
    assert line.startswith(
        f"distmis train: error: no room to cache split 'train + val' in {scope}/"
    )
    assert "but the filesystem's free space is 0.26 MB; fix: set train.cache_dir" in line
    assert "image_dtype: float16 (half the bytes)" in line  # the data set is float32
    assert line.endswith("; or set train.cache: false (stream from the shards)"), line
    assert "memory" not in line  # more job memory does not grow a tmpfs
    assert not (out / "trials.csv").exists()  # no trial started
    left = list(small_tmpfs.rglob("*"))
    assert not [p for p in left if p.suffix == ".npy" or "partial" in p.name], left
    assert not [p for p in left if p.is_dir() and p.name.startswith(("train-", "val-"))], left


@pytest.mark.slow
def test_a_worker_that_finds_no_room_fails_the_run_not_only_its_trial(
    tmp_path, small_tmpfs: Path, monkeypatch
):
    """The driver's node had room (say, the first of several) but a worker's has not: its
    trial fails with the CacheSpaceError, and so does the run (every trial on that node would)."""
    from dataclasses import replace

    from distmis.config import validate_config
    from distmis.errors import DistmisError
    from distmis.train import run as train_run
    from distmis.train.settings import TrainSettings

    tfrecords = synthetic_tfrecords(tmp_path / "data", cases=10, seed=3)
    monkeypatch.setattr(node_cache, "check_room_for_run", lambda *args, **kwargs: None)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    config = validate_config(
        {
            "train": {
                "backend": "torch",
                "epochs": 1,
                "max_failures": 0,
                "cache_dir": str(small_tmpfs),
                "search_space": GRID,
            }
        }
    )
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tfrecords, out_dir=tmp_path / "run"
    )
    with pytest.raises(DistmisError, match=r"CacheSpaceError: no room to cache split 'train'"):
        train_run.run_training(replace(settings, runner="local"))
    assert not [p for p in small_tmpfs.rglob("*") if p.suffix == ".npy"]
