"""Data parallelism: the grid one configuration at a time, each over G Ray Train workers, all
in ONE worker group.

The trainer is the backend's (:meth:`distmis.backends.base.Backend.ray_trainer`):
``TensorflowTrainer`` with ``MultiWorkerMirroredStrategy``, or ``TorchTrainer`` with
``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs). Its workers run
:func:`distmis.trial.train_grid`: the group (processes, framework imports, process
group) starts once for the run, and every configuration after the first only builds its model
and data inside it. A Ray Train run per configuration cost 10–13 s of start-up each on the
demo, more than a whole epoch at paper size on 32 GPUs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence

from distmis import backends
from distmis.hparams import HParams
from distmis.run_folder import FAILED_FILE, RESULT_FILE
from distmis.train.grid import Outcome, run_grid
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, trial_dir

log = logging.getLogger(__name__)

RUN_NAME = "grid"  # <out>/ray/grid: the one Ray Train run's storage (checkpoints, state)


def run_data_parallel(
    settings: TrainSettings,
    grid: Sequence[HParams],
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Train every configuration with G Ray Train workers, in grid order, in one group
    (:func:`distmis.train.grid.run_grid` around :func:`train_in_one_group`)."""
    return run_grid(settings, grid, on_record, functools.partial(train_in_one_group, settings))


def train_in_one_group(settings: TrainSettings, pending: Sequence[HParams]) -> Iterator[Outcome]:
    """Data mode's trainer of pending configurations: one Ray Train run of G workers trains
    them one after another; every outcome comes when the run ends (each finished
    configuration's ``result.json`` is on disk as soon as it finishes).

    A killed run's unfinished configuration resumes from its last checkpoint (Ray Train
    restores the run from its storage). A failing configuration restarts the group, which
    retries it from its last checkpoint up to ``max_failures`` times; then it is recorded as
    failed and the next one starts.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    backend = backends.get(settings.backend)
    log.info(
        "training %d configuration(s) one after another on one group of %d workers",
        len(pending),
        settings.gpus,
    )
    worker_settings = settings.worker_settings().to_dict()
    entries = [settings.grid_entry(hparams) for hparams in pending]  # settings once, below
    started = time.time()
    trainer = backend.ray_trainer(
        {"trials": entries, "settings": worker_settings, "submitted_at": started},
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
            failure_config=FailureConfig(max_failures=(settings.max_failures + 1) * len(pending)),
        ),
    )
    run_error = None
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 - recorded per configuration below
        run_error = f"{type(exc).__name__}: {exc}"
        log.error("the data-parallel run failed: %s", run_error.splitlines()[0])
    yield from outcomes_of_run(settings, pending, run_error, started, time.time())


def outcomes_of_run(
    settings: TrainSettings,
    pending: Sequence[HParams],
    run_error: str | None,
    started: float,
    ended: float,
) -> Iterator[Outcome]:
    """Each configuration's outcome once the one run (started, ended) is over.

    One that left ``result.json`` finished, and one that left ``failed.json`` failed for the
    reason its worker wrote there. One with neither was never reached, or the run itself
    failed: the run's error (``run_error``) is its own.
    """
    for hparams in pending:
        directory = trial_dir(settings, hparams.trial_id)
        left_files = any((directory / name).is_file() for name in (RESULT_FILE, FAILED_FILE))
        error = None if left_files else (run_error or "the run ended before this configuration")
        yield Outcome(hparams, error, started, ended)
