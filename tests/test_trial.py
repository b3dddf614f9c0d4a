"""The per-trial skeleton both backends share, driven without Ray: a runner that records what
it is told, and steps that count what they are asked to do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distmis import run_folder
from distmis.config import validate_config
from distmis.hparams import HParams
from distmis.run_folder import CheckpointState, FailedAttempt, TrialResult, WorkerInfo
from distmis.search import Proposal
from distmis.train.settings import TrainSettings
from distmis.trial import (
    InjectedFailure,
    Runner,
    ScalarBoard,
    TrialConfig,
    TrialSteps,
    run_attempt,
    run_trial,
    train_loop,
)


class DirectoryCheckpoint:
    """What Ray's Checkpoint offers the skeleton: ``from_directory`` and ``as_directory``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_directory(cls, path: str) -> DirectoryCheckpoint:
        kept = Path(path).parent / f"kept-{len(list(Path(path).parent.glob('kept-*')))}"
        shutil.copytree(path, kept)  # Ray persists it before the temporary folder goes
        return cls(kept)

    def as_directory(self):
        import contextlib

        return contextlib.nullcontext(str(self.path))


class RecordingRunner:
    """``rank_zero_says``: what a broadcast from rank 0 returns on a rank other than 0."""

    def __init__(
        self, rank: int = 0, world_size: int = 1, checkpoint=None, rank_zero_says=None
    ) -> None:
        self.reports: list[tuple[dict, object]] = []
        self.checkpoint = checkpoint
        self.broadcasts: list[object] = []
        self.rank_zero_says = rank_zero_says
        self.runner = Runner(
            rank,
            world_size,
            self.report,
            lambda: self.checkpoint,
            DirectoryCheckpoint,
            broadcast_from_rank_zero=self.broadcast,
        )

    def broadcast(self, value):
        self.broadcasts.append(value)
        return value if self.runner.rank == 0 else self.rank_zero_says

    def report(self, metrics, checkpoint=None) -> None:
        self.reports.append((metrics, checkpoint))


class CountingBoard(ScalarBoard):
    def __init__(self) -> None:
        self.scalars: list[tuple[str, float, int]] = []
        self.closed = False

    def add_scalar(self, name, value, epoch) -> None:
        self.scalars.append((name, value, epoch))

    def close(self) -> None:
        self.closed = True


class CountingSteps(TrialSteps):
    """Loss falls by 0.1 per epoch; the 'model' is the number of epochs trained."""

    model_file = "model.pt"

    def __init__(self, trial: TrialConfig, runner: Runner) -> None:
        self.steps_per_epoch, self.global_batch, self.devices = 3, 2 * runner.world_size, ["CPU:t"]
        self.device_type, self.device_name = "cpu", "t"
        self.epochs_trained = 0
        self.calls: list[str] = []
        self.board = CountingBoard()
        CountingSteps.last = self

    def restore(self, directory: Path) -> None:
        self.calls.append("restore")
        self.epochs_trained = json.loads((directory / "model.json").read_text())["epochs"]

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.calls.append(f"train{epoch}")
        self.epochs_trained += 1
        return {"loss": 1.0 - 0.1 * self.epochs_trained, "dice": 0.1 * self.epochs_trained}

    def validate(self, epoch: int) -> dict[str, float]:
        self.calls.append(f"validate{epoch}")
        return {"val_loss": 0.9, "val_dice": 0.2 * self.epochs_trained}

    def save_checkpoint(self, directory: Path) -> None:
        (directory / "model.json").write_text(json.dumps({"epochs": self.epochs_trained}))

    def save_model(self, path: Path | None) -> None:
        self.calls.append(f"save_model:{path.name if path else None}")
        if path is not None:
            path.write_text(str(self.epochs_trained))

    def open_board(self, directory: Path) -> ScalarBoard:
        return self.board

    def finish_fields(self) -> dict:
        # A field the worker file's contract has (torch's count; here the epochs trained).
        return {"train_volumes_read": self.epochs_trained}


def trial_config(tmp_path: Path, backend: str = "torch", **train) -> TrialConfig:
    config = validate_config({"train": {"backend": backend, "epochs": 3, **train}})
    settings = TrainSettings.from_config(
        config["train"], mode="data", gpus=1, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )
    hparams = HParams(lr=1e-3, norm="batch", beta_2=0.99, amsgrad=False)
    return settings.trial_config(Proposal(0, hparams, sampled=False))


