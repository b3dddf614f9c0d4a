"""Time to quality: best validation Dice so far from the trials' epochs.jsonl."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest

from distmis.errors import ConfigError, ContractError
from distmis.run_folder import EpochRecord
from distmis.scaling.quality import (
    DEFAULT_TARGET,
    SOURCE_EPOCHS,
    QualityTarget,
    Validation,
    best_so_far,
    quality_curve,
    study_best,
    time_to_best,
    time_to_target,
)
from distmis.scaling.timings import Run
from tests.scaling.helpers import (
    START,
    trial_row,
    write_epochs,
    write_run,
)


def two_trial_run(tmp_path: Path) -> Path:
    """Points (10 s, 0.5), (20 s, 0.79), (30 s, 0.8) spread over two trials, with noise."""
    rows = [trial_row("a", START + 1, START + 31), trial_row("b", START + 2, START + 25)]
    run = write_run(tmp_path, "experiment", 2, 40.0, rows)
    write_epochs(run, "a", [(1, 10.0, 0.5), (2, 30.0, 0.8)])
    write_epochs(run, "b", [(1, 15.0, 0.3), (2, 20.0, 0.79), (3, 25.0, 0.6)])
    return run


def test_time_to_best_hand_computed(tmp_path: Path):
    run = Run.from_dir(two_trial_run(tmp_path))
    curve = quality_curve(run, tolerance=0.01)
    assert curve.source == SOURCE_EPOCHS
    assert curve.seconds == (10.0, 15.0, 20.0, 25.0, 30.0)  # since makespan_start
    assert curve.best_dice == (0.5, 0.5, 0.79, 0.79, 0.8)
    assert curve.final_best == 0.8
    # 0.79 is within 0.01 of 0.8 (float rounding of 0.8 - 0.01 must not hide it).
    assert curve.time_to_best_seconds == 20.0
    assert curve.reached == (20.0, 0.79)
    assert quality_curve(run, tolerance=0).time_to_best_seconds == 30.0
    assert quality_curve(run, tolerance=0.5).time_to_best_seconds == 10.0


def test_best_so_far_and_time_to_best_pure():
    points = [Validation(30.0, 0.8, "a"), Validation(10.0, 0.5, "a"), Validation(20.0, 0.79, "b")]
    seconds, best = best_so_far(points)
    assert (seconds, best) == ((10.0, 20.0, 30.0), (0.5, 0.79, 0.8))
    assert time_to_best(seconds, best, 0.01) == 20.0
    assert time_to_best(seconds, best, 0.0) == 30.0
    assert math.isnan(time_to_best((), (), 0.01))
    # Two validations at one instant: the curve does not step down between them.
    assert best_so_far([Validation(5.0, 0.7, "a"), Validation(5.0, 0.2, "b")])[1] == (0.2, 0.7)


def test_retried_attempts_keep_every_validation(tmp_path: Path):
    run = write_run(tmp_path, "data", 1, 50.0, [trial_row("a", START, START + 48)])
    write_epochs(run, "a", [(1, 5.0, 0.4), (2, 10.0, 0.6)])  # first attempt, then a crash
    write_epochs(run, "a", [(1, 20.0, 0.45), (2, 30.0, 0.62), (3, 40.0, 0.7)])  # the retry
    curve = quality_curve(Run.from_dir(run), tolerance=0.05)
    assert curve.seconds == (5.0, 10.0, 20.0, 30.0, 40.0)  # epochs 1 and 2 twice each
    assert curve.best_dice == (0.4, 0.6, 0.6, 0.62, 0.7)
    assert curve.time_to_best_seconds == 40.0  # 0.62 is 0.08 short of 0.7


def test_a_run_whose_trials_never_validated_has_no_point(tmp_path: Path):
    """No epochs.jsonl anywhere is a run whose every trial failed first, not an older run
    to be read some other way (an older run's files are refused by format)."""
    rows = [
        trial_row("a", START + 1, START + 30, val_dice=0.6),
        trial_row("c", START + 3, START + 5, status="failed"),
    ]
    run = write_run(tmp_path, "experiment", 2, 40.0, rows)
    curve = quality_curve(Run.from_dir(run), tolerance=0.01)
    assert (curve.source, curve.seconds, curve.best_dice) == (SOURCE_EPOCHS, (), ())


def test_a_trial_that_failed_before_validating_does_not_mean_old_results(tmp_path: Path):
    rows = [trial_row("a", START, START + 20), trial_row("x", START, START + 1, status="failed")]
    run = write_run(tmp_path, "experiment", 2, 25.0, rows)
    write_epochs(run, "a", [(1, 10.0, 0.3)])  # x never validated: it has no epochs.jsonl
    curve = quality_curve(Run.from_dir(run))
    assert (curve.source, curve.seconds) == (SOURCE_EPOCHS, (10.0,))


def test_run_without_any_validation(tmp_path: Path):
    rows = [trial_row("a", START, START + 1, status="failed")]
    run = write_run(tmp_path, "data", 1, 5.0, rows, best_val_dice=None)
    curve = quality_curve(Run.from_dir(run))
    assert curve.seconds == () and math.isnan(curve.time_to_best_seconds)
    assert curve.reached is None


def epoch_line(**changes) -> str:
    """An epochs.jsonl line of the contract's format, with ``changes`` (None deletes a key)."""
    line = {
        "format": EpochRecord.FORMAT,
        "epoch": 2,
        "time": 1010.0,
        "started": 1009.0,
        "train_seconds": 0.75,
        "val_seconds": 0.25,
        "val_dice": 0.5,
        **changes,
    }
    return json.dumps({k: v for k, v in line.items() if v is not None or k not in changes})


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2 is not valid JSON"),
        ("[1, 2, 3]", "line 2: expected a JSON object"),
        (
            '{"epoch": 2, "time": 1010.0, "val_dice": 0.5}',
            "line 2: no format: written before distmis-trial-epoch/1",
        ),
        (epoch_line(format="distmis-trial-epoch/2"), "line 2: format 'distmis-trial-epoch/2'"),
        (epoch_line(val_dice=None), r"line 2: missing \['val_dice'\]"),
        (epoch_line(epoch=0), "line 2: epoch must be an integer >= 1"),
        (epoch_line(time="later"), "line 2: time must be float, got 'later'"),
        (epoch_line(loss=None, val_dice="x"), "line 2: val_dice must be float, got 'x'"),
    ],
)
def test_malformed_epochs_line_names_file_and_line(tmp_path: Path, line: str, message: str):
    run = write_run(tmp_path, "experiment", 1, 20.0, [trial_row("a", START, START + 15)])
    path = write_epochs(run, "a", [(1, 5.0, 0.4)])
    with path.open("a") as fh:
        fh.write(line + "\n")
    with pytest.raises(ContractError, match=message) as err:
        quality_curve(Run.from_dir(run))
    assert str(path) in str(err.value)
    assert "rerun train_experiment_parallel" in str(err.value)


