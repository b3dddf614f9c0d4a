"""Data parallelism: the grid one configuration at a time, each over G Ray Train workers, all
in ONE worker group.

The trainer is the backend's (:meth:`distmis.backends.base.Backend.ray_trainer`):
``TensorflowTrainer`` with ``MultiWorkerMirroredStrategy``, or ``TorchTrainer`` with
``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs). Its workers run
:func:`distmis.worker_group.train_grid`: the group (processes, framework imports, process
group) starts once for the run, and every configuration after the first only builds its model
and data inside it. A Ray Train run per configuration cost 10–13 s of start-up each on the
demo, more than a whole epoch at paper size on 32 GPUs.

Early stopping (``train.scheduler: asha``): no Tune scheduler runs here, so the workers apply
ASHA's rule themselves, configuration after configuration (:mod:`distmis.sequential_asha`,
Ray's own rule: data mode stops what experiment mode's ASHA would, given the results in the
same order). A stopped configuration leaves its ``epochs.jsonl`` and no ``result.json``; the
driver finds it by replaying the same rule over the grid's files and records it ``stopped``.

TPE (``train.search.algorithm: tpe``) proposes from the results so far, so the group's rank 0
asks it, one configuration after another (:func:`distmis.worker_group.train_group_search`);
the driver hands over the search's settings instead of a list and, when the run ends, reads
the proposals back from ``search.jsonl`` to record them (:func:`search_in_one_group`).
Told in the order they train, as here, TPE proposes the same configurations for the same
seed: data mode's TPE is reproducible, as the local runner's is.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from distmis import backends
from distmis.run_folder import FAILED_FILE, RESULT_FILE
from distmis.search import Proposal, Search
from distmis.sequential_asha import SequentialASHA
from distmis.train.grid import Outcome, run_grid, tell_record, tell_recorded
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, trial_dir

log = logging.getLogger(__name__)

RUN_NAME = "grid"  # <out>/ray/grid: the one Ray Train run's storage (checkpoints, state)


def run_data_parallel(
    settings: TrainSettings,
    configurations: Sequence[Proposal] | Search,
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Train every configuration with G Ray Train workers, one after another, in one group:
    a list (the grid, random search) in proposal order (:func:`distmis.train.grid.run_grid`
    around :func:`train_in_one_group`), or a search's (TPE) as the group's rank 0 asks for
    them (:func:`search_in_one_group`)."""
    if isinstance(configurations, Search):
        return search_in_one_group(settings, configurations, on_record)
    trainer = functools.partial(train_in_one_group, settings, configurations)
    return run_grid(settings, configurations, on_record, trainer)


def search_in_one_group(
    settings: TrainSettings, search: Search, on_record: Callable[[TrialRecord], None]
) -> list[TrialRecord]:
    """The search's configurations, each proposed by the group's rank 0 as the last one ends,
    recorded in proposal order.

    ``search`` was opened on the run's ``search.jsonl``. Before the group starts, a proposal
    whose record a killed driver saved but never told is told from it; the group then asks
    and trains the rest of the budget (none when it is spent), telling each result itself.
    When the run ends the driver opens the record again, records every proposal the group
    asked (:func:`outcomes_of_run`), and tells those the group could not (the run failed
    while they trained), so the record and the saved records agree on a rerun.
    """
    tell_recorded(settings, search)
    started = ended = time.time()
    run_error = None
    if search.pending or len(search.asked) < search.budget:
        started, run_error = time.time(), _fit_one_group(settings, search=search)
        ended = time.time()
    search = settings.search_record(settings.out_dir)  # what the group asked and told
    stopped = stopped_by_asha(settings, search.asked)

    def outcomes(pending: Sequence[Proposal]) -> Iterator[Outcome]:
        return outcomes_of_run(settings, pending, run_error, started, ended, stopped=stopped)

    records = run_grid(settings, search.asked, on_record, outcomes)
    for proposal, record in zip(search.asked, records, strict=True):
        if search.is_open(proposal.number):
            tell_record(settings, search, proposal, record)
    return records


def stopped_by_asha(settings: TrainSettings, grid: Sequence[Proposal]) -> frozenset[str]:
    """The configurations of ``grid`` that ASHA stopped, as the workers decided: the rule
    replayed over the grid's ``epochs.jsonl`` files (none without ASHA)."""
    rule = settings.asha
    if rule is None:
        return frozenset()
    folders = {p.trial_id: trial_dir(settings, p.trial_id) for p in grid}
    return frozenset(SequentialASHA.from_trial_folders(rule, folders).stopped)


