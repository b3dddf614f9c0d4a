"""What a training worker does the same way whatever the backend (TensorFlow or PyTorch).

A worker trains one configuration: in data mode Ray Train runs it on G workers at once; in
experiment mode Ray Tune runs it as one trial. Both backends' loops
(:mod:`distmis.train.loop`, :mod:`distmis.train.torch_loop`) leave the same files under
``<out>/trials/<trial_id>/`` (the contract :mod:`distmis.train.trials` reads):

- ``attempts.log``: one start time per attempt (rank 0);
- ``workers/rank<k>.json``: host, pid, GPU ids, batch sizes, steps and devices of each worker,
  and (torch) the training volumes it read;
- ``result.json``: times, volumes trained, final metrics ``loss``, ``dice``, ``val_loss``,
  ``val_dice`` (and ``dice_<channel>``), per-epoch ``history`` (rank 0, when it finished);
- ``failed.json``: time and error of a failed attempt;
- the model: ``model.keras`` (tensorflow) or ``model.pt`` (torch), from rank 0.

Nothing here imports TensorFlow or PyTorch.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

# config["settings"] keys (TrainSettings.worker_settings) every loop reads with [], so a typo
# fails loudly.
SETTINGS_KEYS = (
    "tfrecord_dir",
    "out_dir",
    "mode",
    "workers",
    "epochs",
    "batch_size_per_replica",
    "seed",
    "cache",
    "depth",
    "base_filters",
    "cpus_per_worker",
    "debug",
    "fail_trials",
    "backend",
    "use_gpu",
    "precision",
    "channels_last_3d",
    "loader_workers",
)

MODEL_FILES = {"tensorflow": "model.keras", "torch": "model.pt"}


class InjectedFailure(RuntimeError):
    """Raised on purpose by trials named in ``settings["fail_trials"]`` (fault-tolerance tests)."""


def trial_dir(config: Mapping[str, Any]) -> Path:
    return Path(config["settings"]["out_dir"]) / "trials" / config["trial_id"]


def gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [g for g in visible.split(",") if g]


def cpu_name() -> str:
    import platform

    return platform.processor() or platform.machine()


def reporter(mode: str) -> tuple[Callable[..., None], Callable[[], Any], int, int]:
    """(report, get_checkpoint, world_rank, world_size) for Ray Train or Ray Tune."""
    if mode == "data":
        import ray.train

        context = ray.train.get_context()
        return (
            ray.train.report,
            ray.train.get_checkpoint,
            context.get_world_rank(),
            context.get_world_size(),
        )
    import ray.tune

    return ray.tune.report, ray.tune.get_checkpoint, 0, 1


def checkpoint_type(mode: str) -> type:
    """The Checkpoint class the reporter of ``mode`` expects (Tune warns about Train's)."""
    if mode == "data":
        from ray.train import Checkpoint
    else:
        from ray.tune import Checkpoint
    return Checkpoint


def recording_failure(train: Callable[[Mapping[str, Any], float], None]):
    """Wrap a loop so a failure is noted in ``failed.json`` (time and error, for trials.csv)
    and re-raised, so Ray retries it or records it."""

    def run(config: Mapping[str, Any]) -> None:
        started = time.time()
        try:
            train(config, started)
        except BaseException as exc:
            directory = trial_dir(config)
            directory.mkdir(parents=True, exist_ok=True)
            failure = {
                "start_time": started,
                "end_time": time.time(),
                "error": f"{type(exc).__name__}: {exc}",
            }
            (directory / "failed.json").write_text(json.dumps(failure))
            raise

    run.__name__ = run.__qualname__ = f"recording_failure({train.__name__})"
    run.__doc__ = train.__doc__
    return run


def report_if_finished(config: Mapping[str, Any], report: Callable[..., None]) -> bool:
    """Report a trial whose ``result.json`` exists again instead of training it again.

    Belt and braces for resumption: Tune restores from its last saved experiment state,
    which can lag a trial that finished just before the job was killed.
    """
    finished = trial_dir(config) / "result.json"
    if not finished.is_file():
        return False
    stored = json.loads(finished.read_text())
    report({**stored["metrics"], "epoch": stored["epochs"], "time": stored["end_time"]})
    return True


def start_attempt(config: Mapping[str, Any], rank: int, started: float) -> None:
    """Log the attempt (rank 0) and raise for trials configured to fail."""
    if rank == 0:
        directory = trial_dir(config)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / "attempts.log").open("a") as fh:
            fh.write(f"{started}\n")
    if config["trial_id"] in config["settings"]["fail_trials"]:
        raise InjectedFailure(f"trial {config['trial_id']} was configured to fail")


def write_worker_file(
    config: Mapping[str, Any],
    *,
    rank: int,
    world_size: int,
    per_replica: int,
    global_batch: int,
    steps: int,
    devices: Sequence[str],
) -> None:
    workers_dir = trial_dir(config) / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "backend": config["settings"]["backend"],
        # Which frameworks this worker process has loaded (a torch worker should not hold
        # TensorFlow's hundreds of MB, nor the reverse).
        "frameworks_loaded": sorted({"tensorflow", "torch"} & set(sys.modules)),
        "rank": rank,
        "world_size": world_size,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_ids": gpu_ids(),
        "batch_size_per_replica": per_replica,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps,
        "devices": list(devices),
    }
    (workers_dir / f"rank{rank}.json").write_text(json.dumps(payload, indent=2))


def write_result(
    config: Mapping[str, Any],
    *,
    started: float,
    fit_started: float,
    fit_ended: float,
    steps_per_epoch: int,
    global_batch: int,
    resumed_from_epoch: int,
    metrics: Mapping[str, float],
    history: Sequence[Mapping[str, float]],
    devices: Sequence[str],
) -> None:
    """``result.json`` of a finished trial (rank 0 only), after its model file is saved.

    ``metrics`` are the last epoch's; ``history`` every epoch this attempt trained, in order.
    Volumes trained: the epochs this attempt ran × ``steps_per_epoch`` × ``global_batch``.
    """
    epochs = config["settings"]["epochs"]
    result = {
        "trial_id": config["trial_id"],
        "backend": config["settings"]["backend"],
        "start_time": started,
        "fit_start_time": fit_started,
        "end_time": time.time(),
        "fit_seconds": fit_ended - fit_started,
        "volumes_trained": (epochs - resumed_from_epoch) * steps_per_epoch * global_batch,
        "epochs": epochs,
        "resumed_from_epoch": resumed_from_epoch,
        "metrics": dict(metrics),
        "history": [dict(epoch) for epoch in history],
        "devices": list(devices),
    }
    (trial_dir(config) / "result.json").write_text(json.dumps(result, indent=2))


def add_to_worker_file(config: Mapping[str, Any], rank: int, **fields: Any) -> None:
    """Add what a worker measured by the end of training to its ``rank<k>.json``."""
    path = trial_dir(config) / "workers" / f"rank{rank}.json"
    payload = json.loads(path.read_text())
    payload.update(fields)
    path.write_text(json.dumps(payload, indent=2))
