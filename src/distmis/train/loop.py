"""The per-worker training function both parallelism modes run.

``train_loop_per_worker(config)`` trains one configuration. In data mode Ray Train runs it
on G workers at once (``TF_CONFIG`` set by ``TensorflowTrainer``, synchronous all-reduce via
``MultiWorkerMirroredStrategy``); in experiment mode Ray Tune runs it as one trial on one
GPU (or one CPU share). It reports metrics every epoch with a checkpoint of the weights,
resumes from the last checkpoint when restarted, and leaves behind, under
``<out>/trials/<trial_id>/``, a ``workers/rank<k>.json`` per worker (host, GPU, batch) and,
from rank 0, ``model.keras`` and ``result.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import distmis.model  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

log = logging.getLogger(__name__)

# config["settings"] keys every caller must provide (read with [], so a typo fails loudly).
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
)


class InjectedFailure(RuntimeError):
    """Raised on purpose by trials named in ``settings["fail_trials"]`` (fault-tolerance tests)."""


def _limit_threads(cpus: int) -> None:
    """Keep this worker on its share of the cores, so G CPU workers do not oversubscribe."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpus)))


def _gpu_ids() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return [g for g in visible.split(",") if g]


def _describe_devices() -> list[str]:
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices():
        details = (
            tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        )
        names.append(f"{device.device_type}:{details.get('device_name', platform_cpu())}")
    return names


def platform_cpu() -> str:
    import platform

    return platform.processor() or platform.machine()


def _reporter(mode: str) -> tuple[Callable[..., None], Callable[[], Any], int, int]:
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


def train_loop_per_worker(config: Mapping[str, Any]) -> None:
    """Train one configuration (``config["hparams"]``) with ``config["settings"]``.

    A failure is noted in ``failed.json`` (time and error, for trials.csv) and re-raised so
    Ray retries or records it.
    """
    started = time.time()
    try:
        _train(config, started)
    except BaseException as exc:
        trial_dir = Path(config["settings"]["out_dir"]) / "trials" / config["trial_id"]
        trial_dir.mkdir(parents=True, exist_ok=True)
        failure = {
            "start_time": started,
            "end_time": time.time(),
            "error": f"{type(exc).__name__}: {exc}",
        }
        (trial_dir / "failed.json").write_text(json.dumps(failure))
        raise


