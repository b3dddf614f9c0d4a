"""Data parallelism: the grid one configuration at a time, each over G Ray Train workers.

TensorFlow runs under ``TensorflowTrainer`` (``MultiWorkerMirroredStrategy``), PyTorch under
``TorchTrainer`` (``DistributedDataParallel``; NCCL on GPUs, Gloo on CPUs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from distmis.train.grid import HParams
from distmis.train.results import TrialRecord
from distmis.train.settings import TrainSettings
from distmis.train.trials import build_record, load_record, save_record

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
        trainer = _trainer(
            settings,
            train_loop_config={
                "trial_id": hparams.trial_id,
                "hparams": hparams.to_dict(),
                "lr_effective": settings.lr_effective(hparams),
                "settings": settings.worker_settings(),
            },
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


def _trainer(settings: TrainSettings, **kwargs):
    """The backend's Ray Train trainer around its per-worker loop."""
    if settings.backend == "torch":
        from ray.train.torch import TorchConfig, TorchTrainer

        from distmis.train.torch_loop import train_loop_per_worker

        # NCCL all-reduces GPU tensors, Gloo CPU ones (the CPU demo and CI).
        backend = "nccl" if settings.use_gpu else "gloo"
        return TorchTrainer(
            train_loop_per_worker, torch_config=TorchConfig(backend=backend), **kwargs
        )
    from ray.train.tensorflow import TensorflowTrainer

    from distmis.train.loop import train_loop_per_worker

    return TensorflowTrainer(train_loop_per_worker, **kwargs)
