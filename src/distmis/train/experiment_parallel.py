"""Ray Tune runs the grid: experiment mode (up to G configurations at once, one GPU each) and
hybrid mode (up to G/k at once, each a Ray Train run over k GPUs).

Hybrid is the Ray Train V2 way of tuning distributed runs: each Tune trial is a small driver
function (:func:`_hybrid_trainable`, no resources of its own) that starts the backend's
trainer on k workers with synchronous all-reduce and reports its epochs to Tune from its own
thread (:mod:`distmis.train.report_forwarding`), so Tune's scheduler sees every epoch. Data
and experiment mode are its two ends, k = G and k = 1. With ``train.scheduler: asha``
(experiment and hybrid mode) Tune's ASHA stops configurations whose validation Dice trails
their rung; they are recorded as ``stopped``. A stopped hybrid trial ends its Train run
before its process goes, so its workers give their resources back to the next trial
(:func:`distmis.train.report_forwarding.stoppable`).

With ``train.search.algorithm: tpe`` Tune's searcher proposes the configurations as slots
free up, instead of a grid_search over a list (:mod:`distmis.train.tune_search`); the
trainables are the same, each handed a numbered trial entry.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from distmis import backends
from distmis.run_folder import RESULT_FILE
from distmis.search import Proposal, SearchSettings
from distmis.train.grid import Outcome, record_outcome, run_grid
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, load_record, trial_dir

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "tune"
HYBRID_RUNS = "hybrid-runs"  # <out>/ray/hybrid-runs/<trial_id>: each trial's Train run
METRIC = "val_dice"
HYBRID_DRIVER_MEMORY = 64 * 2**20  # bytes of Ray's logical memory a hybrid trial's driver asks


def _log_to_job() -> None:
    # Ray Train sets up logging in its workers, Tune not in a trial's process: without this
    # the loop's per-epoch lines would never reach the job's log.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _tune_trainable(config: dict) -> None:
    """Ray Tune entry point: flatten the grid_search entry into the backend loop's config."""
    _log_to_job()
    # Imported here, in the trial's process, so a torch trial never imports TensorFlow.
    train_loop_per_worker = backends.get(config["settings"]["backend"]).train_loop_per_worker()
    train_loop_per_worker({**config["trial"], "settings": config["settings"]})


def _hybrid_trainable(config: dict) -> None:
    """A hybrid trial: one Ray Train run of the configuration on ``k`` workers, its reports
    forwarded to Tune (:mod:`distmis.train.report_forwarding`). Train retries the run
    ``max_failures`` times from its checkpoint. Run as :func:`stoppable`'s trainable, which
    ends the Train run when Tune stops the trial."""
    _log_to_job()
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    from distmis.train.report_forwarding import fit_and_report

    settings, hybrid = config["settings"], config["hybrid"]
    backend = backends.get(settings["backend"])
    trial_id = config["trial"]["trial_id"]

    def make_trainer(callbacks):
        return backend.ray_trainer(
            {**config["trial"], "settings": settings, "submitted_at": time.time()},
            use_gpu=settings["use_gpu"],
            scaling_config=ScalingConfig(
                num_workers=hybrid["workers"],
                use_gpu=settings["use_gpu"],
                resources_per_worker=hybrid["resources_per_worker"],
                # One node when k fits on one (its all-reduce then never crosses the
                # network); else as few nodes as Ray can pack it on.
                placement_strategy=hybrid["placement_strategy"],
            ),
            run_config=RunConfig(
                name=trial_id,
                storage_path=hybrid["storage"],
                failure_config=FailureConfig(max_failures=settings["max_failures"]),
                callbacks=callbacks,
            ),
        )

    # The last epoch's report comes after the trial's model and result.json are written
    # (distmis.trial.run_trial): a trial stopped there (ASHA at max_t) lets its run finish.
    fit_and_report(make_trainer, is_final=lambda metrics: metrics["epoch"] >= settings["epochs"])


def placement_strategy(settings: TrainSettings, gpus_per_node: int) -> str:
    """``STRICT_PACK`` (one node) when a trial's k workers fit on one node, else ``PACK``."""
    return "STRICT_PACK" if settings.workers_per_trial <= gpus_per_node else "PACK"


def _scheduler(settings: TrainSettings):
    rule = settings.asha
    if rule is None:
        return None
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr="epoch", metric=METRIC, mode="max", **rule.to_dict())


