"""The TensorFlow per-worker training function both parallelism modes run.

``train_loop_per_worker(config)`` trains one configuration with tf_keras. In data mode Ray Train runs it
on G workers at once (``TF_CONFIG`` set by ``TensorflowTrainer``, synchronous all-reduce via
``MultiWorkerMirroredStrategy``); in experiment mode Ray Tune runs it as one trial on one
GPU (or one CPU share). It reports metrics every epoch with a checkpoint of the weights,
resumes from the last checkpoint when restarted, and leaves behind, under
``<out>/trials/<trial_id>/``, a ``workers/rank<k>.json`` per worker (host, GPU, batch) and,
from rank 0, ``model.keras`` and ``result.json`` (the files of :mod:`distmis.train.worker`).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import distmis.model  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)
from distmis.train import worker

log = logging.getLogger(__name__)


def _limit_threads(cpus: int) -> None:
    """Keep this worker on its share of the cores, so G CPU workers do not oversubscribe."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(cpus)
    tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpus)))


def _describe_devices() -> list[str]:
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices():
        details = (
            tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        )
        names.append(f"{device.device_type}:{details.get('device_name', worker.cpu_name())}")
    return names


def _train(config: Mapping[str, Any], started: float) -> None:
    import tensorflow as tf
    import tf_keras as keras

    from distmis.data.info import DatasetInfo
    from distmis.model.losses import compile_unet
    from distmis.model.unet import build_unet
    from distmis.train.dataset import make_dataset

    hparams, settings = config["hparams"], config["settings"]
    _limit_threads(settings["cpus_per_worker"])
    report, get_checkpoint, rank, world_size = worker.reporter(settings["mode"])
    Checkpoint = worker.checkpoint_type(settings["mode"])  # noqa: N806 - a class
    # MultiWorkerMirroredStrategy configures collective ops, which TensorFlow only allows
    # before its runtime starts: create it before any dataset or tensor exists.
    strategy = (
        tf.distribute.MultiWorkerMirroredStrategy()
        if settings["mode"] == "data"
        else tf.distribute.get_strategy()
    )
    trial_dir = worker.trial_dir(config)
    if worker.report_if_finished(config, report):
        return
    worker.start_attempt(config, rank, started)

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

    worker.write_worker_file(
        config,
        rank=rank,
        world_size=world_size,
        per_replica=per_replica,
        global_batch=global_batch,
        steps=train_steps,
        devices=_describe_devices(),
    )

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
        worker.write_result(
            config,
            started=started,
            fit_started=fit_started,
            fit_ended=ended,
            steps_per_epoch=train_steps,
            global_batch=global_batch,
            resumed_from_epoch=initial_epoch,
            metrics=final,
            history=[
                {name: float(values[epoch]) for name, values in history.history.items()}
                for epoch in range(len(history.epoch))
            ],
            devices=_describe_devices(),
        )


train_loop_per_worker = worker.recording_failure(_train)