def _train(config: Mapping[str, Any], started: float) -> None:
    import tensorflow as tf
    import tf_keras as keras
    from ray.train import Checkpoint

    from distmis.data.info import DatasetInfo
    from distmis.model.losses import compile_unet
    from distmis.model.unet import build_unet
    from distmis.train.dataset import make_dataset

    hparams, settings = config["hparams"], config["settings"]
    _limit_threads(settings["cpus_per_worker"])
    report, get_checkpoint, rank, world_size = _reporter(settings["mode"])
    # MultiWorkerMirroredStrategy configures collective ops, which TensorFlow only allows
    # before its runtime starts: create it before any dataset or tensor exists.
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if settings["mode"] == "data"
        else tf.distribute.get_strategy()
    )
    trial_dir = Path(settings["out_dir"]) / "trials" / config["trial_id"]
    finished = trial_dir / "result.json"
    if finished.is_file():
        # Belt and braces for resumption: Tune restores from its last saved experiment
        # state, which can lag a trial that finished just before the job was killed.
        # A trial whose result is on disk is reported again, never trained again.
        stored = json.loads(finished.read_text())
        report({**stored["metrics"], "epoch": stored["epochs"], "time": stored["end_time"]})
        return
    if rank == 0:
        trial_dir.mkdir(parents=True, exist_ok=True)
        with (trial_dir / "attempts.log").open("a") as fh:
            fh.write(f"{started}\n")

    if config["trial_id"] in settings["fail_trials"]:
        raise InjectedFailure(f"trial {config['trial_id']} was configured to fail")

    info = DatasetInfo.from_dir(Path(settings["tfrecord_dir"]))
    per_replica = settings["batch_size_per_replica"]
    # Keras under a tf.distribute strategy takes the global batch and splits it across
    # replicas; each worker reads per_replica volumes per step from its own part of the data.
    global_batch = per_replica * world_size
    shard = (world_size, rank) if world_size > 1 else None
    train_steps = max(1, math.ceil(info.count("train") / global_batch))
    val_steps = max(1, math.ceil(info.count("val") / global_batch))
    seed = settings["seed"]
    train_data = make_dataset(
        info,
        "train",
        global_batch,
        shuffle=True,
        seed=seed,
        cache=settings["cache"],
        repeat=True,
        shard=shard,
    )
    val_data = make_dataset(
        info,
        "val",
        global_batch,
        shuffle=False,
        seed=seed,
        cache=settings["cache"],
        repeat=True,
        shard=shard,
    )

    with strategy.scope():
        keras.utils.set_random_seed(seed)
        model = build_unet(
            tuple(info.image_shape),
            len(info.label_channels),
            depth=settings["depth"],
            base_filters=settings["base_filters"],
            norm=hparams["norm"],
            seed=seed,
        )
        compile_unet(
            model,
            config["lr_effective"],
            hparams["beta_2"],
            hparams["amsgrad"],
            info.label_channels,
        )

    initial_epoch = 0
    checkpoint = get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = json.loads((Path(ckpt_dir) / "state.json").read_text())
            model.load_weights(str(Path(ckpt_dir) / "weights.h5"))
        # Weights resume exactly; Adam's moment estimates restart from zero.
        initial_epoch = state["epoch"]
        log.info("resuming %s from epoch %d", config["trial_id"], initial_epoch)

    _write_worker_file(trial_dir, rank, world_size, per_replica, global_batch, train_steps)

    # Every worker saves, non-chief ones into a throw-away folder: under
    # MultiWorkerMirroredStrategy reading sync-on-read variables (BatchNorm statistics)
    # is a collective all-reduce, so a save on rank 0 alone would wait forever.
    scratch = Path(tempfile.mkdtemp(prefix=f"distmis-rank{rank}-"))

    class EpochReport(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, float] | None = None) -> None:
            metrics = {k: float(v) for k, v in (logs or {}).items()}
            metrics.update(epoch=epoch + 1, time=time.time())
            with tempfile.TemporaryDirectory() as tmp:
                self.model.save_weights(str(Path(tmp) / "weights.h5"))
                (Path(tmp) / "state.json").write_text(json.dumps({"epoch": epoch + 1}))
                report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)

    callbacks: list = [EpochReport()]
    if not settings["debug"]:
        board_dir = Path(settings["out_dir"]) / "tensorboard" / config["trial_id"]
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(board_dir if rank == 0 else scratch))
        )
    fit_started = time.time()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=settings["epochs"],
        initial_epoch=initial_epoch,
        steps_per_epoch=train_steps,
        validation_steps=val_steps,
        callbacks=callbacks,
        verbose=1 if settings["debug"] else 2,
    )
    ended = time.time()
    model.save(str((trial_dir if rank == 0 else scratch) / "model.keras"))
    shutil.rmtree(scratch, ignore_errors=True)
    if rank == 0:
        final = {k: float(v[-1]) for k, v in history.history.items()} if history.history else {}
        trained_epochs = settings["epochs"] - initial_epoch
        result = {
            "trial_id": config["trial_id"],
            "start_time": started,
            "fit_start_time": fit_started,
            "end_time": time.time(),
            "fit_seconds": ended - fit_started,
            "volumes_trained": trained_epochs * train_steps * global_batch,
            "epochs": settings["epochs"],
            "resumed_from_epoch": initial_epoch,
            "metrics": final,
            "devices": _describe_devices(),
        }
        (trial_dir / "result.json").write_text(json.dumps(result, indent=2))


def _write_worker_file(
    trial_dir: Path, rank: int, world_size: int, per_replica: int, global_batch: int, steps: int
) -> None:
    workers_dir = trial_dir / "workers"
    workers_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "rank": rank,
        "world_size": world_size,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "gpu_ids": _gpu_ids(),
        "batch_size_per_replica": per_replica,
        "global_batch_size": global_batch,
        "steps_per_epoch": steps,
        "devices": _describe_devices(),
    }
    (workers_dir / f"rank{rank}.json").write_text(json.dumps(payload, indent=2))