def test_nan_dice_is_skipped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    run = write_run(tmp_path, "experiment", 1, 20.0, [trial_row("a", START, START + 15)])
    write_epochs(run, "a", [(1, 5.0, 0.4), (2, 10.0, math.nan), (3, 15.0, 0.5)])
    with caplog.at_level(logging.WARNING):
        curve = quality_curve(Run.from_dir(run))
    assert curve.best_dice == (0.4, 0.5)
    assert "epochs.jsonl line 2: val_dice is NaN" in caplog.text


def test_stopped_trials_validations_count(tmp_path: Path):
    rows = [
        trial_row("long", START, START + 30, val_dice=0.7),
        trial_row("cut", START, START + 8, status="stopped", val_dice=0.75),
    ]
    run = write_run(tmp_path, "hybrid", 4, 35.0, rows, gpus_per_trial=2, scheduler="asha")
    write_epochs(run, "cut", [(1, 8.0, 0.75)])  # an early lucky epoch, then ASHA stopped it
    write_epochs(run, "long", [(1, 10.0, 0.5), (2, 20.0, 0.6), (3, 30.0, 0.7)])
    curve = quality_curve(Run.from_dir(run), tolerance=0.01)
    assert (curve.mode_label, curve.time_to_best_seconds) == ("hybrid2", 8.0)


