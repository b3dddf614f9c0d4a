"""``benchmarks/train.py --backend tensorflow``: the Keras trial's step, one ``fit_epoch`` of
``compiled_unet``, fed by tensors in memory or by ``make_dataset``.

``distmis.backends.tensorflow.loop`` is imported first: its package sets ``TF_USE_LEGACY_KERAS``
before TensorFlow loads.
"""

from __future__ import annotations

from collections.abc import Iterator

from distmis.backends.tensorflow.loop import compiled_unet, fit_epoch, limit_threads

# isort: split
import numpy as np
import tensorflow as tf
from _training import SEED, BenchBackend, StepSettings, node_cache_scope

from distmis.backends.tensorflow.dataset import load_arrays, make_dataset
from distmis.shards.info import DatasetInfo


class TensorflowBench(BenchBackend):
    name = "tensorflow"
    step_name = "fit_epoch"
    pipeline_name = "make_dataset"
    dists = ("numpy", "tensorflow", "tf-keras", "ray")
    # What TensorFlow reads to size thread pools or pick kernels.
    env_keys = (
        "TF_NUM_INTRAOP_THREADS",
        "TF_NUM_INTEROP_THREADS",
        "TF_ENABLE_ONEDNN_OPTS",
        "TF_USE_LEGACY_KERAS",
        "TF_CPP_MIN_LOG_LEVEL",
    )

    def __init__(self, cpus: int, info: DatasetInfo, settings: StepSettings) -> None:
        limit_threads(cpus)  # the trial's own call: before anything starts the TF runtime
        self.settings = settings
        self.model = compiled_unet(
            info.image_shape,
            info.label_channels,
            seed=settings.seed,
            **settings.architecture(),
            **settings.optimizer(),
        )

    def thread_pools(self) -> tuple[int, int]:
        threading = tf.config.threading
        return (
            threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads(),
        )

    def describe(self) -> str:
        s, optimizer = self.settings, self.model.optimizer
        return (
            f"{self.model.name} depth {s.depth} base {s.base_filters} {s.hparams.norm} norm,"
            f" {self.model.count_params()} parameters; compiled_unet with"
            f" {type(optimizer).__name__} ({optimizer.beta_1:g}, {optimizer.beta_2:g})"
            f" eps {optimizer.epsilon:g} lr {s.hparams.lr:g}; one fit_epoch per run; float32"
        )

    def weights_checksum(self) -> float:
        return float(sum(np.abs(w).sum(dtype=np.float64) for w in self.model.get_weights()))

    def in_memory(self, info: DatasetInfo, batch: int) -> tuple[tf.data.Dataset, int]:
        images, labels = load_arrays(info, "train")
        # What fit(numpy arrays, shuffle=True) builds inside Keras, with fit_epoch's batch:
        # the arrays as tensors, reshuffled every pass, no decoding.
        data = (
            tf.data.Dataset.from_tensor_slices((images, labels))
            .shuffle(len(images), seed=SEED, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch)
            .prefetch(tf.data.AUTOTUNE)
        )
        return data, images.nbytes + labels.nbytes

    def pipeline(self, info: DatasetInfo, batch: int, steps_per_epoch: int) -> tf.data.Dataset:
        # Repeats without end; fit_epoch takes steps_per_epoch from it, as a trial does.
        return make_dataset(
            info,
            "train",
            batch,
            shuffle=True,
            seed=SEED,
            cache=True,
            cache_scope=node_cache_scope(),
            repeat=True,
        )

    def train(self, feed: tf.data.Dataset, steps: int, epoch: int) -> float:
        return fit_epoch(self.model, feed, steps, epoch)["loss"]

    def batch_sizes(self, feed: tf.data.Dataset, epoch: int) -> Iterator[int]:
        # A fresh iterator is a new epoch: the shuffle reshuffles on each.
        return (int(images.shape[0]) for images, _labels in feed)


BENCH = TensorflowBench
