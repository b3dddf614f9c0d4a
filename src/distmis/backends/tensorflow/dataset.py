"""tf.data input pipelines over the TFRecord shards described by ``info.json``.

The pipeline of :func:`make_dataset`, per worker (its part of the split from
:func:`distmis.shards.parts.rank_part`, the same part the torch backend reads)::

    streamed: worker's shards ─ shuffle shard order ─ interleave(one reader per shard:
              distmis.shards.parts.read_part, stored dtype, uint8 labels) ─ shuffle(shuffle_buffer)
    cached:   positions of the worker's records in the node's shared copy of the split
              (distmis.shards.node_cache) ─ shuffle(all of them) ─ read from the memory map
    ─ repeat? ─ batch ─ to float32 ─ prefetch

Elements are ``(image, label)``: float32 ``(B, X, Y, Z, C)`` and float32 ``(B, X, Y, Z, K)``.
Records keep their stored dtype (float16 or float32 images, uint8 labels) until a batch is
formed, so the shuffle buffer holds stored bytes, not 2-4× as many.

Memory of a streaming worker is bounded by its buffers, whatever the split's size:
``shuffle_buffer`` records, the record being read (a reusable block) and its tensor, the batch
being formed and :data:`PREFETCH_BATCHES` float32 batch. At the paper's size (float16 +
binary labels, 79 MB a record; a float32 batch of 2 is 298 MB) and the defaults that is
~1.5 GB besides TensorFlow itself. Feature names and byte layouts come from
:mod:`distmis.shards.records`; shapes, dtype and compression from
:class:`~distmis.shards.info.DatasetInfo`.
"""

from __future__ import annotations

import atexit
import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow as tf

from distmis.shards import buffers, node_cache, records
from distmis.shards.info import IMAGE_DTYPES, LABEL_DTYPE, DatasetInfo
from distmis.shards.parts import Part, rank_part, read_part

log = logging.getLogger(__name__)

# Shards read at once; more only adds open files and buffers on tiny splits.
MAX_CYCLE_LENGTH = 8
# The schema's train.shuffle_buffer default (records).
SHUFFLE_BUFFER = 6
# Batches ready ahead of the step (double buffering with the one in use); each is a float32
# copy of B records, 298 MB at the paper's size and batch 2.
PREFETCH_BATCHES = 1


# Whether a pipeline of ours has run Python on tf.data's threads in this process (see
# close_open_iterators); set by the generator and the cache reader.
_ran_python_on_tf_threads = False


def close_open_iterators() -> int:
    """Destroy every tf.data iterator still open in this process; returns how many.

    Registered with :mod:`atexit`. Both pipelines run Python on tf.data's threads (the
    streamed reader is a ``from_generator``, the cached one a ``numpy_function``). An iterator
    still referenced when the interpreter finalises (a module-level ``it = iter(dataset)``, a
    notebook's variable, a reference cycle) used to be destroyed only as the modules were torn
    down, after CPython had begun to end every other thread that asks for the GIL: a reader
    caught in a file read or CRC (GIL released) died inside its ``PyFunc`` kernel, and the
    iterator's destructor waited for that kernel for ever (the process hung on futexes after
    its last line). At ``atexit`` those threads can still take the GIL, and TensorFlow releases
    it while it destroys a resource, so dropping the iterators' resources here cancels their
    threads cleanly. Callers own their iterators, so the garbage collector's list finds them
    (unreachable ones too); a process that never ran one of our pipelines skips the search
    (~0.2 s with TensorFlow and Keras loaded).
    """
    if not _ran_python_on_tf_threads:
        return 0
    iterators = [o for o in gc.get_objects() if issubclass(type(o), tf.data.Iterator)]
    closed = 0
    for iterator in iterators:
        # The resource handle owns the C++ iterator and its threads; a later next() on the
        # Python object fails with AttributeError rather than touching freed state.
        if getattr(iterator, "__dict__", {}).pop("_iterator_resource", None) is not None:
            closed += 1
    return closed


atexit.register(close_open_iterators)


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
    """The ``tf.io.parse_single_example`` spec of :mod:`distmis.shards.records`' schema."""
    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([4], tf.int64),
        "case_id": tf.io.FixedLenFeature([], tf.string),
    }


