"""Data parallelism: the grid one configuration at a time, each over G Ray Train workers.

The trainer is the backend's (:meth:`distmis.backends.base.Backend.ray_trainer`):
``TensorflowTrainer`` with ``MultiWorkerMirroredStrategy``, or ``TorchTrainer`` with
``DistributedDataParallel`` (NCCL on GPUs, Gloo on CPUs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from distmis import backends
from distmis.train.grid import HParams
from distmis.train.settings import TrainSettings
from distmis.train.trials import TrialRecord, build_record, load_record, save_record

log = logging.getLogger(__name__)


def run_data_parallel(
    settings: TrainSettings,
    grid: Sequence[HParams],
    on_record: Callable[[TrialRecord], None],
) -> list[TrialRecord]:
    """Train every configuration with G Ray Train workers, in grid order.

    Configurations with a record from an earlier (interrupted) run are not trained again.
    Ray Train retries a failing run ``max_failures`` times from its last checkpoint; after
    that the configuration is recorded as failed and the next one starts.
    """
    from ray.train import FailureConfig, RunConfig, ScalingConfig

    backend = backends.get(settings.backend)
    records = []
    for position, hparams in enumerate(grid, start=1):
        done = load_record(settings, hparams.trial_id)
        if done is not None:
            log.info(
                "[%d/%d] %s already finished (%s); not retrained",
                position,
                len(grid),
                hparams.trial_id,
                done.status,
            )
            records.append(done)
            continue
        log.info(
            "[%d/%d] training %s on %d workers",
            position,
            len(grid),
            hparams.trial_id,
            settings.gpus,
        )
        trainer = backend.ray_trainer(
            settings.trial_config(hparams).to_dict(),
            use_gpu=settings.use_gpu,
            scaling_config=ScalingConfig(
                num_workers=settings.gpus,
                use_gpu=settings.use_gpu,
                resources_per_worker={
                    "CPU": settings.cpus_per_worker,
                    **({"GPU": 1} if settings.use_gpu else {}),
                },
            ),
            run_config=RunConfig(
                name=hparams.trial_id,
                storage_path=str((settings.out_dir / "ray").resolve()),
                failure_config=FailureConfig(max_failures=settings.max_failures),
            ),
        )
        started = time.time()
        error = None
        try:
            trainer.fit()
        except Exception as exc:  # noqa: BLE001 - any trial error is recorded, the grid goes on
            error = f"{type(exc).__name__}: {exc}"
            log.error("%s failed: %s", hparams.trial_id, error.splitlines()[0])
        record = build_record(
            settings, hparams, error=error, driver_start=started, driver_end=time.time()
        )
        save_record(settings, record)
        records.append(record)
        on_record(record)
    return records
