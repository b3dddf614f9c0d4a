"""ASHA's stopping rule for configurations trained one after another (data mode's early
stopping).

Experiment mode stops configurations with Ray Tune's ``ASHAScheduler`` (one bracket). Data
mode trains its grid one configuration at a time inside one Ray Train worker group, where no
Tune scheduler runs, so :class:`SequentialASHA` applies the same rule itself, exactly as Ray
2.x's ``_Bracket.on_result`` and ``AsyncHyperBandScheduler.on_trial_result`` do
(``ray/tune/schedulers/async_hyperband.py``), so that data mode stops what experiment mode's
ASHA would, given the results in the same order:

- rungs sit at ``grace_period × reduction_factor**k`` epochs, k = 0, 1, ... up to ``max_t``
  (the configuration's epochs);
- when a configuration first reaches a rung (an epoch at or past it that it has no value
  recorded at yet), it stops iff its value is below the ``(1 - 1/reduction_factor) × 100``-th
  ``numpy.nanpercentile`` of the values recorded there *before* it (no earlier value: it goes
  on); its value is recorded there afterwards, also when it stops;
- a configuration that reaches ``max_t`` ends (it trained every epoch; not "stopped");
- values are validation Dice, larger is better. A NaN value never stops (``NaN < x`` is
  false) and is ignored by later cutoffs, as in Ray.

Unlike Optuna's SuccessiveHalvingPruner, a rung with few values does not stop on rank alone:
with 0.197 and 0.118 recorded at a rung (factor 2: cutoff their median 0.1575), 0.177 goes on.

The state is rebuilt, never stored: :meth:`SequentialASHA.replay` feeds it the validated
epochs of every configuration of the grid (``epochs.jsonl``, :mod:`distmis.run_folder`),
configuration by configuration in the order they first validated an epoch (the order a
data-mode group trained them), each configuration's epochs in the order written. A resumed
run (Ray restarted the group, or the job was killed and run again) therefore decides as the
uninterrupted one did: an epoch retrained after a restart meets its own first value at the
rung and goes on, and a configuration whose last epoch line was a stop is stopped.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distmis.run_folder import read_epochs


@dataclass(frozen=True)
class AshaRule:
    """ASHA's parameters as experiment mode's ``ASHAScheduler`` gets them: ``max_t`` the
    configuration's epochs, ``grace_period`` at most that (:meth:`for_epochs`)."""

    max_t: int
    grace_period: int
    reduction_factor: int

    def __post_init__(self) -> None:
        if self.max_t < 1 or not 1 <= self.grace_period <= self.max_t:
            raise ValueError(
                f"ASHA needs 1 <= grace_period <= max_t, got {self.grace_period}, {self.max_t}"
            )
        if self.reduction_factor < 2:
            raise ValueError(f"ASHA needs reduction_factor >= 2, got {self.reduction_factor}")

    @classmethod
    def for_epochs(cls, epochs: int, grace_period: int, reduction_factor: int) -> AshaRule:
        """The rule of a run of ``epochs`` epochs (grace period capped at them, as
        experiment mode caps it)."""
        return cls(epochs, min(grace_period, epochs), reduction_factor)

    @property
    def milestones(self) -> list[int]:
        """The rungs' epochs, highest first (Ray's ``_Bracket._rungs`` order)."""
        # Ray's own arithmetic (numpy's log), so a float edge falls the same way.
        count = int(np.log(self.max_t / self.grace_period) / np.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor**k for k in reversed(range(count))]

    def to_dict(self) -> dict[str, int]:
        return {
            "max_t": self.max_t,
            "grace_period": self.grace_period,
            "reduction_factor": self.reduction_factor,
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> AshaRule:
        return cls(payload["max_t"], payload["grace_period"], payload["reduction_factor"])


class SequentialASHA:
    """The rungs' bookkeeping of one grid (module docstring): :meth:`on_result` per validated
    epoch; ``stopped`` maps each configuration it stopped to the epoch it stopped after."""

    def __init__(self, rule: AshaRule) -> None:
        self.rule = rule
        # rung epoch -> {configuration: value}, in the order recorded
        self.rungs: dict[int, dict[str, float]] = {m: {} for m in rule.milestones}
        self.stopped: dict[str, int] = {}

    def cutoff(self, milestone: int) -> float | None:
        """The value a configuration reaching ``milestone`` now must not fall below."""
        recorded = self.rungs[milestone]
        if not recorded:
            return None
        with warnings.catch_warnings():  # every value NaN: NaN, which stops nothing
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(
                np.nanpercentile(
                    list(recorded.values()), (1 - 1 / self.rule.reduction_factor) * 100
                )
            )

    def on_result(self, trial_id: str, epoch: int, value: float) -> bool:
        """Whether ``trial_id`` stops after validating its ``epoch`` (1-based) at ``value``.

        Reaching ``max_t`` is the end of its training, not a stop: False, nothing recorded.
        """
        if epoch >= self.rule.max_t:
            return False
        for milestone in self.rungs:  # highest first
            recorded = self.rungs[milestone]
            if epoch < milestone or trial_id in recorded:
                continue
            cutoff = self.cutoff(milestone)
            recorded[trial_id] = value
            if cutoff is not None and value < cutoff:
                self.stopped[trial_id] = epoch
                return True
            return False
        return False

    @classmethod
    def replay(
        cls, rule: AshaRule, histories: Iterable[tuple[str, Sequence[tuple[int, float]]]]
    ) -> SequentialASHA:
        """The state after the configurations' ``(epoch, value)`` histories, fed one
        configuration after another in the order given. A history's epochs after a stop
        are not fed (there are none in a run that obeyed it)."""
        asha = cls(rule)
        for trial_id, history in histories:
            for epoch, value in history:
                if asha.on_result(trial_id, epoch, value):
                    break
        return asha

    @classmethod
    def from_trial_folders(cls, rule: AshaRule, folders: Mapping[str, Path]) -> SequentialASHA:
        """The state a grid's trial folders (trial id -> folder, grid order) hold: their
        ``epochs.jsonl`` replayed in the order the configurations first validated an epoch
        (its ``time``; grid order between equals). Folders without epochs add nothing."""
        started = []
        for position, (trial_id, folder) in enumerate(folders.items()):
            epochs = read_epochs(folder)
            if epochs:
                history = [(record.epoch, record.val_dice) for record in epochs]
                started.append((epochs[0].time, position, trial_id, history))
        started.sort(key=lambda entry: entry[:2])
        return cls.replay(rule, [(trial_id, history) for _, _, trial_id, history in started])
