"""The TensorFlow training steps: what :func:`distmis.trial.run_trial` calls for a
tf_keras trial.

In data mode Ray Train runs the loop on G workers at once (``TF_CONFIG`` set by
``TensorflowTrainer``, synchronous all-reduce via ``MultiWorkerMirroredStrategy``); in
experiment mode Ray Tune runs it as one trial on one GPU (or one CPU share). An epoch is one
``model.fit`` epoch of ``steps_per_epoch`` steps (:func:`fit_epoch`, which the benchmarks
time too), validation one ``model.evaluate`` over the val split. Checkpoints hold the weights
(``weights.h5``): a resumed trial continues with the same weights, but Adam's moment estimates
restart from zero.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
import tf_keras as keras

from distmis import backends
from distmis.backends.tensorflow.dataset import make_dataset
from distmis.backends.tensorflow.devices import training_device
from distmis.backends.tensorflow.losses import compile_unet
from distmis.backends.tensorflow.unet import build_unet
from distmis.shards.info import DatasetInfo
from distmis.trial import (
    RUNNER_RAY_TRAIN,
    Runner,
    ScalarBoard,
    TrialConfig,
    TrialSteps,
    cpu_name,
    train_loop,
)
from distmis.worker_group import train_grid

log = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.h5"


def limit_threads(cpus: int) -> None:
    """Keep this worker on its share of the cores, so G CPU workers do not oversubscribe."""
    # Raises once the TF runtime has started (a retried trial in a reused worker process),
    # which then keeps the share it was given first.
    with contextlib.suppress(RuntimeError):
        tf.config.threading.set_intra_op_parallelism_threads(cpus)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, cpus)))


@functools.cache
def multi_worker_strategy() -> tf.distribute.Strategy:
    """This process's one MultiWorkerMirroredStrategy (from Ray Train's ``TF_CONFIG``).

    TensorFlow configures its collective ops once per process, so every configuration a
    data-mode worker trains (one worker group for the whole grid) shares this strategy.
    """
    return tf.distribute.MultiWorkerMirroredStrategy()


def describe_devices() -> list[str]:
    names = []
    for device in tf.config.list_physical_devices():
        details = (
            tf.config.experimental.get_device_details(device) if device.device_type == "GPU" else {}
        )
        names.append(f"{device.device_type}:{details.get('device_name', cpu_name())}")
    return names


def epoch_seed(seed: int, epoch: int) -> int:
    """The training data order's seed for epoch ``epoch`` (0-based) of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_trial(seed: int) -> None:
    """Every random state a trial draws from (Python's, numpy's, TensorFlow's global seed and
    its op-seed counter) set from ``seed`` alone, so a configuration trains the same whatever
    ran before it in the process."""
    keras.utils.set_random_seed(seed)


def compiled_unet(
    image_shape: Sequence[int],
    label_channels: Sequence[str],
    *,
    depth: int,
    base_filters: int,
    norm: str,
    lr: float,
    beta_2: float,
    amsgrad: bool,
    seed: int,
) -> keras.Model:
    """The U-Net compiled with Adam, soft Dice and Dice metrics, as every trial trains it.

    Call inside ``strategy.scope()`` when training distributed.
    """
    seed_trial(seed)
    model = build_unet(
        tuple(image_shape),
        len(label_channels),
        depth=depth,
        base_filters=base_filters,
        norm=norm,
        seed=seed,
    )
    return compile_unet(model, lr, beta_2, amsgrad, label_channels)


def fit_epoch(
    model: keras.Model, data: tf.data.Dataset, steps: int, epoch: int = 0, verbose: int = 0
) -> dict[str, float]:
    """Train ``model`` for epoch ``epoch`` (0-based) of ``steps`` steps from ``data``; the
    epoch's mean loss and metrics."""
    history = model.fit(
        data, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=steps, verbose=verbose
    )
    return {name: float(values[-1]) for name, values in history.history.items()}


class _SummaryBoard(ScalarBoard):
    def __init__(self, directory: Path) -> None:
        self._writer = tf.summary.create_file_writer(str(directory))

    def add_scalar(self, name: str, value: float, epoch: int) -> None:
        with self._writer.as_default():
            tf.summary.scalar(name, value, step=epoch)

    def close(self) -> None:
        self._writer.close()


