"""TPE under Ray Tune: experiment and hybrid mode's search (issue 27).

Tune asks its searcher for a configuration whenever a slot is free (at most
``settings.concurrent_trials`` training at once, a ``ConcurrencyLimiter``), so results arrive
while proposals are still being asked: the "several at once, not reproducible" row of
docs/explanation/search.md. The searcher is Ray's ``OptunaSearch`` with the very sampler the
local runner's :class:`distmis.search.TPESearcher` builds (``TPESampler(seed,
n_startup_trials, multivariate=True, constant_liar=True)``, the space as Optuna
distributions), numbered (:class:`NumberedOptunaSearch`):

- **trial ids**: each suggestion gets the next proposal number, in the order Tune asks (the
  order it creates trials), and is handed to the trainable as a whole trial entry
  (``settings.grid_entry``: ``trial_id`` ``s###_<values>``, hyperparameters, effective
  learning rate), exactly what a grid entry carries, so the trainables are unchanged. The
  counter lives in the searcher, which Tune saves with its experiment state and restores with
  it: numbers are unique and stay the same across a ``Tuner.restore``, and a restored
  unfinished trial keeps its config, number included.
- **record**: every suggestion is appended to ``search.jsonl`` as an ``ask`` before the trial
  can start, every end as a ``tell`` (``COMPLETE``, ``PRUNED`` when stopped before its last
  epoch, ``FAIL``), as :class:`distmis.search.Search` writes them. Tune's own state, not the
  record, resumes the search: the record is what was proposed, for people and tests.
- **records**: once Tune's run ends, each trial's record comes from its files
  (:func:`distmis.train.grid.record_outcome`), in proposal order; one recorded by an earlier,
  interrupted run is kept as it is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from distmis.hparams import HParams
from distmis.run_folder import (
    SearchEvent,
    append_search_event,
    read_search_events,
    rewrite_search_events,
)
from distmis.search import Proposal, optuna_space, tpe_sampler
from distmis.train.settings import TrainSettings

log = logging.getLogger(__name__)

METRIC = "val_dice"


class NumberedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` whose suggestions are numbered trial entries, recorded in the run's
    ``search.jsonl`` (module docstring). Its whole ``__dict__`` (the Optuna study, the
    counter, Tune trial id → number) is what ``OptunaSearch.save`` pickles into Tune's
    experiment state."""

    def __init__(self, settings: TrainSettings) -> None:
        search = settings.search
        sampler = tpe_sampler(search.seed, search.startup_trials)
        space = optuna_space(settings.search_space)
        super().__init__(space=space, metric=METRIC, mode="max", sampler=sampler)
        self._settings = settings
        self._numbers: dict[str, int] = {}  # Tune's trial id -> proposal number
        self._steps: dict[str, dict[int, float]] = {}  # Tune's trial id -> epoch -> Dice
        self._next_number = 0

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if not isinstance(params, dict):
            return params  # None (wait) or Searcher.FINISHED
        if trial_id not in self._numbers:
            self._numbers[trial_id] = self._next_number
            self._next_number += 1
        proposal = Proposal(
            self._numbers[trial_id],
            HParams.from_dict(params),
            sampled=True,
            proposed_time=time.time(),
        )
        record_ask(self._settings, proposal)
        return {
            "trial": self._settings.grid_entry(proposal),
            "proposal": {"number": proposal.number, "proposed_time": proposal.proposed_time},
        }

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, result)
        if "epoch" in result and METRIC in result:
            self._steps.setdefault(trial_id, {})[int(result["epoch"])] = float(result[METRIC])

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        """Tell Optuna and the record how the trial ended, by the local runner's rule
        (:func:`distmis.train.grid.tell_record`): ``FAIL`` on an error or a value that is not
        finite, ``PRUNED`` when it stopped before its last epoch (Optuna takes its last
        reported step), else ``COMPLETE`` with its validation Dice."""
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        value = None if not result else result.get(METRIC)
        epoch = 0 if not result else int(result.get("epoch", 0))
        if error or value is None or not math.isfinite(value):
            state, value = "FAIL", None
        elif epoch < self._settings.epochs:
            state = "PRUNED"
        else:
            state = "COMPLETE"
        try:
            self._ot_study.tell(
                self._ot_trials[trial_id],
                value if state == "COMPLETE" else None,
                state=TrialState[state],
            )
        except Exception as exc:  # noqa: BLE001 - as OptunaSearch: a bad tell must not end the run
            log.warning("Optuna refused the tell of %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
        number = self._numbers[trial_id]
        steps = self._steps.pop(trial_id, {})
        recorded = read_search_events(self._settings.out_dir)
        if any(e.event == "tell" and e.number == number for e in recorded):
            # Told before the driver died, after Tune's last save of this searcher: the
            # restored one tells Optuna again (its study lost the tell), the record keeps one.
            log.info("search.jsonl: proposal %d was told before the restore", number)
            return
        append_search_event(
            self._settings.out_dir,
            SearchEvent.tell(number, None if state == "FAIL" else value, state, steps),
        )


def record_ask(settings: TrainSettings, proposal: Proposal) -> None:
    """Append ``proposal``'s ask to ``search.jsonl``. A recorded ask of the same number that
    was never told came from a suggestion Tune had not saved when the driver died (the
    restored searcher asks that number again): it never trained, so the new ask replaces it
    (the file rewritten whole) rather than standing beside it."""
    events = read_search_events(settings.out_dir)
    stale = [e for e in events if e.event == "ask" and e.number == proposal.number]
    assert proposal.proposed_time is not None, "suggest stamps it"
    ask = SearchEvent.ask(proposal.number, proposal.hparams.to_dict(), proposal.proposed_time)
    if not stale:
        append_search_event(settings.out_dir, ask)
        return
    log.info("search.jsonl: proposal %d asked again after a restore", proposal.number)
    kept = [e for e in events if not (e.event == "ask" and e.number == proposal.number)]
    rewrite_search_events(settings.out_dir, [*kept, ask])


def tpe_search_alg(settings: TrainSettings) -> Searcher:
    """The numbered TPE searcher, at most ``settings.concurrent_trials`` trials at once."""
    from ray.tune.search import ConcurrencyLimiter

    return ConcurrencyLimiter(
        NumberedOptunaSearch(settings), max_concurrent=settings.concurrent_trials
    )


def proposal_of(config: Mapping[str, Any]) -> Proposal:
    """The proposal a Tune trial's config carries (what :meth:`NumberedOptunaSearch.suggest`
    put there)."""
    numbered = config["proposal"]
    return Proposal(
        numbered["number"],
        HParams.from_dict(config["trial"]["hparams"]),
        sampled=True,
        proposed_time=numbered["proposed_time"],
    )


@contextlib.contextmanager
def checkpoint_every_step() -> Iterator[None]:
    """Tune saves its experiment state, the searcher included, at most every
    ``TUNE_GLOBAL_CHECKPOINT_S`` seconds (default "auto", about 10 s). A driver SIGKILLed in
    between would restore a searcher that forgot its last suggestions while their trials
    (and asks in search.jsonl) exist; "0" saves after every step of Tune's loop, which costs
    little at a handful of trials. Read by Tune's controller when ``fit`` starts; set for this
    process only while the search runs."""
    previous = os.environ.get("TUNE_GLOBAL_CHECKPOINT_S")
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = "0"
    try:
        yield
    finally:
        if previous is None:
            del os.environ["TUNE_GLOBAL_CHECKPOINT_S"]
        else:
            os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = previous
