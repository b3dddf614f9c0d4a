"""Data mode's one worker group: configurations one after another on the same G workers.

Data mode trains one configuration at a time over all G workers, in ONE Ray Train run: the
worker processes, framework imports and process group start once, and each configuration
only builds its model and data inside them (:func:`train_grid` is the run's per-worker
function; each configuration is a :func:`distmis.trial.run_attempt`). What the group trains
comes one of two ways:

- **a list** (the grid, random search): the driver hands every pending configuration over
  at once (:func:`train_group_grid`);
- **a search** (TPE): nothing is known up front. Rank 0 holds the search
  (:class:`distmis.search.Search` on the run's ``search.jsonl``, of which it is the only
  writer while the group runs), asks for a configuration, broadcasts it, every rank trains
  it, and rank 0 tells the search how it ended (:func:`train_group_search`). The driver
  reads the proposals back from ``search.jsonl`` when the run ends
  (:mod:`distmis.train.data_parallel`).

Only rank 0 decides (which configurations to skip, what to train next, when ASHA stops one)
and every rank takes its decision through a broadcast: a rank deciding for itself from the
files could skip what rank 0 trains and leave it waiting in a collective for good.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from distmis.hparams import HParams
from distmis.run_folder import (
    CHECKPOINT_STATE_FILE,
    RESULT_FILE,
    CheckpointState,
    TrialResult,
    read_attempts,
    trial_folder,
)
from distmis.search import Proposal, Search, SearchSettings, epoch_steps
from distmis.sequential_asha import AshaRule, SequentialASHA
from distmis.trial import (
    Runner,
    StepsBuilder,
    StopEarly,
    TrialConfig,
    WorkerSettings,
    run_attempt,
)

log = logging.getLogger(__name__)


def train_grid(build_steps: StepsBuilder) -> Callable[[dict], None]:
    """The per-worker function of data mode's one Ray Train run: the grid's configurations
    (:func:`train_group_grid`) or a search's (:func:`train_group_search`), one after another,
    in one worker group: the group starts once per run, not once per configuration.

    ``config``: ``{"settings": WorkerSettings dict, "submitted_at": t, "asha": None or
    {"rule": AshaRule dict, "grid": [every trial id of the grid, in grid order; empty for a
    search]}, "trials": [TrialConfig dicts without settings] or None, "search": None or
    {"settings": SearchSettings fields, "space": train.search_space, "lr_scale": n}}``: the
    list of trials for the grid and random search, the search for TPE.
    """

    def train_grid_per_worker(config: dict) -> None:
        train = train_group_grid if config["search"] is None else train_group_search
        train(config, Runner.from_ray("data"), build_steps, time.time())

    return train_grid_per_worker


def train_group_grid(
    config: dict, runner: Runner, build_steps: StepsBuilder, started: float
) -> None:
    """One worker's part of a data-mode grid (:func:`train_grid`, whose ``config`` it takes).

    Each configuration is its own trial, with its own fresh model, seed, files and
    checkpoints (a checkpoint is only restored into the configuration that wrote it). A
    finished one is reported again, not retrained; one whose attempts are used up
    (``1 + max_failures``) is skipped, so it stays failed. Any other error propagates: Ray
    Train restarts the whole group (a rank that failed alone may have left the others inside a
    collective), which skips what finished and retries this configuration from its last
    checkpoint. With ``asha``, rank 0 keeps ASHA's rungs
    (:class:`~distmis.sequential_asha.SequentialASHA`, rebuilt from the grid's
    ``epochs.jsonl`` files whenever the group starts) and decides after each validated epoch
    whether the configuration stops; a stopped one leaves no ``result.json`` and is skipped
    when the group restarts.

    Rank 0 decides, from the attempt logs, which configurations this group skips (attempts
    used up, or stopped by ASHA before a restart) and whether Ray restarted the group, and
    every rank takes its decision: rank 0 logs an attempt as it starts a configuration, so a
    rank counting for itself could skip what rank 0 trains and leave it waiting in a
    collective for good. Likewise only rank 0 holds ASHA's rungs, and every rank stops a
    configuration when it says so (:func:`asha_stop`).
    """
    settings = config["settings"]
    trials = [TrialConfig.from_dict({**entry, "settings": settings}) for entry in config["trials"]]
    submitted = config["submitted_at"]
    asha = None
    decision = None
    if runner.rank == 0:
        if config["asha"] is not None:
            out_dir = Path(settings["out_dir"])
            asha = SequentialASHA.from_trial_folders(
                AshaRule.from_dict(config["asha"]["rule"]),
                {trial_id: trial_folder(out_dir, trial_id) for trial_id in config["asha"]["grid"]},
            )
        restarted = any(attempt_times(trial, after=submitted) for trial in trials)
        skipped = []
        for index, trial in enumerate(trials):
            if (trial.directory / RESULT_FILE).is_file():
                continue
            if len(attempt_times(trial)) > trial.settings.max_failures:
                log.info("%s used all its attempts; left failed", trial.trial_id)
                skipped.append(index)
            elif asha is not None and trial.trial_id in asha.stopped:
                log.info(
                    "%s was stopped by ASHA after epoch %d; left stopped",
                    trial.trial_id,
                    asha.stopped[trial.trial_id],
                )
                skipped.append(index)
        decision = (restarted, tuple(skipped))
    restarted, skipped = runner.broadcast_from_rank_zero(decision)
    # The first configuration counts the group's start-up from the driver's fit(); after Ray
    # restarted the group (an attempt began since that fit), from this entry; each later
    # configuration from the end of the previous one.
    if restarted:
        submitted = started
    for index, trial in enumerate(trials):
        if index in skipped:
            continue
        trial = dataclasses.replace(trial, submitted_at=submitted)
        _train_in_group(trial, runner, build_steps, config["asha"] is not None, asha)
        submitted = time.time()


def train_group_search(
    config: dict, runner: Runner, build_steps: StepsBuilder, started: float
) -> None:
    """One worker's part of a data-mode search (:func:`train_grid`, whose ``config`` it
    takes): rank 0 asks, every rank trains, rank 0 tells (module docstring).

    Rank 0 opens the search on the run's ``search.jsonl`` (it replays every ask and tell
    recorded so far), settles what an earlier group left asked but untold (:func:`_settle`),
    and rebuilds ASHA's rungs from the asked configurations' ``epochs.jsonl``. Then, until
    the budget is spent, it takes the next proposal (one to train again first), broadcasts it,
    and after every rank trained it, tells the search how it ended. Errors propagate as in
    :func:`train_group_grid`: Ray restarts the group, which opens the search again.
    """
    settings = WorkerSettings.from_dict(config["settings"])
    search_config = config["search"]
    submitted = config["submitted_at"]
    rule = None if config["asha"] is None else AshaRule.from_dict(config["asha"]["rule"])
    search = asha = restarted = None
    out_dir = Path(settings.out_dir)
    if runner.rank == 0:
        search = Search.open(
            SearchSettings(**search_config["settings"]), search_config["space"], out_dir
        )
        folders = {p.trial_id: trial_folder(out_dir, p.trial_id) for p in search.asked}
        asha = None if rule is None else SequentialASHA.from_trial_folders(rule, folders)
        restarted = any(t > submitted for f in folders.values() for t in read_attempts(f))
        for proposal in list(search.pending):
            _settle(search, proposal, folders[proposal.trial_id], asha, settings.max_failures)
    if runner.broadcast_from_rank_zero(restarted):
        submitted = started  # as train_group_grid: the start-up counts from this entry
    while True:
        asked = None
        if runner.rank == 0:
            assert search is not None, "rank 0 holds the search"
            proposal = search.next_proposal()
            if proposal is not None:
                log.info(
                    "[%d/%d] proposed %s", proposal.number + 1, search.budget, proposal.trial_id
                )
                asked = (proposal.number, proposal.hparams.to_dict())
        asked = runner.broadcast_from_rank_zero(asked)
        if asked is None:
            return
        proposal = Proposal(asked[0], HParams.from_dict(asked[1]), sampled=True)
        trial = dataclasses.replace(
            TrialConfig.of_proposal(proposal, settings, search_config["lr_scale"]),
            submitted_at=submitted,
        )
        _train_in_group(trial, runner, build_steps, rule is not None, asha)
        if runner.rank == 0:
            assert search is not None
            if not _settle(search, proposal, trial.directory, asha, settings.max_failures):
                raise RuntimeError(f"{trial.trial_id} returned without result.json or an ASHA stop")
        submitted = time.time()


def _train_in_group(
    trial: TrialConfig,
    runner: Runner,
    build_steps: StepsBuilder,
    with_asha: bool,
    asha: SequentialASHA | None,
) -> None:
    """One attempt at ``trial`` on every rank of the group: only its own checkpoints restored,
    and with ASHA, stopped when rank 0 (which holds ``asha``) says so."""
    stop_early = asha_stop(runner, asha, trial.trial_id) if with_asha else None
    run_attempt(
        trial,
        own_checkpoints(runner, trial.trial_id),
        build_steps,
        time.time(),
        stop_early=stop_early,
    )


def _settle(
    search: Search,
    proposal: Proposal,
    folder: Path,
    asha: SequentialASHA | None,
    max_failures: int,
) -> bool:
    """Tell ``search`` how ``proposal`` ended, from the files its trial left in ``folder``:
    ``COMPLETE`` with ``result.json``'s validation Dice, ``PRUNED`` when ASHA stopped it,
    ``FAIL`` when its attempts are used up (``1 + max_failures``), each with the validation
    Dice of every epoch it validated. False, telling nothing, when it has not ended: it is
    to train (again)."""
    steps = epoch_steps(folder)
    if (folder / RESULT_FILE).is_file():
        value = TrialResult.read(folder / RESULT_FILE).metrics["val_dice"]
        search.tell(proposal.number, value, "COMPLETE", steps)
    elif asha is not None and proposal.trial_id in asha.stopped:
        search.tell(proposal.number, steps[max(steps)], "PRUNED", steps)
    elif len(read_attempts(folder)) > max_failures:
        log.info("%s used all its attempts; told failed", proposal.trial_id)
        search.tell(proposal.number, None, "FAIL", steps)
    else:
        return False
    return True


def asha_stop(runner: Runner, asha: SequentialASHA | None, trial_id: str) -> StopEarly:
    """``trial_id``'s ASHA decision after each epoch: rank 0's (the one holding ``asha``),
    broadcast, so every rank leaves the configuration at the same epoch and none is left in
    its next collective alone."""

    def stop_early(epoch: int, metrics: Mapping[str, float]) -> bool:
        decision = None
        if runner.rank == 0:
            assert asha is not None, "rank 0 holds ASHA's rungs"
            decision = asha.on_result(trial_id, epoch, metrics["val_dice"])
            if decision:
                log.info(
                    "%s stopped by ASHA after epoch %d: val_dice %.4f trails its rung",
                    trial_id,
                    epoch,
                    metrics["val_dice"],
                )
        return bool(runner.broadcast_from_rank_zero(decision))

    return stop_early


def attempt_times(trial: TrialConfig, after: float = 0.0) -> list[float]:
    """Start times in ``trial``'s attempts.log later than ``after``."""
    return [t for t in read_attempts(trial.directory) if t > after]


def own_checkpoints(runner: Runner, trial_id: str) -> Runner:
    """``runner`` whose ``get_checkpoint`` returns only ``trial_id``'s own checkpoints."""

    def get_checkpoint():
        checkpoint = runner.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            state = CheckpointState.read(Path(folder) / CHECKPOINT_STATE_FILE)
        return checkpoint if state.trial_id == trial_id else None

    return dataclasses.replace(runner, get_checkpoint=get_checkpoint)