def train_in_one_group(
    settings: TrainSettings, grid: Sequence[Proposal], pending: Sequence[Proposal]
) -> Iterator[Outcome]:
    """Data mode's trainer of pending configurations: one Ray Train run of G workers trains
    them one after another; every outcome comes when the run ends (each finished
    configuration's ``result.json`` is on disk as soon as it finishes).

    A killed run's unfinished configuration resumes from its last checkpoint (Ray Train
    restores the run from its storage). A failing configuration restarts the group, which
    retries it from its last checkpoint up to ``max_failures`` times; then it is recorded as
    failed and the next one starts. With ASHA, the rungs count every configuration of
    ``grid`` that trained, those recorded by an earlier run too.
    """
    log.info(
        "training %d configuration(s) one after another on one group of %d workers",
        len(pending),
        settings.gpus,
    )
    started = time.time()
    run_error = _fit_one_group(settings, trials=pending, grid=grid)
    ended = time.time()
    stopped = stopped_by_asha(settings, grid)
    yield from outcomes_of_run(settings, pending, run_error, started, ended, stopped=stopped)


def group_config(
    settings: TrainSettings,
    *,
    trials: Sequence[Proposal] | None = None,
    grid: Sequence[Proposal] = (),
    search: Search | None = None,
) -> dict:
    """What every worker of the group is handed (:func:`distmis.worker_group.train_grid`'s
    ``config``): ``trials`` of ``grid`` to train, or the settings of ``search`` to ask."""
    rule = settings.asha
    if search is None:
        assert trials is not None, "a list of trials or a search"
        entries, searched = [settings.grid_entry(proposal) for proposal in trials], None
    else:
        entries = None
        searched = {
            "settings": dataclasses.asdict(settings.search),
            "space": settings.search_space,
            "lr_scale": settings.lr_scale,
        }
    return {
        "settings": settings.worker_settings().to_dict(),  # once, not per configuration
        "submitted_at": time.time(),
        "asha": None
        if rule is None
        else {"rule": rule.to_dict(), "grid": [p.trial_id for p in grid]},
        "trials": entries,
        "search": searched,
    }


def _fit_one_group(
    settings: TrainSettings,
    *,
    trials: Sequence[Proposal] | None = None,
    grid: Sequence[Proposal] = (),
    search: Search | None = None,
) -> str | None:
    """Run data mode's one Ray Train run over ``trials`` (of ``grid``) or over what
    ``search`` proposes (:func:`distmis.worker_group.train_grid`'s ``config``); None, or the
    error that ended the run (each configuration's own is in its files)."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    backend = backends.get(settings.backend)
    config = group_config(settings, trials=trials, grid=grid, search=search)
    if search is None:
        configurations = len(config["trials"])
    else:
        configurations = search.budget - len(search.asked) + len(search.pending)
    trainer = backend.ray_trainer(
        config,
        use_gpu=settings.use_gpu,
        whole_grid=True,
        scaling_config=ScalingConfig(
            num_workers=settings.gpus,
            use_gpu=settings.use_gpu,
            resources_per_worker={
                "CPU": settings.cpus_per_worker,
                **({"GPU": 1} if settings.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=RUN_NAME,
            storage_path=str((settings.out_dir / "ray").resolve()),
            # Every restart uses up one attempt of one configuration, which the workers
            # then skip: the run ends after at most this many.
            failure_config=FailureConfig(max_failures=(settings.max_failures + 1) * configurations),
        ),
    )
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - recorded per configuration by the caller
        run_error = f"{type(exc).__name__}: {exc}"
        log.error("the data-parallel run failed: %s", run_error.splitlines()[0])
        return run_error
    return None


def outcomes_of_run(
    settings: TrainSettings,
    pending: Sequence[Proposal],
    run_error: str | None,
    started: float,
    ended: float,
    *,
    stopped: frozenset[str] = frozenset(),
) -> Iterator[Outcome]:
    """Each configuration's outcome once the one run (started, ended) is over.

    One that left ``result.json`` finished; one in ``stopped`` (:func:`stopped_by_asha`)
    was stopped by ASHA (after a failed attempt too: the retry got that far); one that left
    ``failed.json`` failed for the reason its worker wrote there. One with none of these was
    never reached, or the run itself failed: the run's error (``run_error``) is its own.
    """
    for proposal in pending:
        directory = trial_dir(settings, proposal.trial_id)
        finished = (directory / RESULT_FILE).is_file()
        if not finished and proposal.trial_id in stopped:
            yield Outcome(proposal, None, started, ended, stopped=True)
            continue
        left_files = finished or (directory / FAILED_FILE).is_file()
        error = None if left_files else (run_error or "the run ended before this configuration")
        yield Outcome(proposal, error, started, ended)
