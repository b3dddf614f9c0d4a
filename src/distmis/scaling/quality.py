"""Time to quality: how soon a run's best validation Dice got within reach of its final best.

The makespan says when a run finished the whole grid; a tuner is done, in practice, once it
holds a model about as good as it will ever find. So each run's validations are merged into
one best-so-far curve: every point is a real validation, at the wall-clock time it ended,
of any of the run's trials, and the curve is the running maximum of ``val_dice`` over them
in time order, in seconds since the run's ``makespan_start``.

``time_to_best_seconds`` is the first time that curve comes within ``tolerance`` (absolute
Dice, config ``report.quality_tolerance``) of the run's final best, the curve's last value.
Early stopping (ASHA) shows here and not in the makespan alone: it ends poor trials sooner,
so the good ones start, and validate, earlier.

Time to best compares a run with itself, so two runs that end at different Dice cannot be
compared by it. ``time_to_target_seconds`` times every run of the study to one common bar,
the :class:`QualityTarget` (config ``report.quality_target``): the first time a run's curve
reaches that Dice, NaN if it never does. By default the bar is 0.95 times the best
validation Dice any run of the study reached (:func:`study_best`: the highest final best of
all the curves, every backend, mode and G), or an absolute Dice.

Points come from each trial's ``<run>/trials/<trial_id>/epochs.jsonl`` (one
:class:`~distmis.run_folder.EpochRecord` per validated epoch: ``{"format", "epoch", "time",
"val_dice", ...}``), read through :mod:`distmis.run_folder`. A retried attempt repeats epoch
numbers; each line is still a real validation at a real time, so all are kept. A trial that
failed before its first validation has no such file and gives no point.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from distmis.errors import ConfigError, ContractError
from distmis.run_folder import EPOCHS_FILE, read_epochs, rule_for, trial_folder
from distmis.scaling.timings import Run

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 0.01
# Dice is in [0, 1]: a gap this small is float rounding (0.8 - 0.01 is not 0.79), not a shortfall.
ROUNDING = 1e-9
SOURCE_EPOCHS = EPOCHS_FILE  # where a curve's points come from


@dataclass(frozen=True)
class Validation:
    """One validation of one trial: when it ended (seconds since makespan_start), its Dice."""

    seconds: float
    val_dice: float
    trial_id: str


@dataclass(frozen=True)
class QualityCurve:
    """A run's best validation Dice so far against time, and when it came within tolerance.

    ``seconds`` and ``best_dice`` are the steps of the curve (equal length, time-sorted,
    ``best_dice`` non-decreasing); both are empty for a run without a single validation.
    """

    backend: str
    mode_label: str
    series: tuple[str, ...]  # the run's series (timings.SERIES): one legend entry each
    gpus: int
    makespan_seconds: float
    seconds: tuple[float, ...]
    best_dice: tuple[float, ...]
    tolerance: float
    source: str  # epochs.jsonl

    @property
    def final_best(self) -> float:
        return self.best_dice[-1] if self.best_dice else math.nan

    @property
    def time_to_best_seconds(self) -> float:
        """First time the best so far is within ``tolerance`` of the final best (NaN: none)."""
        return time_to_best(self.seconds, self.best_dice, self.tolerance)

    def time_to_target_seconds(self, target_dice: float) -> float:
        """First time the best so far reaches ``target_dice`` (NaN: never, or no target)."""
        return time_to_target(self.seconds, self.best_dice, target_dice)

    @property
    def reached(self) -> tuple[float, float] | None:
        """The step at the time to best, (seconds, best Dice so far); None without steps."""
        if not self.best_dice:
            return None
        index = reached_index(self.best_dice, self.tolerance)
        return self.seconds[index], self.best_dice[index]


def check_tolerance(tolerance: Any) -> float:
    """``report.quality_tolerance`` as a float, or a ConfigError saying what it got."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
        raise ConfigError(f"report.quality_tolerance must be a number, got {tolerance!r}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ConfigError(f"report.quality_tolerance must be >= 0, got {tolerance}")
    return float(tolerance)


@dataclass(frozen=True)
class QualityTarget:
    """``report.quality_target``: the Dice every run is timed to; exactly one field is set.

    ``fraction_of_best``: that fraction of the study's best validation Dice; ``dice``: an
    absolute Dice. Either is in (0, 1].
    """

    fraction_of_best: float | None = None
    dice: float | None = None

    KEY: ClassVar[str] = "report.quality_target"
    SHAPE: ClassVar[str] = "{fraction_of_best: f} or {dice: d}, f and d in (0, 1]"

    def __post_init__(self) -> None:
        given = {
            k: v
            for k, v in (("fraction_of_best", self.fraction_of_best), ("dice", self.dice))
            if v is not None
        }
        if len(given) != 1:
            raise ConfigError(f"{self.KEY} must be {self.SHAPE}, got {given or 'neither'}")
        ((name, value),) = given.items()
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ConfigError(f"{self.KEY}.{name} must be a number in (0, 1], got {value!r}")

    @classmethod
    def from_config(cls, value: Mapping[str, Any]) -> QualityTarget:
        """The config's ``report.quality_target`` mapping, or a ConfigError naming the key."""
        if not isinstance(value, Mapping) or not set(value) <= {"fraction_of_best", "dice"}:
            raise ConfigError(f"{cls.KEY} must be {cls.SHAPE}, got {value!r}")
        return cls(**value)

    def dice_for(self, best: float) -> float:
        """The target Dice in a study whose best validation Dice is ``best`` (NaN: none)."""
        if self.dice is not None:
            return float(self.dice)
        return float(self.fraction_of_best) * best

    def describe(self) -> str:
        """The rule in words, e.g. "0.95 × the study's best validation Dice"."""
        if self.dice is not None:
            return f"validation Dice {self.dice:g}"
        return f"{self.fraction_of_best:g} × the study's best validation Dice"


DEFAULT_TARGET = QualityTarget(fraction_of_best=0.95)


def study_best(curves: Sequence[QualityCurve]) -> float:
    """The best validation Dice any of ``curves`` reached (NaN: none has a validation)."""
    finals = [curve.final_best for curve in curves if curve.best_dice]
    return max(finals) if finals else math.nan


def best_so_far(points: Sequence[Validation]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The running maximum of ``points``' Dice in time order, as (seconds, best) steps."""
    seconds: list[float] = []
    best: list[float] = []
    # Ties in time: the lower Dice first, so the curve never steps down at one instant.
    for point in sorted(points, key=lambda p: (p.seconds, p.val_dice)):
        seconds.append(point.seconds)
        best.append(max(point.val_dice, best[-1]) if best else point.val_dice)
    return tuple(seconds), tuple(best)


def reached_index(best: Sequence[float], tolerance: float) -> int:
    """The first index of a non-empty ``best`` within ``tolerance`` of its last value."""
    final = best[-1]
    # The last index always qualifies, so there is one.
    return next(i for i, value in enumerate(best) if final - value <= tolerance + ROUNDING)


def time_to_best(seconds: Sequence[float], best: Sequence[float], tolerance: float) -> float:
    """The first of ``seconds`` whose ``best`` is within ``tolerance`` of the last ``best``."""
    if len(seconds) != len(best):
        raise ValueError(f"{len(seconds)} times but {len(best)} Dice values")
    return seconds[reached_index(best, tolerance)] if best else math.nan


def time_to_target(seconds: Sequence[float], best: Sequence[float], target_dice: float) -> float:
    """The first of ``seconds`` whose ``best`` reaches ``target_dice``; NaN if none does (or
    the target is NaN): a run that never got there has no time, not a made-up one."""
    if len(seconds) != len(best):
        raise ValueError(f"{len(seconds)} times but {len(best)} Dice values")
    # ROUNDING: 0.95 × 0.8 is not exactly 0.76, and a run at 0.76 reached it.
    reached = (t for t, value in zip(seconds, best, strict=True) if value >= target_dice - ROUNDING)
    return next(reached, math.nan)


def read_validations(trial_dir: Path, trial_id: str, origin: float) -> list[Validation]:
    """The validations in one trial's ``epochs.jsonl`` (none without one); times relative to
    ``origin``.

    A line with a NaN Dice (a diverged model) is skipped: it can never be a best.
    """
    validations = []
    path = Path(trial_dir) / EPOCHS_FILE
    for number, epoch in enumerate(read_epochs(trial_dir), start=1):
        where = f"{path} line {number}"
        if not math.isfinite(epoch.time):
            raise ContractError(
                f"{where}: time must be finite, got {epoch.time}; rerun {rule_for(path)}"
            )
        if math.isnan(epoch.val_dice):
            log.warning("%s: val_dice is NaN (a diverged model?); not a point of the curve", where)
            continue
        validations.append(Validation(epoch.time - origin, epoch.val_dice, trial_id))
    return validations


def run_validations(run: Run) -> tuple[list[Validation], str]:
    """Every validation of ``run``'s trials, and where they came from (epochs.jsonl)."""
    origin = run.summary.makespan_start
    validations = [
        v
        for trial in run.trials
        for v in read_validations(
            trial_folder(run.directory, trial.trial_id), trial.trial_id, origin
        )
    ]
    return validations, SOURCE_EPOCHS


def quality_curve(run: Run, tolerance: float = DEFAULT_TOLERANCE) -> QualityCurve:
    """``run``'s best-so-far validation Dice curve (see the module docstring)."""
    tolerance = check_tolerance(tolerance)
    validations, source = run_validations(run)
    seconds, best = best_so_far(validations)
    return QualityCurve(
        backend=run.summary.backend,
        mode_label=run.summary.mode_label,
        series=run.series,
        gpus=run.gpus,
        makespan_seconds=run.summary.makespan_seconds,
        seconds=seconds,
        best_dice=best,
        tolerance=tolerance,
        source=source,
    )
