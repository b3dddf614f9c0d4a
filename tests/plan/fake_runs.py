"""Fake training runs laid out exactly as the training stage writes them, timed to a plan.

:func:`write_run` builds a run folder (summary.json, trials.csv, and per trial result.json,
workers/rank0.json, epochs.jsonl) whose clock follows the planner's own model to the second:
set-up, trials placed on slots in grid order with ``relaunch`` between two on a slot, each
trial ``startup`` → epochs (``steps x step`` training, ``val_steps x val_step`` validation,
``epoch_gap`` between epochs, ``first_extra`` more in the first) → ``finish``, teardown. So
what :mod:`distmis.plan.measure` reads back is known exactly, and a prediction from it must
give the run's makespan.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

TRAIN_VOLUMES, VAL_VOLUMES, BATCH, EPOCHS = 8, 2, 2, 2
START = 1000.0  # makespan_start


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
) -> Path:
    """One run folder under ``root/{mode label}/{G}gpu`` (module docstring); returns it.

    ``workers``: per trial (default G for data, 1 for experiment; give k for hybrid).
    ``epochs_per_trial``: where ASHA stopped a trial early (status ``stopped``, no result).
    """
    workers = workers or (gpus if mode == "data" else 1)
    label = f"hybrid{workers}" if mode == "hybrid" else mode
    run = root / label / f"{gpus}gpu"
    slots = gpus // workers
    steps = math.ceil(TRAIN_VOLUMES / (BATCH * workers))
    val_steps = math.ceil(VAL_VOLUMES / (BATCH * workers))
    epochs_per_trial = epochs_per_trial or [EPOCHS] * grid
    free_at = [(START + timing.setup, index) for index in range(slots)]
    used: set[int] = set()
    rows, ends = [], []
    for index, epochs in enumerate(epochs_per_trial):
        freed, slot = heapq.heappop(free_at)
        start = freed + (timing.relaunch if slot in used else 0.0)
        used.add(slot)
        trial_id = f"t{index}"
        folder = run / "trials" / trial_id
        (folder / "workers").mkdir(parents=True)
        clock = start + (timing.first_startup if index == 0 else timing.startup)
        fit_start = clock
        lines = []
        for epoch in range(1, epochs + 1):
            train = steps * timing.step + (timing.first_extra if epoch == 1 else 0.0)
            validated = clock + train + val_steps * timing.val_step
            lines.append(
                {
                    "epoch": epoch,
                    "time": validated,
                    "started": clock,
                    "train_seconds": train,
                    "val_seconds": val_steps * timing.val_step,
                    "val_dice": 0.5,
                }
            )
            clock = validated + timing.epoch_gap
        end = lines[-1]["time"] + timing.finish
        stopped = epochs < EPOCHS
        (folder / "epochs.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        if not stopped:
            result = {
                "start_time": start,
                "fit_start_time": fit_start,
                "end_time": end,
                "fit_seconds": end - timing.finish - fit_start,
                "epochs": EPOCHS,
                "startup_seconds": fit_start - start,
                "history": [],
            }
            (folder / "result.json").write_text(json.dumps(result))
        rank0 = {"steps_per_epoch": steps, "global_batch_size": BATCH * workers}
        (folder / "workers" / "rank0.json").write_text(json.dumps({**rank0, "world_size": workers}))
        heapq.heappush(free_at, (end, slot))
        ends.append(end)
        rows.append(
            {
                "trial_id": trial_id,
                "status": "stopped" if stopped else "ok",
                "start_time": start,
                "end_time": end,
                "seconds": end - start,
                "workers": workers,
                "epochs": EPOCHS,
                "epochs_run": epochs,
                "startup_seconds": "" if stopped else fit_start - start,
            }
        )
    with (run / "trials.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    makespan_end = max(ends) + timing.teardown
    summary = {
        "backend": backend,
        "mode": mode,
        "gpus": gpus,
        "gpus_per_trial": workers,
        "makespan_seconds": makespan_end - START,
        "makespan_start": START,
        "makespan_end": makespan_end,
        "node_count": node_count,
        "scheduler": "asha" if any(e < EPOCHS for e in epochs_per_trial) else "none",
        "trial_count": grid,
        "settings": {
            "epochs": EPOCHS,
            "batch_size_per_replica": BATCH,
            "tfrecord_dir": str(tfrecord_dir) if tfrecord_dir else None,
        },
        "devices_seen": ["CPU:x86_64"],
    }
    (run / "summary.json").write_text(json.dumps(summary))
    return run