def record_parser(info: DatasetInfo):
    """A map function: serialised record → ``(image (X,Y,Z,C), label (X,Y,Z,K))`` as stored
    (image in info.json's dtype, label uint8)."""
    spec = feature_spec()
    image_dtype = tf.as_dtype(IMAGE_DTYPES[info.image_dtype])
    label_dtype = tf.as_dtype(LABEL_DTYPE)
    image_shape, label_shape = tuple(info.image_shape), tuple(info.label_shape)

    def parse(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_single_example(serialized, spec)
        # A record of another shape would reshape without error when the voxel count matches.
        tf.debugging.assert_equal(
            parsed["shape"], tf.constant(image_shape, tf.int64), message="record shape"
        )
        image = tf.io.decode_raw(parsed["image"], image_dtype, little_endian=True)
        label = tf.io.decode_raw(parsed["label"], label_dtype)
        return tf.reshape(image, image_shape), tf.reshape(label, label_shape)

    return parse


def _to_float32(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.cast(image, tf.float32), tf.cast(label, tf.float32)


def record_signature(info: DatasetInfo) -> tuple[tf.TensorSpec, tf.TensorSpec]:
    image_dtype = tf.as_dtype(IMAGE_DTYPES[info.image_dtype])
    return (
        tf.TensorSpec(info.image_shape, image_dtype),
        tf.TensorSpec(info.label_shape, tf.as_dtype(LABEL_DTYPE)),
    )


def part_records(info: DatasetInfo, part: Part):
    """A generator function of a shard's index in ``part`` (or of none: the whole part):
    ``(image, label)`` as stored, read by :func:`distmis.shards.parts.read_part` into reusable
    blocks (CRC-checked, decoded as views); tf.data copies each into a tensor, after which its
    block is free again."""
    k = len(info.label_channels)

    def generate(index=None):
        global _ran_python_on_tf_threads
        _ran_python_on_tf_threads = True
        piece = part if index is None else Part((part.shards[int(index)],))
        pool = buffers.process_pool()
        for record in read_part(piece, info.image_dtype, k, info.compression, pool):
            yield record.image, record.label
            # A suspended generator of every open shard would otherwise hold a block each.
            del record

    return generate


def _streamed(
    info: DatasetInfo, part: Part, shuffle: bool, seed: int, reshuffle: bool
) -> tf.data.Dataset:
    """The part's records, decoded, in a deterministic (seeded) order.

    Read by the project's TFRecord reader, not ``TFRecordDataset`` + ``parse_single_example``:
    that path copies each record three times (serialised, parsed feature, decoded tensor) into
    fresh memory and measured 2.5 volumes/s per core at the paper's size against 6.6 (float32)
    and 11 (float16) this way (docs/explanation/input-memory.md "Sizing a node").

    Whole-shard parts read up to :data:`MAX_CYCLE_LENGTH` shards interleaved, in a shard order
    reshuffled each epoch. A record-sharded part (fewer shards than workers) reads its shards
    one after another in info.json order and keeps every ``stride``-th record: that is a
    partition of the split only because every worker sees the records in the same order.
    """
    signature = record_signature(info)
    generate = part_records(info, part)
    if part.stride > 1:
        return tf.data.Dataset.from_generator(generate, output_signature=signature)
    order = tf.data.Dataset.range(len(part.shards))
    if shuffle:
        order = order.shuffle(len(part.shards), seed=seed, reshuffle_each_iteration=reshuffle)
    # Sequential, so deterministic, reads (no num_parallel_calls): a parallel interleave
    # buffers records of every open shard, 79-166 MB each at the paper's size.
    return order.interleave(
        lambda index: tf.data.Dataset.from_generator(
            generate, args=(index,), output_signature=signature
        ),
        cycle_length=max(1, min(len(part.shards), MAX_CYCLE_LENGTH)),
    )


def _from_node_cache(
    info: DatasetInfo,
    split: str,
    part: Part,
    cache_scope: Path | str,
    shuffle: bool,
    seed: int,
    reshuffle: bool,
    repeat: bool,
    parallel_calls: int,
) -> tf.data.Dataset:
    """The part's records read from the node's shared copy (one memory copy per record)."""
    cached = node_cache.open_split(info, split, Path(cache_scope))
    positions = part.split_positions(info.splits[split])
    dataset = tf.data.Dataset.from_tensor_slices(positions)
    if shuffle:
        dataset = dataset.shuffle(len(positions), seed=seed, reshuffle_each_iteration=reshuffle)
    if repeat:
        dataset = dataset.repeat()
    image_dtype = tf.as_dtype(IMAGE_DTYPES[info.image_dtype])
    label_dtype = tf.as_dtype(LABEL_DTYPE)

    def read(position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        global _ran_python_on_tf_threads
        _ran_python_on_tf_threads = True
        return cached.images[position], cached.labels[position]

    def load(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image, label = tf.numpy_function(read, [position], (image_dtype, label_dtype))
        return tf.ensure_shape(image, info.image_shape), tf.ensure_shape(label, info.label_shape)

    return dataset.map(load, num_parallel_calls=parallel_calls, deterministic=True)


def make_dataset(
    info: DatasetInfo,
    split: str,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    cache: bool = False,
    cache_scope: Path | str | None = None,
    repeat: bool = False,
    shard: tuple[int, int] | None = None,
    drop_remainder: bool = False,
    shuffle_buffer: int = SHUFFLE_BUFFER,
    parallel_calls: int = 1,
    reshuffle: bool = True,
) -> tf.data.Dataset:
    """Batches ``(image (B, X, Y, Z, C), label (B, X, Y, Z, K))``, both float32, of ``split``.

    ``shuffle`` reorders every epoch, seeded with ``seed`` (reproducible): streamed, the shard
    order and a buffer of ``shuffle_buffer`` records; cached, a full permutation. ``cache``
    reads the node's shared decoded copy of the split in the folder ``cache_scope``
    (:func:`distmis.shards.node_cache.open_split`) instead of the shards. ``shard=(num_workers,
    index)`` keeps this worker's part of the split (:func:`~distmis.shards.parts.rank_part`);
    workers' parts are disjoint and cover the split. ``parallel_calls`` threads (the worker's
    cores) read cached records and cast batches; streamed records are read by one.
    ``reshuffle=False`` gives every iterator of the dataset the one order ``seed`` fixes (a
    trainer that builds one dataset per epoch and derives its seed from the epoch), where
    ``True`` reorders per iterator from a generator whose state a tf.distribute strategy may
    copy or not: the order would then depend on the strategy, not on the seed alone.

    Under ``MultiWorkerMirroredStrategy``, Keras treats ``batch_size`` as the global batch
    and splits every batch across the replicas in sync (tf.distribute rebatching), so pass
    the global batch size; with uneven parts use ``repeat=True`` and ``steps_per_epoch`` so
    every worker runs the same number of steps.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shuffle_buffer < 1 or parallel_calls < 1:
        raise ValueError(
            f"need shuffle_buffer >= 1 and parallel_calls >= 1, got {shuffle_buffer} and "
            f"{parallel_calls}"
        )
    if cache and cache_scope is None:
        raise ValueError("cache=True needs cache_scope, the node cache's scope folder")
    _check_shard(shard)
    _check_split(info, split)
    num_workers, index = shard if shard is not None else (1, 0)
    part = rank_part(info.splits[split], index, num_workers)
    if cache:
        dataset = _from_node_cache(
            info, split, part, cache_scope, shuffle, seed, reshuffle, repeat, parallel_calls
        )
    else:
        dataset = _streamed(info, part, shuffle, seed, reshuffle)
        if shuffle:
            dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=reshuffle)
        if repeat:
            dataset = dataset.repeat()
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    # The cast is the CPU's one float32 pass; more than one thread shortens it.
    dataset = dataset.map(_to_float32, num_parallel_calls=parallel_calls)
    dataset = dataset.prefetch(PREFETCH_BATCHES)
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
    for image, label in dataset.map(record_parser(info)).as_numpy_iterator():
        images.append(image.astype(np.float32))
        labels.append(label.astype(np.float32))
    return np.stack(images), np.stack(labels)


def iter_records(info: DatasetInfo, split: str) -> Iterator[records.Record]:
    """Decoded :class:`~distmis.shards.records.Record` of ``split``, shard by shard in file order.

    An unknown split raises at once, not when the records are first asked for.
    """
    if split not in info.splits:
        raise ValueError(f"split must be one of {sorted(info.splits)}, got {split!r}")
    dataset = tf.data.TFRecordDataset(info.shard_files(split), compression_type=info.tf_compression)
    labels = len(info.label_channels)
    return (records.decode_example(raw.numpy(), info.image_dtype, labels) for raw in dataset)