def run_experiment_parallel(
    settings: TrainSettings,
    grid: Sequence[Proposal] | SearchSettings,
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Experiment mode: the grid (or TPE's proposals, ``grid`` its SearchSettings) as Tune
    trials, at most G at a time, each with one GPU (or a CPU share)."""
    from ray import tune

    trainable = tune.with_resources(
        _tune_trainable,
        {"cpu": settings.cpus_per_worker, "gpu": 1 if settings.use_gpu else 0},
    )
    if isinstance(grid, SearchSettings):
        return search_with_tune(settings, trainable, {}, settings.max_failures, on_record)
    tune_pending = functools.partial(
        train_with_tune, settings, trainable, {}, settings.max_failures
    )
    return run_grid(settings, grid, on_record, tune_pending)


def run_hybrid_parallel(
    settings: TrainSettings,
    grid: Sequence[Proposal] | SearchSettings,
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Hybrid mode: the grid (or TPE's proposals, ``grid`` its SearchSettings) as Tune trials,
    at most G/k at a time, each a Ray Train run of k workers (:func:`_hybrid_trainable`)."""
    from ray import tune

    from distmis.train.report_forwarding import stoppable

    # The driver holds no CPU or GPU: its k workers hold them all, so G/k trials fit G GPUs.
    # Ray refuses an empty request, so it asks for a little of Ray's logical memory instead.
    trainable = tune.with_resources(
        stoppable(_hybrid_trainable), {"cpu": 0, "memory": HYBRID_DRIVER_MEMORY}
    )
    hybrid = {
        "workers": settings.workers_per_trial,
        "resources_per_worker": {
            "CPU": settings.cpus_per_worker,
            **({"GPU": 1} if settings.use_gpu else {}),
        },
        "placement_strategy": placement_strategy(settings, settings.gpus_per_node),
        "storage": str((settings.out_dir / "ray" / HYBRID_RUNS).resolve()),
    }
    # Train retries a failing run itself; Tune must not start it over on top of that.
    if isinstance(grid, SearchSettings):
        return search_with_tune(settings, trainable, {"hybrid": hybrid}, 0, on_record)
    tune_pending = functools.partial(train_with_tune, settings, trainable, {"hybrid": hybrid}, 0)
    return run_grid(settings, grid, on_record, tune_pending)


def train_with_tune(
    settings: TrainSettings,
    trainable,
    extra_space: dict,
    tune_failures: int,
    pending: Sequence[Proposal],
) -> Iterator[Outcome]:
    """Experiment and hybrid mode's trainer of pending configurations: ``trainable`` over
    them, at most ``settings.concurrent_trials`` at once; every outcome comes when Tune's run
    ends, in Tune's trial order.

    An interrupted run is restored with Tune's experiment restore: finished trials are
    kept, unfinished ones resume from their last checkpoint. A trial that still fails after
    its retries is recorded as failed; one the scheduler stopped as stopped; the others go on.
    """
    from ray import tune

    started = time.time()

    def new_tuner(run_config):
        return tune.Tuner(
            trainable,
            param_space={
                # The settings once, not in every grid entry: Tune shows the entries as the
                # trials' names and columns.
                "trial": tune.grid_search([settings.grid_entry(p) for p in pending]),
                "settings": settings.worker_settings().to_dict(),
                **extra_space,
            },
            tune_config=tune.TuneConfig(
                max_concurrent_trials=settings.concurrent_trials,
                num_samples=1,
                scheduler=_scheduler(settings),
            ),
            run_config=run_config,
        )

    # A restored experiment holds its whole first grid; the trials recorded since (not
    # pending) are left out below.
    result_grid = _tuner(settings, trainable, tune_failures, new_tuner).fit()
    by_id = {p.trial_id: p for p in pending}
    for result in result_grid:
        trial_id = result.config["trial"]["trial_id"]
        if trial_id not in by_id:
            continue  # recorded by an earlier run of this experiment: not pending
        yield _outcome(settings, by_id[trial_id], result, started)


def search_with_tune(
    settings: TrainSettings,
    trainable,
    extra_space: dict,
    tune_failures: int,
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Experiment and hybrid mode with TPE: Tune's numbered Optuna searcher proposes
    ``settings.search.samples`` configurations, at most ``settings.concurrent_trials``
    training at once (:mod:`distmis.train.tune_search`); each record comes when Tune's run
    ends, all of them back in proposal order. An interrupted run is restored with its
    searcher; a trial recorded by an earlier run keeps its record."""
    from ray import tune

    from distmis.train.tune_search import checkpoint_every_step, proposal_of, tpe_search_alg

    started = time.time()

    def new_tuner(run_config):
        return tune.Tuner(
            trainable,
            # Only fixed values: the searcher adds each trial's entry (its space is its own).
            param_space={"settings": settings.worker_settings().to_dict(), **extra_space},
            tune_config=tune.TuneConfig(
                search_alg=tpe_search_alg(settings),
                num_samples=settings.search.samples,
                scheduler=_scheduler(settings),
            ),
            run_config=run_config,
        )

    with checkpoint_every_step():
        result_grid = _tuner(settings, trainable, tune_failures, new_tuner).fit()
    records: dict[int, TrialRecord] = {}
    for result in result_grid:
        if "proposal" not in result.config:
            continue  # never given a configuration (the searcher had none to propose)
        proposal = proposal_of(result.config)
        record = load_record(settings, proposal.trial_id)
        if record is None:
            outcome = _outcome(settings, proposal, result, started)
            record = record_outcome(settings, outcome, on_record)
        records[proposal.number] = record
    return [records[number] for number in sorted(records)]


def _tuner(settings: TrainSettings, trainable, tune_failures: int, new_tuner):
    """The interrupted experiment restored (finished trials kept, unfinished ones resumed
    from their last checkpoint, its searcher as it was saved), or ``new_tuner(run_config)``."""
    from ray import tune

    storage = (settings.out_dir / "ray").resolve()
    experiment_path = storage / EXPERIMENT_NAME
    if tune.Tuner.can_restore(str(experiment_path)):
        log.info("restoring the interrupted experiment in %s", experiment_path)
        return tune.Tuner.restore(
            str(experiment_path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    return new_tuner(
        tune.RunConfig(
            name=EXPERIMENT_NAME,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=tune_failures),
            verbose=1,
        )
    )


def _outcome(settings: TrainSettings, proposal: Proposal, result, started: float) -> Outcome:
    """How Tune's ``result`` for ``proposal`` ended."""
    error = None
    if result.error is not None:
        error = f"{type(result.error).__name__}: {result.error}"
    finished = (trial_dir(settings, proposal.trial_id) / RESULT_FILE).is_file()
    return Outcome(
        proposal,
        error,
        started,
        time.time(),
        # Ended without an error and without finishing: the scheduler stopped it.
        stopped=error is None and not finished and settings.scheduler != "none",
    )
