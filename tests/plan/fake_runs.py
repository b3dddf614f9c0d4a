"""Fake training runs laid out exactly as the training stage writes them, timed to a plan.

:func:`write_run` builds a run folder (summary.json, trials.csv, and per trial result.json,
workers/rank0.json, epochs.jsonl), written through their contract (:mod:`distmis.run_folder`),
whose clock follows the planner's own model to the second:
set-up, trials placed on slots in grid order with ``relaunch`` between two on a slot, each
trial ``startup`` → epochs (``steps x step`` training, ``val_steps x val_step`` validation,
``epoch_gap`` between epochs, ``first_extra`` more in the first) → ``finish``, teardown. So
what :mod:`distmis.plan.measure` reads back is known exactly, and a prediction from it must
give the run's makespan.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

from distmis import run_folder
from distmis.hparams import HParams
from distmis.run_folder import (
    EpochRecord,
    RequestedResources,
    Resources,
    RunSearch,
    RunSummary,
    TrialRecord,
    TrialResult,
    WorkerInfo,
)

TRAIN_VOLUMES, VAL_VOLUMES, BATCH, EPOCHS = 8, 2, 2, 2
START = 1000.0  # makespan_start
GRID = RunSearch("grid", None, 0)


@dataclass(frozen=True)
class Timing:
    step: float = 1.0  # a training step (seconds)
    val_step: float = 0.25
    first_startup: float = 4.0
    startup: float = 2.0
    first_extra: float = 0.5
    epoch_gap: float = 0.1
    finish: float = 0.2
    relaunch: float = 1.0
    spread: float = 0.0  # the first wave's last start after its first
    setup: float = 3.0
    teardown: float = 0.5


def write_info(folder: Path) -> Path:
    """The parts of info.json :class:`~distmis.shards.info.DatasetInfo` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    shard = {"file": "s.tfrecord", "sha256": ""}
    payload = {
        "image_shape": [8, 8, 8, 4],
        "label_shape": [8, 8, 8, 1],
        "image_dtype": "float16",
        "compression": "none",
        "label_channels": ["whole_tumor"],
        "modalities": ["FLAIR", "T1w", "t1gd", "T2w"],
        "splits": {
            "train": {"shards": [{**shard, "records": TRAIN_VOLUMES}]},
            "val": {"shards": [{**shard, "records": VAL_VOLUMES}]},
        },
    }
    (folder / "info.json").write_text(json.dumps(payload))
    return folder