def test_a_trial_trains_every_epoch_reports_each_and_leaves_the_contract_files(tmp_path):
    trial = trial_config(tmp_path)
    runner = RecordingRunner()
    run_trial(trial, runner.runner, CountingSteps, started=100.0)
    steps = CountingSteps.last
    assert steps.calls == [
        "train0", "validate0", "train1", "validate1", "train2", "validate2", "save_model:model.pt"
    ]  # fmt: skip
    assert [m["epoch"] for m, _ in runner.reports] == [1, 2, 3]
    assert all(checkpoint is not None for _, checkpoint in runner.reports)
    last_checkpoint = runner.reports[-1][1].path
    assert CheckpointState.read(last_checkpoint / "state.json") == CheckpointState(
        epoch=3, trial_id=trial.trial_id
    )
    # One epochs.jsonl line per validated epoch, timed, with every metric.
    epochs = run_folder.read_epochs(trial.directory)
    assert [e.epoch for e in epochs] == [1, 2, 3]
    assert epochs[-1].val_dice == pytest.approx(0.6)
    assert set(epochs[-1].metrics) == {"loss", "dice", "val_loss", "val_dice"}
    assert all(a.time <= b.time for a, b in zip(epochs, epochs[1:], strict=False))
    result = TrialResult.read(trial.directory / "result.json")
    assert result.metrics == {"loss": pytest.approx(0.7), "dice": pytest.approx(0.3),
                              "val_loss": 0.9, "val_dice": pytest.approx(0.6)}  # fmt: skip
    assert len(result.history) == 3 and result.resumed_from_epoch == 0
    assert result.volumes_trained == 3 * 3 * 2 and result.start_time == 100.0
    # No submitted_at: start-up counts from entering the trial (started) to the first epoch.
    assert result.startup_seconds == pytest.approx(result.fit_start_time - 100.0)
    worker = WorkerInfo.read(trial.directory / "workers" / "rank0.json")
    assert (worker.steps_per_epoch, worker.global_batch_size) == (3, 2)
    assert worker.train_volumes_read == 3  # finish_fields reach the worker file
    assert (trial.directory / "model.pt").read_text() == "3"
    assert run_folder.read_attempts(trial.directory) == (100.0,)
    assert (trial.directory / "attempts.log").read_text() == "# distmis-trial-attempts/1\n100.0\n"
    assert steps.board.closed and ("val_dice", pytest.approx(0.6), 3) in steps.board.scalars


def test_a_resumed_trial_restores_then_trains_only_the_epochs_left(tmp_path):
    trial = trial_config(tmp_path)
    first = RecordingRunner()
    run_trial(trial, first.runner, CountingSteps, started=1.0)
    (trial.directory / "result.json").unlink()  # as if killed after epoch 1's checkpoint
    resumed = RecordingRunner(checkpoint=first.reports[0][1])
    run_trial(trial, resumed.runner, CountingSteps, started=2.0)
    steps = CountingSteps.last
    assert steps.calls[:3] == ["restore", "train1", "validate1"]
    result = TrialResult.read(trial.directory / "result.json")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    assert result.volumes_trained == 2 * 3 * 2
    assert (trial.directory / "model.pt").read_text() == "3"  # continued from epoch 1's state


def test_a_finished_trial_is_reported_again_not_retrained(tmp_path):
    trial = trial_config(tmp_path)
    run_trial(trial, RecordingRunner().runner, CountingSteps, started=1.0)
    again = RecordingRunner()
    CountingSteps.last = None
    run_trial(trial, again.runner, CountingSteps, started=2.0)
    assert CountingSteps.last is None  # no steps were even built
    assert [m["epoch"] for m, _ in again.reports] == [3]


def test_other_ranks_report_without_checkpoints_and_save_no_model(tmp_path):
    trial = trial_config(tmp_path)
    trial.directory.mkdir(parents=True)
    runner = RecordingRunner(rank=1, world_size=2)
    run_trial(trial, runner.runner, CountingSteps, started=1.0)
    assert [checkpoint for _, checkpoint in runner.reports] == [None, None, None]
    assert CountingSteps.last.calls[-1] == "save_model:None"
    assert not (trial.directory / "result.json").exists()
    assert WorkerInfo.read(trial.directory / "workers" / "rank1.json").world_size == 2


def test_a_failing_trial_records_its_error_and_raises(tmp_path, monkeypatch):
    trial = trial_config(tmp_path)
    trial = TrialConfig.from_dict(
        {
            **trial.to_dict(),
            "settings": {**trial.settings.to_dict(), "fail_trials": [trial.trial_id]},
        }
    )
    runner = RecordingRunner()
    monkeypatch.setattr(Runner, "from_ray", classmethod(lambda cls, mode: runner.runner))
    with pytest.raises(InjectedFailure, match="configured to fail"):
        train_loop(CountingSteps)(trial.to_dict())
    failure = FailedAttempt.read(trial.directory / "failed.json")
    assert failure.error.startswith("InjectedFailure: trial lr=0.001")


class FailingSteps(CountingSteps):
    error = ""  # what the next train_epoch raises

    def train_epoch(self, epoch: int) -> dict[str, float]:
        raise RuntimeError(FailingSteps.error)


def test_a_groups_first_error_is_recorded_not_the_peers_it_took_down(tmp_path):
    trial = trial_config(tmp_path)
    failed = trial.directory / "failed.json"
    # Attempt 1: rank 1 fails with the cause, then rank 0's collective with the consequence.
    FailingSteps.error = "the cause"
    with pytest.raises(RuntimeError):
        run_attempt(trial, RecordingRunner(rank=1, world_size=2).runner, FailingSteps, 100.0)
    FailingSteps.error = "Connection closed by peer"
    with pytest.raises(RuntimeError):
        run_attempt(trial, RecordingRunner(rank=0, world_size=2).runner, FailingSteps, 100.2)
    assert FailedAttempt.read(failed).error == "RuntimeError: the cause"
    # Attempt 2, after Ray restarted the group: its own first error replaces attempt 1's.
    FailingSteps.error = "the second cause"
    with pytest.raises(RuntimeError):
        run_attempt(trial, RecordingRunner(rank=0, world_size=2).runner, FailingSteps, 1e10)
    assert FailedAttempt.read(failed).error == "RuntimeError: the second cause"
