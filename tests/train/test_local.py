"""The local runner (``distmis train --runner local``): the real torch loop in one process,
without Ray — the same contract, downstream stages that accept it, retries and resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from distmis.config import validate_config
from distmis.errors import ConfigError
from distmis.run_folder import read_attempts
from distmis.train.local import COMPLETE_MARKER, LOCAL_DIR, CheckpointStore, LocalCheckpoint
from distmis.train.settings import TrainSettings
from tests.conftest import synthetic_tfrecords

GRID = {"lr": [0.005, 0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}
REPO = Path(__file__).resolve().parents[2]
# Packages a local torch run must never import: what the GPU machine lacks.
FORBIDDEN = ("ray", "tensorflow", "tf_keras")


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory) -> Path:
    return synthetic_tfrecords(tmp_path_factory.mktemp("data"), cases=12, seed=5)


def make_settings(tfrecords: Path, out: Path, **train) -> TrainSettings:
    config = validate_config(
        {"train": {"backend": "torch", "epochs": 2, "search_space": GRID, **train}}
    )
    settings = TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tfrecords, out_dir=out
    )
    return replace(settings, runner="local")


def read_trials(out: Path) -> dict[str, dict]:
    return {row["trial_id"]: row for row in csv.DictReader((out / "trials.csv").open())}


def blocked_path(tmp_path: Path) -> Path:
    """A folder whose ``ray``/``tensorflow`` packages raise on import, first on PYTHONPATH:
    the child behaves as on a machine without them, and any import of them fails loudly."""
    root = tmp_path / "blocked"
    for name in FORBIDDEN:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: a local torch run must not import it')\n"
        )
    return root


def run_cli(
    args: list[str], tmp_path: Path, **popen
) -> subprocess.CompletedProcess | subprocess.Popen:
    """``distmis <args>`` in a fresh interpreter with Ray and TensorFlow blocked; it prints the
    forbidden modules it ended up holding as its last line (JSON)."""
    script = textwrap.dedent(
        f"""
        import json, sys
        from distmis.cli import main
        rc = main({args!r})
        print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))
        sys.exit(rc)
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocked_path(tmp_path)), str(REPO / "src")]),
        "DISTMIS_CACHE_DIR": str(tmp_path / "cache"),
    }
    command = [sys.executable, "-c", script]
    if popen:
        return subprocess.Popen(command, env=env, cwd=tmp_path, **popen)
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)


def write_config(tmp_path: Path, **train) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump({"train": {"backend": "torch", "epochs": 2, "search_space": GRID, **train}})
    )
    return path


# ------------------------------------------------------------------ checkpoint store


def test_store_keeps_only_the_newest_complete_checkpoint(tmp_path: Path):
    store = CheckpointStore(tmp_path / "store")
    assert store.latest() is None
    for epoch in (1, 2):
        source = tmp_path / f"tmp{epoch}"
        source.mkdir()
        (source / "state.json").write_text(json.dumps({"epoch": epoch}))
        store.report({"epoch": epoch, "loss": 1.0}, LocalCheckpoint.from_directory(source))
    store.report({"epoch": 3, "loss": 0.5})  # metrics only (a rank without a checkpoint)
    latest = store.latest()
    assert latest is not None and latest.path.name == "checkpoint-000002"
    with latest.as_directory() as folder:
        assert json.loads((Path(folder) / "state.json").read_text()) == {"epoch": 2}
    assert sorted(p.name for p in store.directory.iterdir()) == ["checkpoint-000002"]
    assert [r["epoch"] for r in store.reports] == [1, 2, 3]


def test_store_never_restores_a_copy_cut_short(tmp_path: Path):
    store = CheckpointStore(tmp_path / "store")
    complete = store.directory / "checkpoint-000001"
    complete.mkdir(parents=True)
    (complete / COMPLETE_MARKER).touch()
    (store.directory / "checkpoint-000002").mkdir()  # killed before its marker
    assert store.latest().path == complete


def test_local_runner_is_one_device_only(tfrecords, tmp_path: Path):
    settings = make_settings(tfrecords, tmp_path / "out")
    with pytest.raises(ConfigError, match="G = 2 needs the Ray runner"):
        replace(settings, gpus=2)
    with pytest.raises(ConfigError, match="runner must be one of"):
        replace(settings, runner="slurm")


# ------------------------------------------------------------------ real runs, no Ray


