"""tf.data input pipelines over the TFRecord shards described by ``info.json``.

The pipeline of :func:`make_dataset`::

    shard files ─(worker's files)─ shuffle file order ─ interleave(TFRecordDataset)
      ─(worker's records)─ parse ─ cache? ─ shuffle ─ repeat? ─ batch ─ prefetch

Elements are ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and float32 ``(B, X, Y, Z, K)``.
Feature names and byte layouts come from :mod:`distmis.data.records`; shapes, dtype and
compression from :class:`~distmis.data.info.DatasetInfo`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from distmis.data import records
from distmis.data.info import DatasetInfo

log = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
# Shards read at once; more only adds open files and buffers on tiny splits.
MAX_CYCLE_LENGTH = 8


def _check_split(info: DatasetInfo, split: str) -> list[str]:
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    files = info.shard_files(split)
    if info.count(split) == 0:
        raise ValueError(f"split {split!r} of {info.root} holds no records")
    return files


def _check_shard(shard: tuple[int, int] | None) -> None:
    if shard is None:
        return
    num_workers, index = shard
    if num_workers < 1 or not 0 <= index < num_workers:
        raise ValueError(f"shard must be (num_workers >= 1, 0 <= index < num_workers), got {shard}")


def feature_spec() -> dict:
    """The ``tf.io.parse_single_example`` spec of :mod:`distmis.data.records`' schema."""
    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([4], tf.int64),
        "case_id": tf.io.FixedLenFeature([], tf.string),
    }


def _parser(info: DatasetInfo):
    """A map function: serialised record → ``(image (X,Y,Z,C), label (X,Y,Z,K))`` float32."""
    spec = feature_spec()
    image_dtype = tf.as_dtype(records.IMAGE_DTYPES[info.image_dtype])
    label_dtype = tf.as_dtype(records.LABEL_DTYPE)
    image_shape, label_shape = tuple(info.image_shape), tuple(info.label_shape)

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized, spec)
        # A record of another shape would reshape without error when the voxel count matches.
        tf.debugging.assert_equal(
            parsed["shape"], tf.constant(image_shape, tf.int64), message="record shape"
        )
        image = tf.io.decode_raw(parsed["image"], image_dtype, little_endian=True)
        image = tf.reshape(tf.cast(image, tf.float32), image_shape)
        label = tf.io.decode_raw(parsed["label"], label_dtype)
        label = tf.reshape(tf.cast(label, tf.float32), label_shape)
        return image, label

    return parse


def _records(info: DatasetInfo, files: list[str], shuffle: bool, seed: int) -> tf.data.Dataset:
    """Serialised records of ``files``, interleaved in a deterministic (seeded) order."""
    dataset = tf.data.Dataset.from_tensor_slices(files)
    if shuffle:
        dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return dataset.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=info.tf_compression),
        cycle_length=max(1, min(len(files), MAX_CYCLE_LENGTH)),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )


def _worker_files(
    files: list[str], shard: tuple[int, int] | None
) -> tuple[list[str], tuple[int, int] | None]:
    """The files this worker reads and the record sharding still to apply (None: none).

    With at least one file per worker, each worker reads only its own files (every
    ``num_workers``-th), so no worker reads or parses records it then discards. With fewer
    files, file sharding would leave a worker without data, and synchronous all-reduce
    training would hang waiting for it; then every worker reads every file and keeps every
    ``num_workers``-th record instead. That stays a partition of the split only because all
    workers see the records in the same order: the caller then keeps the file order fixed
    (a seeded shuffle would also depend on each worker's global TF seed) and the interleave
    is deterministic.
    """
    if shard is None:
        return files, None
    num_workers, index = shard
    if len(files) >= num_workers:
        return files[index::num_workers], None
    log.info(
        "%d shard files for %d workers: sharding by record, every worker reads every file",
        len(files),
        num_workers,
    )
    return files, shard


def make_dataset(
    info: DatasetInfo,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    cache: bool = False,
    repeat: bool = False,
    shard: tuple[int, int] | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Batches ``(image (B, X, Y, Z, C), label (B, X, Y, Z, K))``, both float32, of ``split``.

    ``shuffle`` shuffles file order and records (buffer = the split's record count, reshuffled
    each epoch), both seeded with ``seed``, so the order is reproducible. ``cache`` keeps the
    decoded records in memory after the first pass. ``shard=(num_workers, index)`` keeps this
    worker's part of the split (by file when possible, see :func:`_worker_files`); workers'
    parts are disjoint and cover the split.

    Under ``MultiWorkerMirroredStrategy``, Keras treats ``batch_size`` as the global batch
    and splits every batch across the replicas in sync (tf.distribute rebatching), so pass
    the global batch size; with uneven parts use ``repeat=True`` and ``steps_per_epoch`` so
    every worker runs the same number of steps.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_shard(shard)
    files, record_shard = _worker_files(_check_split(info, split), shard)
    # Only shuffle file order when each worker owns its files; see _worker_files.
    dataset = _records(info, files, shuffle and record_shard is None, seed)
    if record_shard is not None:
        # Before parsing, so records of other workers are skipped undecoded.
        dataset = dataset.shard(*record_shard)
    dataset = dataset.map(_parser(info), num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if shuffle:
        buffer = max(1, info.count(split))
        dataset = dataset.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)
    if shard is not None:
        options = tf.data.Options()
        # We already gave this worker its part; tf.distribute's default (AUTO) policy would
        # shard each worker's part again across workers, keeping only 1/num_workers of it.
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        dataset = dataset.with_options(options)
    return dataset


def load_arrays(info: DatasetInfo, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The whole split in file order as numpy: images ``(N, X, Y, Z, C)``, labels ``(N, ..., K)``.

    Holds everything in memory; meant for small data (tests, benchmarks).
    """
    files = _check_split(info, split)
    dataset = tf.data.TFRecordDataset(files, compression_type=info.tf_compression)
    images, labels = [], []
    for image, label in dataset.map(_parser(info)).as_numpy_iterator():
        images.append(image)
        labels.append(label)
    return np.stack(images), np.stack(labels)


def iter_records(info: DatasetInfo, split: str) -> Iterator[records.Record]:
    """Decoded :class:`~distmis.data.records.Record` of ``split``, shard by shard in file order.

    An unknown split raises at once, not when the records are first asked for.
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    dataset = tf.data.TFRecordDataset(info.shard_files(split), compression_type=info.tf_compression)
    labels = len(info.label_channels)
    return (records.decode_example(raw.numpy(), info.image_dtype, labels) for raw in dataset)
