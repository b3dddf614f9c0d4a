"""The grid skeleton every runner shares (distmis.train.grid), with a fake trainer of pending
configurations on real trial folders: what it skips, records, saves and returns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from distmis.config import validate_config
from distmis.hparams import HParams
from distmis.run_folder import RESULT_FILE, TrialResult
from distmis.train.grid import Outcome, run_grid
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, load_record, trial_dir

GRID = {"lr": [0.001, 0.005, 0.01], "norm": ["batch"], "beta_2": [0.999], "amsgrad": [False]}


def make_settings(tmp_path: Path) -> TrainSettings:
    config = validate_config({"train": {"epochs": 2, "search_space": GRID}})
    return TrainSettings.from_config(
        config["train"], mode="experiment", gpus=1, tfrecord_dir=tmp_path, out_dir=tmp_path / "out"
    )


def write_result(settings: TrainSettings, hparams: HParams, start: float, val_dice: float) -> None:
    """What a trial that trained every epoch leaves for its record: its result.json."""
    metrics = {"loss": 0.5, "dice": 0.6, "val_loss": 0.4, "val_dice": val_dice}
    TrialResult(
        trial_id=hparams.trial_id,
        backend=settings.backend,
        start_time=start,
        fit_start_time=start + 1.5,
        end_time=start + 10.0,
        fit_seconds=8.5,
        startup_seconds=1.5,
        volumes_trained=40,
        epochs=settings.epochs,
        resumed_from_epoch=0,
        metrics=metrics,
        history=(metrics,),
        devices=("cpu",),
    ).write(trial_dir(settings, hparams.trial_id) / RESULT_FILE)


class FakeTrainer:
    """Trains a configuration by writing its result.json; ``fail`` ones leave nothing and
    end with an error. Yields in ``order`` ("grid" or "reversed")."""

    def __init__(self, settings: TrainSettings, fail: Sequence[str] = (), order: str = "grid"):
        self.settings, self.fail, self.order = settings, set(fail), order
        self.given: list[str] = []

    def __call__(self, pending: Sequence[HParams]) -> Iterator[Outcome]:
        self.given = [hp.trial_id for hp in pending]
        ordered = list(reversed(pending)) if self.order == "reversed" else list(pending)
        for index, hparams in enumerate(ordered):
            if hparams.trial_id in self.fail:
                yield Outcome(hparams, "RuntimeError: lost the GPU\ntraceback", 100.0, 107.0)
            else:
                write_result(self.settings, hparams, 1000.0 + index, val_dice=0.1 * (index + 1))
                yield Outcome(hparams, None, 100.0, 200.0)


def never_called(pending: Sequence[HParams]) -> Iterator[Outcome]:
    raise AssertionError(f"trained {[hp.trial_id for hp in pending]} again")


def test_finished_configurations_are_kept_and_the_rest_trained_and_returned_in_grid_order(
    tmp_path: Path,
):
    settings = make_settings(tmp_path)
    first, middle, last = settings.configurations()
    # The middle one finished in an interrupted run: its record is on disk.
    run_grid(settings, [middle], lambda r: None, FakeTrainer(settings))
    middle_file = trial_dir(settings, middle.trial_id) / "record.json"
    recorded = middle_file.read_text()

    trainer = FakeTrainer(settings, order="reversed")
    seen: list[TrialRecord] = []
    records = run_grid(settings, [first, middle, last], seen.append, trainer)

    assert trainer.given == [first.trial_id, last.trial_id]
    assert [r.trial_id for r in records] == [first.trial_id, middle.trial_id, last.trial_id]
    # on_record: once per newly trained configuration, in the order the trainer yielded.
    assert [r.trial_id for r in seen] == [last.trial_id, first.trial_id]
    assert middle_file.read_text() == recorded  # neither retrained nor rewritten
    by_id = {r.trial_id: r for r in records}
    assert by_id[last.trial_id].val_dice == pytest.approx(0.1)  # yielded first
    assert by_id[first.trial_id].val_dice == pytest.approx(0.2)
    for hparams in (first, last):
        record = by_id[hparams.trial_id]
        assert (record.status, record.error, record.epochs_run) == ("ok", "", 2)
        assert record.seconds == pytest.approx(10.0) and record.volumes_per_second == 4.0
        assert load_record(settings, hparams.trial_id) == record  # saved for a rerun


def test_on_record_comes_as_each_configuration_is_yielded(tmp_path: Path):
    settings = make_settings(tmp_path)
    grid = settings.configurations()
    seen: list[str] = []

    def one_at_a_time(pending: Sequence[HParams]) -> Iterator[Outcome]:
        for position, hparams in enumerate(pending):
            # Every earlier configuration was saved and handed on before this one trains.
            assert seen == [hp.trial_id for hp in pending[:position]]
            assert all(load_record(settings, hp.trial_id) for hp in pending[:position])
            write_result(settings, hparams, 1000.0, val_dice=0.5)
            yield Outcome(hparams, None, 100.0, 200.0)

    run_grid(settings, grid, lambda r: seen.append(r.trial_id), one_at_a_time)
    assert seen == [hp.trial_id for hp in grid]


def test_an_error_is_recorded_as_failed_and_a_rerun_keeps_it(tmp_path: Path):
    settings = make_settings(tmp_path)
    grid = settings.configurations()
    failing = grid[1].trial_id
    records = run_grid(settings, grid, lambda r: None, FakeTrainer(settings, fail=[failing]))

    failed = records[1]
    assert (failed.trial_id, failed.status) == (failing, "failed")
    assert failed.error == "RuntimeError: lost the GPU"  # its first line
    # It left no result: timed by what the driver saw.
    assert (failed.start_time, failed.end_time, failed.seconds) == (100.0, 107.0, 7.0)
    assert [r.status for r in records] == ["ok", "failed", "ok"]

    seen: list[TrialRecord] = []
    again = run_grid(settings, grid, seen.append, never_called)
    assert again == records and seen == []


def test_a_trainer_that_leaves_a_configuration_out_or_returns_a_stranger_fails(tmp_path: Path):
    settings = make_settings(tmp_path)
    first, second, third = settings.configurations()

    def only_first(pending: Sequence[HParams]) -> Iterator[Outcome]:
        yield Outcome(pending[0], "RuntimeError: x", 1.0, 2.0)

    with pytest.raises(RuntimeError, match=second.trial_id):
        run_grid(settings, [first, second], lambda r: None, only_first)

    def a_stranger(pending: Sequence[HParams]) -> Iterator[Outcome]:
        yield Outcome(third, "RuntimeError: x", 1.0, 2.0)

    with pytest.raises(RuntimeError, match="was not pending"):
        run_grid(settings, [second], lambda r: None, a_stranger)

    def twice(pending: Sequence[HParams]) -> Iterator[Outcome]:
        yield Outcome(pending[0], "RuntimeError: x", 1.0, 2.0)
        yield Outcome(pending[0], "RuntimeError: x", 1.0, 2.0)

    with pytest.raises(RuntimeError, match="returned already"):
        run_grid(settings, [third], lambda r: None, twice)