class KerasTrialSteps(TrialSteps):
    """A tf_keras trial: datasets, the compiled model under the run's strategy."""

    model_file = backends.get("tensorflow").trial_model_file

    def __init__(self, trial: TrialConfig, runner: Runner) -> None:
        settings = trial.settings
        limit_threads(settings.cpus_per_worker)
        # MultiWorkerMirroredStrategy configures collective ops, which TensorFlow only allows
        # before its runtime starts: create it before any dataset or tensor exists.
        strategy = (
            multi_worker_strategy()
            if runner.kind == RUNNER_RAY_TRAIN
            else tf.distribute.get_strategy()
        )
        # Before anything trains: TensorFlow without a usable GPU would train on the CPU.
        self.device_type, self.device_name = training_device(settings.use_gpu)
        # Each configuration starts from a fresh graph state (its own model and optimizer
        # variables), also when a data-mode worker trained another one just before.
        keras.backend.clear_session()
        # Before anything draws a random number: a seeded op (the datasets' shuffles) pairs
        # its own seed with the global one, and a process that trained another configuration
        # has that set already, so seeding later made this configuration's data order (and
        # its Dice) depend on what trained before it in the process.
        seed_trial(settings.seed)
        info = DatasetInfo.from_dir(Path(settings.tfrecord_dir))
        # Keras under a tf.distribute strategy takes the global batch and splits it across
        # replicas; each worker reads per_replica volumes per step from its own part of the data.
        self.global_batch = settings.batch_size_per_replica * runner.world_size
        self.steps_per_epoch = max(1, math.ceil(info.count("train") / self.global_batch))
        self.val_steps = max(1, math.ceil(info.count("val") / self.global_batch))
        self.verbose = 1 if settings.debug else 0
        shard = (runner.world_size, runner.rank) if runner.world_size > 1 else None

        def dataset(split: str, seed: int) -> tf.data.Dataset:
            return make_dataset(
                info,
                split,
                self.global_batch,
                shuffle=split == "train",
                seed=seed,
                reshuffle=False,
                cache=settings.cache,
                cache_scope=settings.cache_scope,
                repeat=True,
                shard=shard,
                shuffle_buffer=settings.shuffle_buffer,
                # The worker's cores parse records between steps (limit_threads gave them).
                parallel_calls=settings.cpus_per_worker,
            )

        # One training dataset per epoch, its order fixed by (seed, epoch) alone: reshuffling
        # one dataset per iterator depended on the strategy (MultiWorkerMirroredStrategy
        # copies the dataset for every fit, so data mode at G = 1 saw other orders than
        # experiment mode from epoch 2 on) and on where a resumed trial's iterator started.
        self.train_data = lambda epoch: dataset("train", epoch_seed(settings.seed, epoch))
        self.val_data = dataset("val", settings.seed)
        with strategy.scope():
            self.model = compiled_unet(
                info.image_shape,
                info.label_channels,
                seed=settings.seed,
                **trial.architecture(),
                **trial.adam(),
            )
        self.devices = describe_devices()

    def restore(self, directory: Path) -> None:
        self.model.load_weights(str(directory / WEIGHTS_FILE))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        return fit_epoch(
            self.model, self.train_data(epoch), self.steps_per_epoch, epoch, self.verbose
        )

    def validate(self, epoch: int) -> dict[str, float]:
        scores = self.model.evaluate(
            self.val_data, steps=self.val_steps, return_dict=True, verbose=self.verbose
        )
        return {f"val_{name}": float(value) for name, value in scores.items()}

    def save_checkpoint(self, directory: Path) -> None:
        # Every rank saves: under MultiWorkerMirroredStrategy reading sync-on-read variables
        # (BatchNorm statistics) is a collective all-reduce, so a save on rank 0 alone would
        # wait forever.
        self.model.save_weights(str(directory / WEIGHTS_FILE))

    def save_model(self, path: Path | None) -> None:
        if path is not None:
            self.model.save(str(path))
            return
        # Not rank 0: the same collective save, into a folder thrown away.
        scratch = Path(tempfile.mkdtemp(prefix="distmis-model-"))
        try:
            self.model.save(str(scratch / "model.keras"))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def open_board(self, directory: Path) -> ScalarBoard:
        return _SummaryBoard(directory)


train_loop_per_worker = train_loop(KerasTrialSteps)
train_grid_per_worker = train_grid(KerasTrialSteps)


# The backend's TrialSteps class, under the name distmis.backends.base.Backend looks up.
TRIAL_STEPS = KerasTrialSteps