@pytest.mark.parametrize("tolerance", [-0.01, math.nan, "0.01", True])
def test_tolerance_must_be_a_number_at_least_zero(tmp_path: Path, tolerance):
    run = Run.from_dir(write_run(tmp_path, "data", 1, 5.0))
    with pytest.raises(ConfigError, match="report.quality_tolerance must be"):
        quality_curve(run, tolerance)


def test_time_to_target_pure():
    seconds, best = (10.0, 20.0, 30.0), (0.5, 0.79, 0.8)
    assert time_to_target(seconds, best, 0.79) == 20.0  # reaching it counts
    assert time_to_target(seconds, best, 0.5) == 10.0
    assert time_to_target(seconds, best, 0.95 * 0.8) == 20.0  # 0.7600000000000001 <= 0.79
    # 0.95 × 0.8 is not exactly 0.76: a run at 0.76 reached it all the same.
    assert time_to_target((5.0,), (0.76,), 0.95 * 0.8) == 5.0
    assert math.isnan(time_to_target(seconds, best, 0.81))  # never reached: no time
    assert math.isnan(time_to_target(seconds, best, math.nan))  # no target
    assert math.isnan(time_to_target((), (), 0.5))
    with pytest.raises(ValueError, match="3 times but 2 Dice values"):
        time_to_target(seconds, best[:2], 0.5)


def test_time_to_target_on_a_run_curve(tmp_path: Path):
    run = Run.from_dir(two_trial_run(tmp_path))
    curve = quality_curve(run, tolerance=0.01)
    # Steps (10, 0.5), (15, 0.5), (20, 0.79), (25, 0.79), (30, 0.8): the same curve as time
    # to best, read against a bar of its own rather than the run's final best.
    assert curve.time_to_target_seconds(0.6) == 20.0
    assert curve.time_to_target_seconds(0.8) == 30.0
    assert math.isnan(curve.time_to_target_seconds(0.85))
    # The study's best is the highest final best of its curves; none with no validation.
    assert study_best([curve]) == 0.8
    assert math.isnan(study_best([]))


def test_quality_target_resolves_against_the_study_best():
    assert QualityTarget(fraction_of_best=0.95) == DEFAULT_TARGET
    assert QualityTarget.from_config({"fraction_of_best": 0.5}).dice_for(0.8) == 0.4
    assert QualityTarget.from_config({"dice": 0.7}).dice_for(0.8) == 0.7
    assert math.isnan(DEFAULT_TARGET.dice_for(math.nan))  # no validation anywhere: no target
    assert DEFAULT_TARGET.describe() == "0.95 × the study's best validation Dice"
    assert QualityTarget(dice=0.7).describe() == "validation Dice 0.7"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({}, r"report\.quality_target must be \{fraction_of_best: f\} or \{dice: d\}"),
        ({"fraction_of_best": 0.9, "dice": 0.8}, r"report\.quality_target must be"),
        ({"fraction": 0.9}, r"report\.quality_target must be"),
        (0.95, r"report\.quality_target must be .*got 0\.95"),
        ({"fraction_of_best": 1.5}, r"report\.quality_target\.fraction_of_best .*got 1\.5"),
        ({"fraction_of_best": 0}, r"report\.quality_target\.fraction_of_best"),
        ({"dice": math.nan}, r"report\.quality_target\.dice must be a number in \(0, 1\]"),
        ({"dice": "0.8"}, r"report\.quality_target\.dice .*got '0\.8'"),
        ({"dice": True}, r"report\.quality_target\.dice"),
    ],
)
def test_quality_target_must_be_one_fraction_or_one_dice(value, message):
    with pytest.raises(ConfigError, match=message):
        QualityTarget.from_config(value)