@pytest.mark.slow
def test_local_run_writes_the_contract_without_ray_and_downstream_stages_accept_it(
    tfrecords, tmp_path: Path
):
    config = write_config(tmp_path)
    results = tmp_path / "results" / "train"
    for mode in ("experiment", "data"):
        out = results / "torch" / mode / "1gpu"
        done = run_cli(
            [
                "train",
                "--runner",
                "local",
                "--mode",
                mode,
                "--gpus",
                "1",
                "--data",
                str(tfrecords),
                "--out",
                str(out),
                "--config",
                str(config),
            ],
            tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == []  # no Ray, no TF
        trials = read_trials(out)
        assert len(trials) == 2 and {t["status"] for t in trials.values()} == {"ok"}, trials
        for trial_id, row in trials.items():
            directory = out / "trials" / trial_id
            result = json.loads((directory / "result.json").read_text())
            assert len(result["history"]) == 2 and result["resumed_from_epoch"] == 0
            assert float(row["val_dice"]) == pytest.approx(result["metrics"]["val_dice"])
            (worker,) = [json.loads(p.read_text()) for p in (directory / "workers").iterdir()]
            assert worker["frameworks_loaded"] == ["torch"]
            assert worker["world_size"] == 1
            assert (directory / "model.pt").is_file() and (directory / "record.json").is_file()
        summary = json.loads((out / "summary.json").read_text())
        assert (summary["runner"], summary["mode"], summary["gpus"]) == ("local", mode, 1)
        assert summary["resources"]["ray_cluster"] is None  # no Ray: none, written as null
        assert summary["versions"]["torch"] and "tensorflow" not in summary["versions"]
        card = json.loads((out / "best_model.json").read_text())
        assert card["trial"]["trial_id"] == summary["best"]["trial_id"]
        assert (out / "best_model.pt").is_file()
        assert not (out / LOCAL_DIR).exists()  # finished trials leave no checkpoints behind
        # Every trial ran in the one CLI process, one after another.
        pids = {
            json.loads(p.read_text())["pid"] for p in (out / "trials").glob("*/workers/rank0.json")
        }
        assert len(pids) == 1
        spans = sorted((float(t["start_time"]), float(t["end_time"])) for t in trials.values())
        assert spans[0][1] <= spans[1][0]

    scaling = run_cli(
        ["scaling", "--results", str(results), "--out", str(tmp_path / "sc")], tmp_path
    )
    assert scaling.returncode == 0, scaling.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "sc" / "scaling.csv").open()))
    assert {(r["mode"], r["runner"]) for r in rows} == {("data", "local"), ("experiment", "local")}

    evaluated = run_cli(
        [
            "evaluate",
            "--model",
            str(results / "torch" / "data" / "1gpu" / "best_model.json"),
            "--data",
            str(tfrecords),
            "--out",
            str(tmp_path / "eval"),
            "--overlay-cases",
            "1",
        ],
        tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "eval" / "summary.json").is_file()


class FailOnceAtSecondEpoch:
    """The backend's real steps, whose first attempt raises after one epoch's checkpoint."""

    attempts = 0

    def __init__(self, trial, runner) -> None:
        from distmis.backends.torch.loop import TorchTrialSteps

        type(self).attempts += 1
        self.first_attempt = type(self).attempts == 1
        self.steps = TorchTrialSteps(trial, runner)

    def __getattr__(self, name):
        return getattr(self.steps, name)

    def train_epoch(self, epoch: int):
        if self.first_attempt and epoch == 1:
            raise RuntimeError("injected: lost the GPU")
        return self.steps.train_epoch(epoch)


@pytest.mark.slow
def test_a_failed_attempt_is_retried_from_its_checkpoint(tfrecords, tmp_path: Path):
    from distmis.train.local import run_local

    settings = make_settings(tfrecords, tmp_path / "out", max_failures=1, cache=False)
    (hparams, _) = settings.configurations()
    records = run_local(settings, [hparams], lambda r: None, build_steps=FailOnceAtSecondEpoch)
    (record,) = records
    assert (record.status, record.attempts) == ("ok", 2), record
    result = json.loads(
        (tmp_path / "out" / "trials" / hparams.trial_id / "result.json").read_text()
    )
    assert result["resumed_from_epoch"] == 1 and len(result["history"]) == 1
    assert FailOnceAtSecondEpoch.attempts == 2


@pytest.mark.slow
def test_a_trial_that_keeps_failing_is_recorded_and_the_grid_goes_on(tfrecords, tmp_path: Path):
    from distmis.train.run import run_training

    settings = make_settings(tfrecords, tmp_path / "out", max_failures=1, epochs=1)
    failing, healthy = (hp.trial_id for hp in settings.configurations())
    summary = run_training(replace(settings, fail_trials=(failing,)))
    trials = read_trials(settings.out_dir)
    assert trials[failing]["status"] == "failed" and trials[failing]["attempts"] == "2"
    assert "configured to fail" in trials[failing]["error"]
    assert trials[healthy]["status"] == "ok"
    assert (summary["failed_count"], summary["best"]["trial_id"]) == (1, healthy)


@pytest.mark.slow
def test_a_killed_local_run_resumes_without_retraining_finished_trials(tfrecords, tmp_path: Path):
    config = write_config(tmp_path, epochs=3)
    out = tmp_path / "out"
    args = [
        "train",
        "--runner",
        "local",
        "--mode",
        "experiment",
        "--gpus",
        "1",
        "--data",
        str(tfrecords),
        "--out",
        str(out),
        "--config",
        str(config),
    ]
    child = run_cli(args, tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "trials").glob("*/record.json")) and time.time() < deadline:
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    (finished,) = [p.parent.name for p in (out / "trials").glob("*/record.json")]

    again = run_cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already finished" in again.stderr and "resuming the interrupted run" in again.stderr
    trials = read_trials(out)
    assert {t["status"] for t in trials.values()} == {"ok"}
    assert len(read_attempts(out / "trials" / finished)) == 1  # trained once, not again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] is True and summary["trial_count"] == 2
