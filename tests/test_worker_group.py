"""Data mode's one worker group, driven without Ray: rank 0 decides what the group skips,
trains next and stops (the grid's list, or a search it asks and tells), every rank takes its
decision; a group Ray restarts picks up from the files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from distmis import run_folder
from distmis.config import validate_config
from distmis.hparams import HParams
from distmis.run_folder import TrialResult, read_search_events
from distmis.search import Proposal, Search
from distmis.sequential_asha import AshaRule
from distmis.train.data_parallel import group_config
from distmis.train.settings import TrainSettings
from distmis.trial import Runner, TrialConfig
from distmis.worker_group import train_group_grid, train_group_search
from tests.test_trial import CountingSteps, RecordingRunner


def grid(tmp_path: Path, epochs: int = 1) -> tuple[list[TrialConfig], dict]:
    """Two configurations of a data-mode run on 2 workers, one retry each, and the
    ``config`` Ray Train hands every worker (as data_parallel builds it)."""
    config = validate_config({"train": {"backend": "torch", "epochs": epochs, "max_failures": 1}})
    settings = TrainSettings.from_config(
        config["train"], mode="data", gpus=2, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )
    proposals = [
        Proposal(number, HParams(lr=lr, norm="batch", beta_2=0.99, amsgrad=False), sampled=False)
        for number, lr in enumerate((1e-3, 5e-3))
    ]
    trials = [settings.trial_config(p) for p in proposals]
    return trials, {
        **group_config(settings, trials=proposals, grid=proposals),
        "submitted_at": 50.0,
    }


def log_attempts(trial: TrialConfig, *times: float) -> None:
    for started in times:
        run_folder.log_attempt(trial.directory, started)


def trained(tmp_path: Path) -> list[str]:
    return sorted(p.parent.parent.name for p in (tmp_path / "out").glob("trials/*/workers/*.json"))


def test_rank_zero_skips_a_configuration_whose_attempts_are_used_up(tmp_path):
    (first, second), config = grid(tmp_path)
    log_attempts(first, 10.0, 20.0)  # 1 + max_failures, before this group's fit (50)
    runner = RecordingRunner(rank=0, world_size=2)
    train_group_grid(config, runner.runner, CountingSteps, started=60.0)
    assert runner.broadcasts == [(False, (0,))]
    assert trained(tmp_path) == [second.trial_id]
    # Not restarted: the first configuration trained counts its start-up from fit().
    result = TrialResult.read(second.directory / "result.json")
    assert result.startup_seconds == pytest.approx(result.fit_start_time - 50.0)


def test_rank_zero_sees_a_restarted_group_by_an_attempt_since_fit(tmp_path):
    (first, _), config = grid(tmp_path)
    log_attempts(first, 55.0)  # an attempt after fit (50): Ray restarted the group
    runner = RecordingRunner(rank=0, world_size=2)
    train_group_grid(config, runner.runner, CountingSteps, started=60.0)
    assert runner.broadcasts == [(True, ())]
    result = TrialResult.read(first.directory / "result.json")
    assert result.startup_seconds == pytest.approx(result.fit_start_time - 60.0)


def test_other_ranks_train_what_rank_zero_decided_not_what_they_count(tmp_path):
    # Rank 0 decided with one attempt logged, then logged its second as it started: a rank
    # reading the log now counts the attempts used up, and skipping would leave rank 0
    # alone in the configuration's collectives.
    (first, second), config = grid(tmp_path)
    log_attempts(first, 10.0, 55.0)
    runner = RecordingRunner(rank=1, world_size=2, rank_zero_says=(True, ()))
    train_group_grid(config, runner.runner, CountingSteps, started=60.0)
    assert runner.broadcasts == [None]  # rank 1 decides nothing itself
    assert trained(tmp_path) == sorted([first.trial_id, second.trial_id])
    # and the other way round: rank 0 said skip, though this rank's count says train
    shutil.rmtree(tmp_path / "out")
    runner = RecordingRunner(rank=1, world_size=2, rank_zero_says=(False, (1,)))
    train_group_grid(config, runner.runner, CountingSteps, started=60.0)
    assert trained(tmp_path) == [first.trial_id]


class LrSteps(CountingSteps):
    """Validation Dice 0.2 per epoch at lr 1e-3, a fifth of that at 5e-3."""

    def __init__(self, trial: TrialConfig, runner: Runner) -> None:
        super().__init__(trial, runner)
        self.scale = 1e-3 / trial.hparams.lr

    def validate(self, epoch: int) -> dict[str, float]:
        return {"val_loss": 0.9, "val_dice": 0.2 * self.epochs_trained * self.scale}


class ScriptedRunner(RecordingRunner):
    """A rank other than 0, told rank 0's broadcasts in turn."""

    def __init__(self, *rank_zero_says) -> None:
        super().__init__(rank=1, world_size=2)
        self.says = list(rank_zero_says)

    def broadcast(self, value):
        self.broadcasts.append(value)
        return self.says.pop(0)


