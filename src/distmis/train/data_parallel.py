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

import logging
import time
from collections.abc import Callable, Sequence

from distmis import backends
from distmis.hparams import HParams
from distmis.train.settings import TrainSettings
from distmis.train.trials import (
    TrialRecord,
    build_record,
    load_record,
    save_record,
    trial_dir,
)

log = logging.getLogger(__name__)

RUN_NAME = "grid"  # <out>/ray/grid: the one Ray Train run's storage (checkpoints, state)


def run_data_parallel(
    settings: TrainSettings,
    grid: Sequence[HParams],
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Train every configuration with G Ray Train workers, in grid order, in one group.

    Configurations with a record from an earlier (interrupted) run are not trained again; a
    killed run's unfinished configuration resumes from its last checkpoint (Ray Train
    restores the run from its storage). A failing configuration restarts the group, which
    retries it from its last checkpoint up to ``max_failures`` times; then it is recorded as
    failed and the next one starts. Records are written when the run ends (each finished
    configuration's ``result.json`` is on disk as soon as it finishes).
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    backend = backends.get(settings.backend)
    records: dict[str, TrialRecord] = {}
    pending = []
    for hparams in grid:
        done = load_record(settings, hparams.trial_id)
        if done is not None:
            log.info("%s already finished (%s); not retrained", hparams.trial_id, done.status)
            records[hparams.trial_id] = done
        else:
            pending.append(hparams)
    if pending:
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
                failure_config=FailureConfig(
                    max_failures=(settings.max_failures + 1) * len(pending)
                ),
            ),
        )
        error = None
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - recorded per configuration below
            error = f"{type(exc).__name__}: {exc}"
            log.error("the data-parallel run failed: %s", error.splitlines()[0])
        ended = time.time()
        for hparams in pending:
            # A configuration without result.json failed (failed.json says how) or was never
            # reached because the run itself failed (the run's error).
            record = build_record(
                settings, hparams, error=None, driver_start=started, driver_end=ended
            )
            failed_file = trial_dir(settings, hparams.trial_id) / "failed.json"
            if record.status != "ok" and not failed_file.is_file():
                record.error = (error or "the run ended before this configuration").splitlines()[0][
                    :500
                ]
            save_record(settings, record)
            records[hparams.trial_id] = record
            on_record(record)
    return [records[hp.trial_id] for hp in grid]