def write_run(
    root: Path,
    mode: str,
    gpus: int,
    *,
    timing: Timing = Timing(),
    workers: int | None = None,
    grid: int = 2,
    tfrecord_dir: Path | None = None,
    backend: str = "torch",
    node_count: int = 1,
    epochs_per_trial: list[int] | None = None,
    train_volumes: int = TRAIN_VOLUMES,
    search: RunSearch = GRID,
) -> Path:
    """One run folder under ``root/{mode label}/{G}gpu`` (module docstring); returns it.

    ``workers``: per trial (default G for data, 1 for experiment; give k for hybrid).
    ``epochs_per_trial``: where ASHA stopped a trial early (status ``stopped``, no result).
    ``search``: how summary.json says the configurations were chosen (``grid`` of them).
    ``tfrecord_dir`` is only recorded (summary.json's settings); the split sizes the run
    trained on are ``train_volumes`` and VAL_VOLUMES.
    """
    workers = workers or (gpus if mode == "data" else 1)
    label = f"hybrid{workers}" if mode == "hybrid" else mode
    run = root / label / f"{gpus}gpu"
    slots = gpus // workers
    steps = math.ceil(TRAIN_VOLUMES / (BATCH * workers))
    val_steps = math.ceil(VAL_VOLUMES / (BATCH * workers))
    epochs_per_trial = epochs_per_trial or [EPOCHS] * grid
    wave = min(slots, len(epochs_per_trial))
    spacing = timing.spread / (wave - 1) if wave > 1 else 0.0
    free_at = [(START + timing.setup + index * spacing, index) for index in range(slots)]
    used: set[int] = set()
    rows, ends = [], []
    for index, epochs in enumerate(epochs_per_trial):
        freed, slot = heapq.heappop(free_at)
        start = freed + (timing.relaunch if slot in used else 0.0)
        used.add(slot)
        trial_id = f"t{index}"
        folder = run_folder.trial_folder(run, trial_id)
        clock = start + (timing.first_startup if index == 0 else timing.startup)
        fit_start = clock
        folder.mkdir(parents=True)
        metrics = {"loss": 0.4, "dice": 0.5, "val_loss": 0.3, "val_dice": 0.5}
        for epoch in range(1, epochs + 1):
            train = steps * timing.step + (timing.first_extra if epoch == 1 else 0.0)
            validated = clock + train + val_steps * timing.val_step
            record = EpochRecord(
                epoch=epoch,
                time=validated,
                started=clock,
                train_seconds=train,
                val_seconds=val_steps * timing.val_step,
                metrics=metrics,
            )
            run_folder.append_epoch(folder, record)
            clock = validated + timing.epoch_gap
        end = validated + timing.finish
        stopped = epochs < EPOCHS
        if not stopped:
            TrialResult(
                trial_id=trial_id,
                backend=backend,
                start_time=start,
                fit_start_time=fit_start,
                end_time=end,
                fit_seconds=end - timing.finish - fit_start,
                startup_seconds=fit_start - start,
                volumes_trained=EPOCHS * steps * BATCH * workers,
                epochs=EPOCHS,
                resumed_from_epoch=0,
                metrics=metrics,
                history=(metrics,) * EPOCHS,
                devices=("CPU:x86_64",),
            ).write(folder / run_folder.RESULT_FILE)
        _worker(workers, steps, backend).write(run_folder.worker_path(folder, 0))
        heapq.heappush(free_at, (end, slot))
        ends.append(end)
        rows.append(
            TrialRecord(
                trial_id=trial_id,
                hparams=HParams(lr=1e-3, norm="batch", beta_2=0.999, amsgrad=False),
                proposal=0,
                proposed_time=0.0,
                lr_effective=1e-3,
                epochs=EPOCHS,
                batch_size_per_replica=BATCH,
                global_batch_size=BATCH * workers,
                workers=workers,
                status="stopped" if stopped else "ok",
                start_time=start,
                end_time=end,
                seconds=end - start,
                volumes_per_second=epochs * steps * BATCH * workers / (end - start),
                train_loss=0.4,
                train_dice=0.5,
                val_loss=0.3,
                val_dice=0.5,
                node="vm",
                worker="rank0:pid=1",
                attempts=1,
                error="",
                epochs_run=epochs,
                startup_seconds=None if stopped else fit_start - start,
            )
        )
    run_folder.write_trials(run / run_folder.TRIALS_FILE, rows)
    makespan_end = max(ends) + timing.teardown
    summary = RunSummary(
        backend=backend,
        mode=mode,
        runner="ray",
        gpus_per_trial=workers,
        scheduler="asha" if any(e < EPOCHS for e in epochs_per_trial) else "none",
        search=search,
        startup_seconds=sum(r.startup_seconds or 0.0 for r in rows),
        gpus=gpus,
        workers=workers,
        nodes_seen=("vm",),
        node_count=node_count,
        makespan_seconds=makespan_end - START,
        makespan_start=START,
        makespan_end=makespan_end,
        resumed=False,
        trial_count=grid,
        ok_count=sum(r.status == "ok" for r in rows),
        failed_count=0,
        stopped_count=sum(r.status == "stopped" for r in rows),
        best=None,
        resources=Resources(
            requested=RequestedResources(cpus=gpus, gpus=0, cpus_per_worker=1, use_gpu=False),
            ray_cluster={"CPU": float(gpus)},
            cpus_visible_to_job=gpus,
            slurm={},
        ),
        settings={
            "epochs": EPOCHS,
            "batch_size_per_replica": BATCH,
            "tfrecord_dir": str(tfrecord_dir) if tfrecord_dir else None,
        },
        devices_seen=("CPU:x86_64",),
        worker_devices=(),
        versions={"python": "3"},
        train_volumes=train_volumes,
        val_volumes=VAL_VOLUMES,
    )
    summary.write(run / run_folder.SUMMARY_FILE)
    return run


def _worker(workers: int, steps: int, backend: str) -> WorkerInfo:
    return WorkerInfo(
        backend=backend,
        frameworks_loaded=(backend,),
        rank=0,
        world_size=workers,
        host="vm",
        pid=1,
        gpu_ids=(),
        batch_size_per_replica=BATCH,
        global_batch_size=BATCH * workers,
        steps_per_epoch=steps,
        devices=("CPU:x86_64",),
        device_type="cpu",
        device_name="x86_64",
        train_volumes_read=None,
    )