def asha_grid(tmp_path: Path) -> tuple[list[TrialConfig], dict]:
    """grid() over 3 epochs with ASHA (rungs at epochs 1 and 2), as data_parallel builds it."""
    trials, config = grid(tmp_path, epochs=3)
    rule = AshaRule(max_t=3, grace_period=1, reduction_factor=2)
    return trials, {
        **config,
        "asha": {"rule": rule.to_dict(), "grid": [t.trial_id for t in trials]},
    }


def test_rank_zero_stops_a_configuration_that_trails_its_rung_and_a_restart_skips_it(tmp_path):
    (good, hopeless), config = asha_grid(tmp_path)
    runner = RecordingRunner(rank=0, world_size=2)
    train_group_grid(config, runner.runner, LrSteps, started=60.0)
    # good: asked after epochs 1 and 2 (not 3, its last); hopeless: 0.04 < 0.2 at rung 1
    assert runner.broadcasts == [(False, ()), False, False, True]
    assert (good.directory / "result.json").is_file()
    assert not (hopeless.directory / "result.json").is_file()
    assert [e.epoch for e in run_folder.read_epochs(hopeless.directory)] == [1]
    assert len(runner.reports) == 3  # good's epochs; the stopped epoch is not reported
    assert LrSteps.last.board.closed
    # Ray restarts the group: rank 0 rebuilds the rungs from epochs.jsonl and skips it.
    again = RecordingRunner(rank=0, world_size=2)
    train_group_grid(config, again.runner, LrSteps, started=70.0)
    assert again.broadcasts == [(True, (1,))]
    assert [e.epoch for e in run_folder.read_epochs(hopeless.directory)] == [1]


def test_other_ranks_stop_when_rank_zero_says_so(tmp_path):
    (good, hopeless), config = asha_grid(tmp_path)
    runner = ScriptedRunner((False, ()), False, False, True)
    train_group_grid(config, runner.runner, LrSteps, started=60.0)
    assert runner.broadcasts == [None, None, None, None]  # rank 1 decides nothing itself
    assert LrSteps.last.epochs_trained == 1  # hopeless's steps, left after epoch 1
    assert len(runner.reports) == 3


# TPE in data mode: rank 0 asks, every rank trains, rank 0 tells.
SPACE = {
    "lr": {"loguniform": [0.001, 0.02]},
    "norm": ["batch", "group"],
    "beta_2": [0.999],
    "amsgrad": [False],
}


def search_group(
    tmp_path: Path, *, epochs: int = 1, asha: bool = False
) -> tuple[TrainSettings, dict]:
    """A TPE search of 3 proposals over 2 workers, and the ``config`` Ray Train hands every
    worker (as data_parallel builds it), its fit() at t = 50."""
    train = {
        "backend": "torch",
        "epochs": epochs,
        "max_failures": 1,
        "search_space": SPACE,
        "search": {"algorithm": "tpe", "samples": 3, "seed": 3, "startup_trials": 1},
    }
    if asha:
        train.update(scheduler="asha", asha={"grace_period": 1, "reduction_factor": 2})
    config = validate_config({"train": train})
    settings = TrainSettings.from_config(
        config["train"], mode="data", gpus=2, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )
    search = settings.search_record(settings.out_dir)
    return settings, {**group_config(settings, search=search), "submitted_at": 50.0}


class NumberedSteps(CountingSteps):
    """Validation Dice 0.2 per epoch for proposal 0, divided by 1 + n for proposal n; the
    proposals listed in ``fail`` raise in training (each once per listing)."""

    fail: list[int] = []

    def __init__(self, trial: TrialConfig, runner: Runner) -> None:
        super().__init__(trial, runner)
        self.number = int(trial.trial_id[1:4])
        self.lr = trial.lr_effective

    def train_epoch(self, epoch: int) -> dict[str, float]:
        if self.number in NumberedSteps.fail:
            NumberedSteps.fail.remove(self.number)
            raise RuntimeError(f"proposal {self.number} failed")
        return super().train_epoch(epoch)

    def validate(self, epoch: int) -> dict[str, float]:
        return {"val_loss": 0.9, "val_dice": 0.2 * self.epochs_trained / (1 + self.number)}


def events(settings: TrainSettings) -> list[tuple]:
    return [(e.event, e.number, e.state) for e in read_search_events(settings.out_dir)]


