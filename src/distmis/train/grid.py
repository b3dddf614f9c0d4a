"""The grid skeleton every runner shares: skip what finished, train what is pending, record it.

The local runner and each Ray mode differ only in how they train the configurations that have
no record yet; everything around that is :func:`run_grid`'s:

1. **skip finished**: a configuration with a ``record.json`` (:func:`load_record`) from an
   earlier, interrupted run is kept as it is and not trained again (one log line each);
2. **train pending**: the mode's :class:`PendingTrainer` trains the others and yields one
   :class:`Outcome` per configuration, when it knows it (the local runner as each trial ends,
   data mode and Ray Tune after their run);
3. **record**: each outcome becomes the configuration's :class:`TrialRecord`
   (:func:`build_record` from the files the trial left), saved (:func:`save_record`, which
   marks it finished for a rerun) and handed to ``on_record`` (which rewrites trials.csv);
4. the records come back in grid order, finished and new alike.

In ``train/``, a new mode therefore writes only its trainer of pending configurations.
(Not :func:`distmis.trial.train_grid`: that is a data-mode worker's loop over the
configurations its Ray Train run was given, inside one data-mode trainer.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from distmis.hparams import HParams
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, build_record, load_record, save_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one pending configuration's training ended, as the driver saw it.

    ``error``: why it failed, or None (then its record comes from its ``result.json``, or from
    its ``failed.json`` when a worker recorded the failure itself). ``driver_start`` and
    ``driver_end`` (epoch seconds) time it when it left neither file. ``stopped``: a scheduler
    ended it early without an error (:func:`build_record`).
    """

    hparams: HParams
    error: str | None
    driver_start: float
    driver_end: float
    stopped: bool = False


class PendingTrainer(Protocol):
    """What a mode supplies: train ``pending`` (grid order, none finished) and yield one
    :class:`Outcome` per configuration, in any order, each as soon as it is known."""

    def __call__(self, pending: Sequence[HParams]) -> Iterable[Outcome]: ...


def run_grid(
    settings: TrainSettings,
    grid: Sequence[HParams],
    on_record: Callable[[TrialRecord], None],
    train_pending: PendingTrainer,
) -> list[TrialRecord]:
    """Every configuration of ``grid``'s record, in grid order: finished ones as recorded,
    the others trained by ``train_pending`` (not called when none is pending).

    ``on_record`` is called once per newly trained configuration, in the order the trainer
    yields them, after its record is saved. A trainer that yields a configuration it was not
    given, or one twice, or leaves one out, is a bug: RuntimeError naming the configurations.
    """
    records: dict[str, TrialRecord] = {}
    pending = []
    for position, hparams in enumerate(grid, start=1):
        done = load_record(settings, hparams.trial_id)
        if done is None:
            pending.append(hparams)
            continue
        log.info(
            "[%d/%d] %s already finished (%s); not retrained",
            position,
            len(grid),
            hparams.trial_id,
            done.status,
        )
        records[hparams.trial_id] = done
    if not pending:
        return [records[hp.trial_id] for hp in grid]
    pending_ids = {hp.trial_id for hp in pending}
    waiting = set(pending_ids)
    for outcome in train_pending(pending):
        trial_id = outcome.hparams.trial_id
        if trial_id not in waiting:
            why = "it returned already" if trial_id in pending_ids else "was not pending"
            raise RuntimeError(
                f"the trainer of pending configurations returned {trial_id}, which {why}"
            )
        waiting.discard(trial_id)
        record = build_record(
            settings,
            outcome.hparams,
            error=outcome.error,
            driver_start=outcome.driver_start,
            driver_end=outcome.driver_end,
            stopped=outcome.stopped,
        )
        save_record(settings, record)
        records[trial_id] = record
        on_record(record)
    if waiting:
        raise RuntimeError(
            f"the trainer of pending configurations returned nothing for {', '.join(sorted(waiting))}"
        )
    return [records[hp.trial_id] for hp in grid]
