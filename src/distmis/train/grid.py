"""The skeleton every runner shares: skip what finished, train what is pending, record it.

What a runner trains is a list of proposals (:class:`distmis.search.Proposal`: number,
hyperparameters, trial id): the grid's combinations or random search's samples, known before
training starts (:meth:`TrainSettings.configurations`). TPE proposes one configuration at a
time from the results told so far: the local runner's sequential loop is :func:`run_search`;
under Ray Tune (experiment, hybrid) Tune's searcher asks
(:func:`distmis.train.experiment_parallel.search_with_tune`), in data mode rank 0 of the one
worker group (:func:`distmis.train.data_parallel.search_in_one_group`); their records still
come from :func:`run_grid` or :func:`record_outcome`.

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
4. the records come back in proposal order, finished and new alike.

In ``train/``, a new mode therefore writes only its trainer of pending configurations.
(Not :func:`distmis.worker_group.train_grid`: that is a data-mode worker's loop over the
configurations its Ray Train run was given, inside one data-mode trainer.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from distmis.run_folder import STATUS_FAILED, STATUS_STOPPED
from distmis.search import Proposal, Search, epoch_steps
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, build_record, load_record, save_record, trial_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    """How one pending configuration's training ended, as the driver saw it.

    ``error``: why it failed, or None (then its record comes from its ``result.json``, or from
    its ``failed.json`` when a worker recorded the failure itself). ``driver_start`` and
    ``driver_end`` (epoch seconds) time it when it left neither file. ``stopped``: a scheduler
    ended it early without an error (:func:`build_record`).
    """

    proposal: Proposal
    error: str | None
    driver_start: float
    driver_end: float
    stopped: bool = False


class PendingTrainer(Protocol):
    """What a mode supplies: train ``pending`` (proposal order, none finished) and yield one
    :class:`Outcome` per configuration, in any order, each as soon as it is known."""

    def __call__(self, pending: Sequence[Proposal]) -> Iterable[Outcome]: ...


def run_grid(
    settings: TrainSettings,
    grid: Sequence[Proposal],
    on_record: Callable[[TrialRecord], None],
    train_pending: PendingTrainer,
) -> list[TrialRecord]:
    """Every proposal of ``grid``'s record, in its order: finished ones as recorded, the
    others trained by ``train_pending`` (not called when none is pending).

    ``on_record`` is called once per newly trained configuration, in the order the trainer
    yields them, after its record is saved. A trainer that yields a configuration it was not
    given, or one twice, or leaves one out, is a bug: RuntimeError naming the configurations.
    """
    records: dict[str, TrialRecord] = {}
    pending = []
    for position, proposal in enumerate(grid, start=1):
        done = load_record(settings, proposal.trial_id)
        if done is None:
            pending.append(proposal)
            continue
        log.info(
            "[%d/%d] %s already finished (%s); not retrained",
            position,
            len(grid),
            proposal.trial_id,
            done.status,
        )
        records[proposal.trial_id] = done
    if not pending:
        return [records[p.trial_id] for p in grid]
    pending_ids = {p.trial_id for p in pending}
    waiting = set(pending_ids)
    for outcome in train_pending(pending):
        trial_id = outcome.proposal.trial_id
        if trial_id not in waiting:
            why = "it returned already" if trial_id in pending_ids else "was not pending"
            raise RuntimeError(
                f"the trainer of pending configurations returned {trial_id}, which {why}"
            )
        waiting.discard(trial_id)
        records[trial_id] = record_outcome(settings, outcome, on_record)
    if waiting:
        raise RuntimeError(
            f"the trainer of pending configurations returned nothing for {', '.join(sorted(waiting))}"
        )
    return [records[p.trial_id] for p in grid]


def record_outcome(
    settings: TrainSettings, outcome: Outcome, on_record: Callable[[TrialRecord], None]
) -> TrialRecord:
    """``outcome``'s record, built from its trial's files, saved (a rerun skips it) and handed
    to ``on_record``."""
    record = build_record(
        settings,
        outcome.proposal,
        error=outcome.error,
        driver_start=outcome.driver_start,
        driver_end=outcome.driver_end,
        stopped=outcome.stopped,
    )
    save_record(settings, record)
    on_record(record)
    return record


def run_search(
    settings: TrainSettings,
    search: Search,
    on_record: Callable[[TrialRecord], None],
    train_one: Callable[[Proposal], Outcome],
) -> list[TrialRecord]:
    """TPE's sequential loop (the local runner): ask a configuration, train it
    (``train_one``), record it, tell the search how it ended (:func:`tell_record`), ask the
    next, until the budget is spent. Every record comes back, in proposal order.

    ``search`` was opened on the run's ``search.jsonl``: after a kill it has replayed what
    was proposed and told. A proposal asked but not told whose record is saved (the run died
    between the two) is told from its record, not trained again; one without a record is
    trained again (from its last checkpoint).
    """
    records = tell_recorded(settings, search)
    while (proposal := search.next_proposal()) is not None:
        log.info("[%d/%d] proposed %s", proposal.number + 1, search.budget, proposal.trial_id)
        record = record_outcome(settings, train_one(proposal), on_record)
        records[proposal.number] = record
        tell_record(settings, search, proposal, record)
    return [records[number] for number in sorted(records)]


def tell_recorded(settings: TrainSettings, search: Search) -> dict[int, TrialRecord]:
    """The saved record of every proposal ``search`` asked that has one, by number; each
    still open (the run died between saving its record and telling it) is told from it."""
    records: dict[int, TrialRecord] = {}
    for proposal in search.asked:
        done = load_record(settings, proposal.trial_id)
        if done is None:
            continue
        records[proposal.number] = done
        if search.is_open(proposal.number):
            tell_record(settings, search, proposal, done)
    return records


def tell_record(
    settings: TrainSettings, search: Search, proposal: Proposal, record: TrialRecord
) -> None:
    """Tell ``search`` how ``proposal`` ended, from its record: ``COMPLETE`` with its final
    validation Dice, ``PRUNED`` when stopped early, ``FAIL`` when it failed; the validation
    Dice of every epoch it validated are its steps."""
    steps = epoch_steps(trial_dir(settings, proposal.trial_id))
    state = {STATUS_FAILED: "FAIL", STATUS_STOPPED: "PRUNED"}.get(record.status, "COMPLETE")
    value = None if state == "FAIL" else record.val_dice
    search.tell(proposal.number, value, state, steps)