def test_rank_zero_asks_every_rank_trains_and_rank_zero_tells_in_order(tmp_path):
    settings, config = search_group(tmp_path)
    runner = RecordingRunner(rank=0, world_size=2)
    train_group_search(config, runner.runner, NumberedSteps, started=60.0)
    assert events(settings) == [
        ("ask", 0, None), ("tell", 0, "COMPLETE"),
        ("ask", 1, None), ("tell", 1, "COMPLETE"),
        ("ask", 2, None), ("tell", 2, "COMPLETE"),
    ]  # fmt: skip
    asked = settings.search_record(settings.out_dir).asked
    # Broadcast: not restarted, then each proposal (number, hyperparameters), then the end.
    assert runner.broadcasts == [
        False,
        *[(p.number, p.hparams.to_dict()) for p in asked],
        None,
    ]
    assert trained(tmp_path) == sorted(p.trial_id for p in asked)
    told = [e.value for e in read_search_events(settings.out_dir) if e.event == "tell"]
    results = [
        TrialResult.read(tmp_path / "out/trials" / p.trial_id / "result.json") for p in asked
    ]
    assert told == [r.metrics["val_dice"] for r in results] == pytest.approx([0.2, 0.1, 0.2 / 3])
    # Told in training order, the seeded search is the one a local run would make: the same
    # proposals from a fresh search told the same values.
    fresh = Search.open(settings.search, settings.search_space, None)
    for value in told:
        proposal = fresh.ask()
        assert proposal == asked[proposal.number]
        fresh.tell(proposal.number, value)
    # Data mode's lr scaling (2 workers) applies to a searched configuration too.
    first = TrialConfig.of_proposal(asked[0], settings.worker_settings(), settings.lr_scale)
    assert first.lr_effective == asked[0].hparams.lr * settings.lr_scale


def test_other_ranks_train_what_rank_zero_proposes_and_write_no_record(tmp_path):
    settings, config = search_group(tmp_path)
    proposal = Search.open(settings.search, settings.search_space, None).ask()
    runner = ScriptedRunner(False, (proposal.number, proposal.hparams.to_dict()), None)
    train_group_search(config, runner.runner, NumberedSteps, started=60.0)
    assert runner.broadcasts == [None, None, None]  # rank 1 decides nothing itself
    assert trained(tmp_path) == [proposal.trial_id]
    assert read_search_events(settings.out_dir) == []  # rank 0 alone writes search.jsonl


def test_asha_stops_are_told_pruned_with_the_epochs_validated(tmp_path):
    settings, config = search_group(tmp_path, epochs=3, asha=True)
    runner = RecordingRunner(rank=0, world_size=2)
    train_group_search(config, runner.runner, NumberedSteps, started=60.0)
    # Rung 1: proposal 0 sets it at 0.2; 1 (0.1) and 2 (0.067) trail it and stop there.
    assert [(event, state) for event, _, state in events(settings) if event == "tell"] == [
        ("tell", "COMPLETE"),
        ("tell", "PRUNED"),
        ("tell", "PRUNED"),
    ]
    told = [e for e in read_search_events(settings.out_dir) if e.event == "tell"]
    assert told[1].steps == {"1": pytest.approx(0.1)} and told[1].value == pytest.approx(0.1)


def test_a_restarted_group_retries_then_fails_what_was_open_and_searches_on(tmp_path):
    settings, config = search_group(tmp_path)  # max_failures 1: two attempts each
    NumberedSteps.fail = [1, 1]
    for started in (60.0, 70.0):  # proposal 1 fails; Ray restarts the group; it fails again
        with pytest.raises(RuntimeError, match="proposal 1 failed"):
            train_group_search(
                config, RecordingRunner(rank=0, world_size=2).runner, NumberedSteps, started
            )
    assert events(settings) == [("ask", 0, None), ("tell", 0, "COMPLETE"), ("ask", 1, None)]
    third = RecordingRunner(rank=0, world_size=2)
    train_group_search(config, third.runner, NumberedSteps, started=80.0)
    assert third.broadcasts[0] is True  # an attempt began since fit(): a restarted group
    # Its attempts used up, proposal 1 is told failed, not trained a third time.
    assert events(settings)[3:] == [("tell", 1, "FAIL"), ("ask", 2, None), ("tell", 2, "COMPLETE")]
    assert len(run_folder.read_attempts(tmp_path / "out/trials" / trained(tmp_path)[1])) == 2


def test_a_finished_configuration_the_group_could_not_tell_is_told_not_retrained(tmp_path):
    settings, config = search_group(tmp_path)
    train_group_search(config, RecordingRunner(rank=0, world_size=2).runner, NumberedSteps, 60.0)
    record = settings.out_dir / run_folder.SEARCH_FILE
    lines = record.read_text().splitlines(keepends=True)
    record.write_text("".join(lines[:-1]))  # died after proposal 2's result, before its tell
    last = settings.search_record(settings.out_dir).asked[2]
    folder = tmp_path / "out/trials" / last.trial_id
    result = (folder / "result.json").read_text()
    again = RecordingRunner(rank=0, world_size=2)
    train_group_search(config, again.runner, NumberedSteps, started=70.0)
    assert events(settings)[-1] == ("tell", 2, "COMPLETE")
    assert again.broadcasts[1:] == [None]  # nothing left to ask
    assert (folder / "result.json").read_text() == result
    assert len(run_folder.read_attempts(folder)) == 1
