"""Experiment parallelism: Ray Tune runs up to G configurations at once, one GPU each."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from distmis import backends
from distmis.train.grid import HParams
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, build_record, save_record

log = logging.getLogger(__name__)

EXPERIMENT_NAME = "tune"


def _tune_trainable(config: dict) -> None:
    """Ray Tune entry point: flatten the grid_search entry into the backend loop's config."""
    # Ray Train sets up logging in its workers, Tune not in a trial's process: without this
    # the loop's per-epoch lines would never reach the job's log.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Imported here, in the trial's process, so a torch trial never imports TensorFlow.
    train_loop_per_worker = backends.get(config["settings"]["backend"]).train_loop_per_worker()
    train_loop_per_worker({**config["trial"], "settings": config["settings"]})


def _grid_entry(settings: TrainSettings, hparams: HParams) -> dict:
    entry = settings.trial_config(hparams).to_dict()
    del entry["settings"]
    return entry


def run_experiment_parallel(
    settings: TrainSettings,
    grid: Sequence[HParams],
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Run the grid as Tune trials, at most G at a time, each with one GPU (or CPU share).

    An interrupted run is restored with Tune's experiment restore: finished trials are
    kept, unfinished ones resume from their last checkpoint. A trial that still fails after
    ``max_failures`` retries is recorded as failed; the others go on.
    """
    from ray import tune

    storage = (settings.out_dir / "ray").resolve()
    experiment_path = storage / EXPERIMENT_NAME
    trainable = tune.with_resources(
        _tune_trainable,
        {"cpu": settings.cpus_per_worker, "gpu": 1 if settings.use_gpu else 0},
    )
    run_config = tune.RunConfig(
        name=EXPERIMENT_NAME,
        storage_path=str(storage),
        failure_config=tune.FailureConfig(max_failures=settings.max_failures),
        verbose=1,
    )
    started = time.time()
    if tune.Tuner.can_restore(str(experiment_path)):
        log.info("restoring the interrupted experiment in %s", experiment_path)
        tuner = tune.Tuner.restore(
            str(experiment_path),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={
                # The settings once, not in every grid entry: Tune shows the entries as the
                # trials' names and columns.
                "trial": tune.grid_search([_grid_entry(settings, hp) for hp in grid]),
                "settings": settings.worker_settings().to_dict(),
            },
            tune_config=tune.TuneConfig(max_concurrent_trials=settings.gpus, num_samples=1),
            run_config=run_config,
        )
    result_grid = tuner.fit()
    by_id = {hp.trial_id: hp for hp in grid}
    records = []
    for result in result_grid:
        trial_id = result.config["trial"]["trial_id"]
        error = None
        if result.error is not None:
            error = f"{type(result.error).__name__}: {result.error}"
        record = build_record(
            settings, by_id[trial_id], error=error, driver_start=started, driver_end=time.time()
        )
        save_record(settings, record)
        records.append(record)
        on_record(record)
    return records
