"""Proposing configurations: the grid, random search and TPE behind one interface.

``train.search.algorithm`` picks the :class:`Searcher` (:func:`searcher`):

- ``grid``: every combination of the ``train.search_space`` lists, in table order
  (:func:`distmis.hparams.expand_grid`); the paper's search and the default.
- ``random``: ``train.search.samples`` configurations, each hyperparameter drawn in table order
  from its domain (a list is a uniform choice among its values) with one numpy Generator
  seeded by ``train.search.seed``: the same seed and space give the same configurations,
  whatever finishes first.
- ``tpe``: Optuna's ask/tell with ``TPESampler(seed, n_startup_trials, multivariate=True,
  constant_liar=True)``: after ``train.search.startup_trials`` random proposals, each new one
  is drawn where the results told so far (validation Dice, maximised) were good. Told in the
  same order, it proposes the same configurations; with several configurations training at
  once the order of the tells depends on which finishes first, so it is not reproducible.

:class:`Search` wraps a searcher with its record, the run folder's ``search.jsonl``
(:class:`distmis.run_folder.SearchEvent`): each proposal (``ask``) is written before it trains
and each result (``tell``) as it arrives. Resuming re-creates the seeded searcher and replays the
record in order, asking again (each answer must equal the recorded one: a changed seed, space
or Optuna release stops the run instead of silently searching another sequence) and telling
again. Replaying asks rebuilds the sampler's random state, which re-adding finished trials to a
fresh study does not (the spike of issue 27 measured both). A proposal asked but never told was
training when the run died: it is :attr:`Search.pending` and trains again.

Imports only :mod:`distmis.hparams`, :mod:`distmis.run_folder` and :mod:`distmis.errors`
(numpy and Optuna when a searcher needs them), so :mod:`distmis.trial` and
:mod:`distmis.train` may both import it.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distmis.errors import ConfigError, ContractError
from distmis.hparams import HParams, distribution_keys, expand_grid, parse_space
from distmis.run_folder import (
    SEARCH_FILE,
    SEARCH_STATES,
    SearchEvent,
    append_search_event,
    read_epochs,
    read_search_events,
    rule_for,
)

log = logging.getLogger(__name__)

ALGORITHMS = ("grid", "random", "tpe")
# Optuna's own default: random proposals before TPE models the results.
DEFAULT_STARTUP_TRIALS = 10


@dataclass(frozen=True)
class SearchSettings:
    """``train.search``, checked against ``train.search_space`` (:meth:`check`).

    ``samples``: configurations random search or TPE proposes (None for the grid, which
    trains every combination); ``seed``: ``train.search.seed``, or ``train.seed`` when that is
    null; ``startup_trials``: TPE's random proposals before it models the results.
    """

    algorithm: str = "grid"
    samples: int | None = None
    seed: int = 0
    startup_trials: int = DEFAULT_STARTUP_TRIALS

    @classmethod
    def from_config(cls, train: Mapping[str, Any]) -> SearchSettings:
        """From the schema-validated ``train`` section; ConfigError naming the key for a
        combination the schema cannot refuse (:meth:`check`)."""
        search = train["search"]
        settings = cls(
            algorithm=search["algorithm"],
            samples=search["samples"],
            seed=train["seed"] if search["seed"] is None else search["seed"],
            startup_trials=search["startup_trials"],
        )
        settings.check(train["search_space"])
        return settings

    def check(self, search_space: Mapping[str, Any]) -> None:
        """ConfigError, naming the ``train.`` key, for a space or a budget the algorithm cannot
        search: a distribution under the grid, a missing or needless ``samples``, TPE without a
        proposal after its random start, or a domain the hyperparameter cannot take."""
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(
                f"train.search.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}"
            )
        try:
            domains = parse_space(search_space)
        except ValueError as exc:
            raise ConfigError(f"train.{exc}") from None
        if self.algorithm == "grid":
            for name, key in distribution_keys(domains).items():
                raise ConfigError(
                    f"train.search_space.{name}: a distribution ({{{key}: ...}}) needs "
                    "train.search.algorithm random or tpe (the grid takes lists of values)"
                )
            if self.samples is not None:
                raise ConfigError(
                    f"train.search.samples: the grid trains every combination "
                    f"({len(expand_grid(search_space))} here); samples ({self.samples}) is for "
                    "random or tpe: remove it"
                )
            return
        if self.samples is None:
            raise ConfigError(
                f"train.search.samples: {self.algorithm} search needs the number of "
                "configurations to propose (an integer >= 1)"
            )
        if self.algorithm == "tpe" and self.startup_trials >= self.samples:
            raise ConfigError(
                f"train.search.startup_trials: {self.startup_trials} random proposals leave "
                f"none of the {self.samples} samples to TPE; lower it below train.search.samples "
                "or use train.search.algorithm random"
            )


def sampled_trial_id(number: int, hparams: HParams) -> str:
    """A sampled configuration's trial id: its proposal number, then the readable values
    (``s007_lr=0.00123457_norm=batch_beta2=0.999_amsgrad=1``). The values print 6
    significant digits, so two samples may read alike; the number keeps them apart."""
    return f"s{number:03d}_{hparams.trial_id}"


@dataclass(frozen=True)
class Proposal:
    """Configuration ``number`` (0-based, in the order proposed) of a search. ``sampled``:
    drawn by random search or TPE (its trial id carries the number), not a grid point (whose id
    is exactly :attr:`HParams.trial_id`, what results folders have always been named by).

    ``proposed_time``: when it was handed out (epoch seconds; trials.csv's ``proposed_time``).
    A proposal replayed from ``search.jsonl`` keeps the time its ask was recorded at. It is
    not part of a proposal's identity: the same seed proposes equal proposals."""

    number: int
    hparams: HParams
    sampled: bool
    proposed_time: float | None = field(default=None, compare=False)

    @property
    def trial_id(self) -> str:
        return (
            sampled_trial_id(self.number, self.hparams) if self.sampled else self.hparams.trial_id
        )


class Searcher(ABC):
    """Proposes configurations one at a time (:meth:`ask`, None once ``budget`` are out) and
    learns from their results (:meth:`tell`: validation Dice, higher is better). Proposal
    numbers count from 0 in ask order."""

    budget: int

    def __init__(self) -> None:
        self._asked = 0

    def ask(self) -> Proposal | None:
        if self._asked >= self.budget:
            return None
        proposal = replace(self._propose(self._asked), proposed_time=time.time())
        self._asked += 1
        return proposal

    @abstractmethod
    def _propose(self, number: int) -> Proposal: ...

    def tell(
        self,
        number: int,
        value: float | None,
        state: str,
        steps: Mapping[int, float] | None = None,
    ) -> None:
        """Proposal ``number`` ended in ``state`` (:data:`SEARCH_STATES`) with ``value`` and
        the value of each reported epoch (``steps``). Only TPE learns from it."""
        return None  # the grid and random search propose regardless of results


class GridSearcher(Searcher):
    """The grid's combinations in table order (last hyperparameter fastest)."""

    def __init__(self, search_space: Mapping[str, Any]) -> None:
        super().__init__()
        self._grid = expand_grid(search_space)
        self.budget = len(self._grid)

    def _propose(self, number: int) -> Proposal:
        return Proposal(number, self._grid[number], sampled=False)


class RandomSearcher(Searcher):
    """``samples`` configurations, each hyperparameter drawn in table order from one numpy
    Generator seeded with ``seed``. Draws are independent: a space of lists only may propose a
    configuration twice (each has its own trial id)."""

    def __init__(self, search_space: Mapping[str, Any], samples: int, seed: int) -> None:
        import numpy as np

        super().__init__()
        self._domains = parse_space(search_space)
        self._rng = np.random.default_rng(seed)
        self.budget = samples

    def _propose(self, number: int) -> Proposal:
        values = {name: domain.sample(self._rng) for name, domain in self._domains.items()}
        return Proposal(number, HParams.from_dict(values), sampled=True)


class TPESearcher(Searcher):
    """Optuna's TPE through ask/tell on an in-memory study that maximises validation Dice.

    The sampler is passed explicitly, so no Optuna default decides it: ``multivariate`` models
    the hyperparameters jointly and ``constant_liar`` counts a proposal still training as a
    poor result, so configurations training at once are not proposed alike.
    """

    def __init__(
        self, search_space: Mapping[str, Any], samples: int, seed: int, startup_trials: int
    ) -> None:
        import optuna

        super().__init__()
        self._distributions = optuna_space(search_space)
        self._study = optuna.create_study(
            direction="maximize", sampler=tpe_sampler(seed, startup_trials)
        )
        self._trials: dict[int, Any] = {}
        self.budget = samples

    def _propose(self, number: int) -> Proposal:
        trial = self._study.ask(self._distributions)
        assert trial.number == number, (trial.number, number)
        self._trials[number] = trial
        return Proposal(number, HParams.from_dict(trial.params), sampled=True)

    def tell(
        self,
        number: int,
        value: float | None,
        state: str,
        steps: Mapping[int, float] | None = None,
    ) -> None:
        from optuna.trial import TrialState

        trial = self._trials.pop(number)
        for step, step_value in sorted((steps or {}).items()):
            if math.isfinite(step_value):
                trial.report(step_value, int(step))
        # A pruned trial's value is its last reported step (Optuna's rule); a failed one has none.
        self._study.tell(trial, value if state == "COMPLETE" else None, state=TrialState[state])


def tpe_sampler(seed: int, startup_trials: int) -> Any:
    """The one TPE sampler every runner's TPE uses (the local runner's, data mode's and Ray
    Tune's): ``TPESampler(seed, n_startup_trials, multivariate=True, constant_liar=True)``,
    passed explicitly so no Optuna default decides it. Quiets Optuna's line per trial (the
    runners log results themselves)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        # multivariate and constant_liar are marked experimental; pinned Optuna (5.0.0).
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials, multivariate=True, constant_liar=True
        )


def optuna_space(search_space: Mapping[str, Any]) -> dict[str, Any]:
    """``train.search_space`` as Optuna distributions, by hyperparameter name."""
    return {name: domain.to_optuna() for name, domain in parse_space(search_space).items()}


def searcher(settings: SearchSettings, search_space: Mapping[str, Any]) -> Searcher:
    """The searcher ``settings.algorithm`` names, over ``search_space``."""
    if settings.algorithm == "grid":
        return GridSearcher(search_space)
    assert settings.samples is not None, "SearchSettings.check requires samples"
    if settings.algorithm == "random":
        return RandomSearcher(search_space, settings.samples, settings.seed)
    if settings.algorithm == "tpe":
        return TPESearcher(search_space, settings.samples, settings.seed, settings.startup_trials)
    raise ConfigError(
        f"train.search.algorithm must be one of {ALGORITHMS}, got {settings.algorithm!r}"
    )


class Search:
    """A searcher and its record (``<run_dir>/search.jsonl``; None: not recorded).

    :meth:`open` replays an existing record; :attr:`pending` are then the proposals that were
    asked but never told (training when the run died), to train again before new ones.
    :meth:`next_proposal` hands those out first, then asks. Every ask and tell is appended to
    the record before it returns.
    """

    def __init__(self, searcher: Searcher, run_dir: Path | None = None) -> None:
        self.searcher = searcher
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.pending: list[Proposal] = []
        self.asked: list[Proposal] = []  # every proposal so far, replayed ones first
        self._open: dict[int, Proposal] = {}  # asked, not yet told

    @classmethod
    def open(
        cls, settings: SearchSettings, search_space: Mapping[str, Any], run_dir: Path | None
    ) -> Search:
        """A fresh searcher for ``settings``, brought to where ``run_dir``'s record left it."""
        search = cls(searcher(settings, search_space), run_dir)
        if run_dir is not None:
            search._replay(read_search_events(run_dir))
        return search

    @property
    def budget(self) -> int:
        return self.searcher.budget

    def _replay(self, events: list[SearchEvent]) -> None:
        path = Path(self.run_dir or ".") / SEARCH_FILE
        fix = (
            "the seed, search space or Optuna version changed since it was written: restore "
            f"them, or remove it (and the run's trials) to search afresh ({rule_for(path)})"
        )
        for event in events:
            if event.event == "ask":
                proposal = self.searcher.ask()
                if proposal is None:
                    raise ContractError(
                        f"{path}: proposal {event.number} is beyond the budget of "
                        f"{self.budget}; {fix}"
                    )
                recorded = HParams.from_dict(event.params or {})
                if proposal.number != event.number or proposal.hparams != recorded:
                    raise ContractError(
                        f"{path}: proposal {event.number} was {recorded.to_dict()}, asked again "
                        f"it is {proposal.number}: {proposal.hparams.to_dict()}; {fix}"
                    )
                proposal = replace(proposal, proposed_time=event.time)
                self._open[proposal.number] = proposal
                self.asked.append(proposal)
            else:
                if event.number not in self._open:
                    raise ContractError(
                        f"{path}: a tell of proposal {event.number}, which is not an open ask; "
                        f"{fix}"
                    )
                del self._open[event.number]
                steps = {int(k): v for k, v in (event.steps or {}).items()}
                self.searcher.tell(event.number, event.value, str(event.state), steps)
        self.pending = [self._open[number] for number in sorted(self._open)]
        if events:
            log.info(
                "search.jsonl: replayed %d %s proposals, %d of them not told yet",
                len(self.asked),
                type(self.searcher).__name__,
                len(self.pending),
            )

    def ask(self) -> Proposal | None:
        """A new proposal (recorded before it is returned), or None once the budget is out."""
        proposal = self.searcher.ask()
        if proposal is not None:
            self._open[proposal.number] = proposal
            self.asked.append(proposal)
            assert proposal.proposed_time is not None, "Searcher.ask stamps it"
            self._record(
                SearchEvent.ask(proposal.number, proposal.hparams.to_dict(), proposal.proposed_time)
            )
        return proposal

    def ask_all(self) -> list[Proposal]:
        """Every proposal of the budget, in number order: those asked before (replayed) and
        the rest asked now. For searchers whose proposals do not depend on results (the
        grid, random search), so a runner can be handed the whole list up front."""
        while self.ask() is not None:
            pass
        return list(self.asked)

    def is_open(self, number: int) -> bool:
        """Whether proposal ``number`` was asked and is not told yet."""
        return number in self._open

    def next_proposal(self) -> Proposal | None:
        """A pending proposal (trained again after a resume) if any, else :meth:`ask`."""
        if self.pending:
            return self.pending.pop(0)
        return self.ask()

    def tell(
        self,
        number: int,
        value: float | None,
        state: str = "COMPLETE",
        steps: Mapping[int, float] | None = None,
    ) -> None:
        """Proposal ``number`` ended: ``COMPLETE`` with its validation Dice, ``PRUNED``
        (stopped early; ``steps`` its epochs' Dice) or ``FAIL``. A COMPLETE value that is
        missing or not finite (a diverged model) is told as FAIL."""
        if state not in SEARCH_STATES:
            raise ValueError(f"state must be one of {SEARCH_STATES}, got {state!r}")
        if number not in self._open:
            raise ValueError(f"proposal {number} is not asked, or already told")
        if state == "COMPLETE" and (value is None or not math.isfinite(value)):
            state, value = "FAIL", None
        del self._open[number]
        self.pending = [p for p in self.pending if p.number != number]
        self.searcher.tell(number, value, state, steps)
        self._record(SearchEvent.tell(number, value, state, steps))

    def _record(self, event: SearchEvent) -> None:
        if self.run_dir is not None:
            append_search_event(self.run_dir, event)


def epoch_steps(trial_dir: Path) -> dict[int, float]:
    """The validation Dice of every epoch a trial validated (its ``epochs.jsonl``), by epoch:
    the ``steps`` told with its result."""
    return {record.epoch: record.val_dice for record in read_epochs(trial_dir)}
