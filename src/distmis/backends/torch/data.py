"""The batches a PyTorch training worker draws each epoch, with the tf.data pipeline's semantics.

As :func:`distmis.backends.tensorflow.dataset.make_dataset`, per distributed rank::

    rank's part of the split (whole shards, or every world_size-th record: rank_part)
      ─ streamed: per epoch shuffle shard order, buffer-shuffle records (seeded by seed,
        epoch, rank), repeat
      ─ cached: the node's shared copy (distmis.shards.node_cache), a full permutation per epoch
      ─ batch

Batches are ``(images (B, C, X, Y, Z), labels (B, K, X, Y, Z))`` on the CPU, with
``B = batch_size`` per replica (the global batch is ``batch_size · world_size``). They keep
what the shards store: images in info.json's ``image_dtype`` (float16 or float32) and labels
as uint8, both in the stored channels-last layout, i.e. ``torch.channels_last_3d`` strides
(a permuted view, no copy). :func:`to_device` moves a batch to the model's device first and
only then widens it to float32 in the model's memory format, so the copy over PCIe carries
the stored bytes and the cast runs on the GPU.

Memory (see docs/explanation/input-memory.md "Sizing a node"): a streaming rank holds at most ``shuffle_buffer``
records over all its loader workers, each worker's ``prefetch_factor`` (2) batches, and the
batch being trained on, whatever the split's size; at the paper's size (float16, binary
labels: 79 MB a record) the default buffer of 6 is ~0.5 GB. A cached rank holds only its
batches: the records are the node's shared memory map.

Training (``steps_per_epoch=n``): every epoch gives exactly ``n`` full batches on every rank,
however many records the rank holds. Ranks that took different step counts would deadlock
DistributedDataParallel's all-reduce, so a rank's records repeat (each further pass in a new
order) like tf.data's ``repeat()``. Unlike ``repeat()``, each epoch starts a fresh pass, so an
epoch of ``n · B >=`` the rank's records shows the model every one of them (with DataLoader
workers: as long as their shares of the rank's records are about equal, as they take turns).

Validation (``steps_per_epoch=None``): one pass, every record of the rank exactly once, in
batches of at most ``B``, so metrics averaged per sample are exact. Ranks may then take
different step counts: reduce the metrics once after the pass, not per step.

Orders come from ``numpy`` generators seeded by ``(seed, epoch, rank, pass, worker)`` alone,
so a run is reproducible and independent of the global RNGs.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import threading
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from queue import Full, Queue

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distmis.shards import buffers, heap, node_cache
from distmis.shards.info import DatasetInfo
from distmis.shards.parts import Part, rank_part, read_part
from distmis.shards.records import Record

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]

# Records a rank holds for shuffling when streaming, over all its DataLoader workers (the
# schema's train.shuffle_buffer default). A BraTS record is 79-166 MB, so the buffer, not the
# split, must bound memory; shard order is reshuffled each epoch, so the order still mixes
# across shards.
SHUFFLE_BUFFER = 6
# Batches formed ahead from a cached split, while the model trains on the current one.
CACHED_PREFETCH = 2
# The first entry after the seed keeps the generators of different draws apart.
SHARD_ORDER, RECORD_ORDER = 0, 1


def order_generator(
    seed: int, draw: int, epoch: int, rank: int, pass_index: int, worker: int
) -> np.random.Generator:
    """The generator of one draw; every entry changes the stream, none repeats another's."""
    return np.random.default_rng([seed, draw, epoch, rank, pass_index, worker])


def buffer_shuffled(
    items: Iterable[Record], size: int, generator: np.random.Generator
) -> Iterator[Record]:
    """``items`` in the order tf.data's ``shuffle(size)`` gives: fill a buffer of ``size``,
    then emit a random element of it and put the next item in its place."""
    buffer: list[Record] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(generator.integers(size))
        yield buffer[slot]
        buffer[slot] = item
    for slot in generator.permutation(len(buffer)):
        yield buffer[slot]


TORCH_DTYPES = {
    np.dtype("<f2"): torch.float16,
    np.dtype("<f4"): torch.float32,
    np.dtype("u1"): torch.uint8,
}


def stack_records(records: list[Record]) -> Batch:
    """``records`` as one batch in their stored dtypes and layout (see the module docstring).

    One copy per record, into the batch. In a DataLoader worker the batch is allocated in
    shared memory, so handing it to the training process copies nothing more; in the training
    process it is a block of the process's :class:`~distmis.shards.buffers.BufferPool`, reused
    once the batch is dropped.
    """
    in_worker = get_worker_info() is not None

    def stacked(arrays: list[np.ndarray]) -> torch.Tensor:
        shape, dtype = (len(arrays), *arrays[0].shape), arrays[0].dtype
        if in_worker:
            batch = torch.empty(shape, dtype=TORCH_DTYPES[dtype]).share_memory_()
        else:
            size = int(np.prod(shape)) * dtype.itemsize
            block = buffers.process_pool().take(size).view(dtype).reshape(shape)
            batch = torch.from_numpy(block)
        np.stack(arrays, out=batch.numpy())
        # (B, X, Y, Z, C) memory seen as (B, C, X, Y, Z): exactly channels_last_3d strides.
        return batch.permute(0, 4, 1, 2, 3)

    return stacked([r.image for r in records]), stacked([r.label for r in records])


def to_device(
    batch: Batch, device: torch.device, memory_format: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of :func:`stack_records` as float32 on ``device`` in ``memory_format``.

    The stored bytes cross to the device first (asynchronously from pinned memory) and are
    widened there: float16 images and uint8 labels move 2× and 4× fewer bytes than float32.
    """
    images, labels = (t.to(device, non_blocking=True) for t in batch)
    return (
        images.to(dtype=torch.float32, memory_format=memory_format),
        labels.to(dtype=torch.float32, memory_format=memory_format),
    )


class _RankStream(IterableDataset):
    """The rank's records for one epoch, read in each DataLoader worker: pass after pass
    (``cycle``) or one pass; the DataLoader batches them with :func:`stack_records`."""

    def __init__(
        self,
        info: DatasetInfo,
        part: Part,
        *,
        epoch: int,
        rank: int,
        shuffle: bool,
        seed: int,
        cycle: bool,
        buffer: int,
    ) -> None:
        super().__init__()
        self.info, self.part, self.epoch, self.rank = info, part, epoch, rank
        self.shuffle, self.seed, self.cycle, self.buffer = shuffle, seed, cycle, buffer

    def __iter__(self) -> Iterator[Record]:
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for pass_index in itertools.count():
            part = self.part
            # Record-sharded parts keep their shard order (see Part); whole-shard ones are
            # permuted identically in every worker of the rank, before the workers split them.
            if self.shuffle and part.stride == 1:
                part = part.shuffled(
                    order_generator(self.seed, SHARD_ORDER, self.epoch, self.rank, pass_index, 0)
                )
            mine = part.for_worker(worker_id, workers)
            if mine.records == 0:
                return  # a worker beyond the rank's records; the others cover them
            records: Iterable[Record] = read_part(
                mine,
                self.info.image_dtype,
                len(self.info.label_channels),
                self.info.compression,
                buffers.process_pool(),
            )
            if self.shuffle:
                generator = order_generator(
                    self.seed, RECORD_ORDER, self.epoch, self.rank, pass_index, worker_id
                )
                records = buffer_shuffled(records, math.ceil(self.buffer / workers), generator)
            yield from records
            if not self.cycle:
                return


# The stop events and threads of the prefetchers now running (see _stop_prefetchers).
_prefetchers: set[tuple[threading.Event, threading.Thread]] = set()


def _stop_prefetchers() -> None:
    """atexit: stop and join every prefetch thread while the interpreter is still whole.

    An epoch iterator left open at exit (a script or notebook that stops early) is closed
    only when the modules are torn down, after CPython has begun to end any other thread
    that asks for the GIL: a prefetch thread inside torch or numpy then dies by a forced
    unwind, and the process aborted ("terminate called without an active exception", exit
    134) in 4 of 30 tries. Stopped here, each thread finishes the batch it is forming first.
    """
    for stop, thread in list(_prefetchers):
        stop.set()
        thread.join()


atexit.register(_stop_prefetchers)


def prefetched(items: Iterator[Batch], depth: int) -> Generator[Batch, None, None]:
    """``items`` drawn by a background thread up to ``depth`` ahead (numpy's copies release
    the GIL, so forming the next batch overlaps the step); closing stops the thread, and so
    does the interpreter's exit (:func:`_stop_prefetchers`)."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def fill() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # re-raised in the consumer
            put(exc)

    thread = threading.Thread(target=fill, name="cached-batches", daemon=True)
    _prefetchers.add((stop, thread))
    thread.start()
    try:
        while (item := queue.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
        _prefetchers.discard((stop, thread))


class EpochBatches:
    """What one rank trains or validates on: ``epoch(e)`` iterates that epoch's batches.

    - ``tfrecord_dir``, ``split``: the converted dataset (``info.json``) and its split;
    - ``batch_size``: records per batch on this rank (per replica);
    - ``rank``, ``world_size``: this process among the distributed ones; ranks' parts are
      disjoint and cover the split (:func:`~distmis.backends.torch.tfrecord.rank_part`), and a
      rank's part does not depend on ``cache`` or ``loader_workers``;
    - ``shuffle``, ``seed``: reorder each epoch and pass (shard order and a shuffle buffer of
      ``shuffle_buffer`` records when streaming, a full permutation when cached);
    - ``cache``: serve every epoch from the node's shared decoded copy of the split in the
      folder ``cache_scope`` (:func:`distmis.shards.node_cache.open_split`: materialised once
      per node, memory-mapped by every process), batches formed by a background thread;
      otherwise stream the records from the shards with ``loader_workers`` DataLoader
      processes (0: in this process);
    - ``steps_per_epoch``: batches per epoch, all of ``batch_size``, the rank's records
      repeating as needed; ``None``: one pass, each record once, in batches of at most
      ``batch_size`` (with loader workers, each worker's last batch may be short);
    - ``pin_memory``: page-locked batches, for faster asynchronous copies to a GPU.

    Raises ValueError when this rank's part of the split holds no record.
    """

    def __init__(
        self,
        tfrecord_dir: Path | str,
        split: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool,
        seed: int,
        cache: bool,
        steps_per_epoch: int | None,
        loader_workers: int = 0,
        shuffle_buffer: int = SHUFFLE_BUFFER,
        pin_memory: bool = False,
        cache_scope: Path | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1 or None, got {steps_per_epoch}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if loader_workers < 0 or shuffle_buffer < 1:
            raise ValueError(
                f"need loader_workers >= 0 and shuffle_buffer >= 1, "
                f"got {loader_workers} and {shuffle_buffer}"
            )
        if cache and cache_scope is None:
            raise ValueError("cache=True needs cache_scope, the node cache's scope folder")
        self.info = DatasetInfo.from_dir(Path(tfrecord_dir))
        if split not in self.info.splits:
            raise ValueError(f"split must be one of {sorted(self.info.splits)}, got {split!r}")
        self.split, self.rank, self.world_size = split, int(rank), int(world_size)
        self.part = rank_part(self.info.splits[split], self.rank, self.world_size)
        if self.part.records == 0:
            raise ValueError(
                f"split {split!r} of {self.info.root} gives rank {rank} of {world_size} no "
                f"records (it holds {self.info.count(split)} in "
                f"{len(self.info.splits[split])} shards): use fewer ranks or more records"
            )
        self.batch_size = int(batch_size)
        self.steps_per_epoch = steps_per_epoch
        self.shuffle, self.seed, self.cache = bool(shuffle), int(seed), bool(cache)
        self.loader_workers, self.shuffle_buffer = int(loader_workers), int(shuffle_buffer)
        self.pin_memory = bool(pin_memory)
        # Records and batches come from a BufferPool; what else is freed must go back to the
        # OS rather than fragment the heap.
        heap.fix_mmap_threshold()
        self.cache_scope = None if cache_scope is None else Path(cache_scope)
        self._cached: node_cache.CachedSplit | None = None
        log.info(
            "%s, rank %d of %d: %d records, %s of %d",
            split,
            self.rank,
            self.world_size,
            self.records,
            f"{steps_per_epoch} steps" if steps_per_epoch else "one pass",
            self.batch_size,
        )

    @property
    def records(self) -> int:
        """How many records this rank's part of the split holds."""
        return self.part.records

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of epoch ``epoch`` (0-based; it seeds the order)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        return self._steps(self._from_cache(epoch) if self.cache else self._streamed(epoch))

    def _steps(self, batches: Generator[Batch, None, None]) -> Iterator[Batch]:
        try:
            # islice stops after the last step without drawing a batch beyond it.
            yield from itertools.islice(batches, self.steps_per_epoch)
        finally:
            # Stops the DataLoader's workers now, not whenever the iterator is collected.
            batches.close()

    def _cached_split(self) -> node_cache.CachedSplit:
        if self._cached is None:
            self._cached = node_cache.open_split(self.info, self.split, self.cache_scope)
        return self._cached

    def _from_cache(self, epoch: int) -> Generator[Batch, None, None]:
        cached = self._cached_split()
        # Where this rank's records sit in the node's copy of the whole split.
        positions = self.part.split_positions(self.info.splits[self.split])

        def order(pass_index: int) -> np.ndarray:
            if not self.shuffle:
                return positions
            generator = order_generator(self.seed, RECORD_ORDER, epoch, self.rank, pass_index, 0)
            return positions[generator.permutation(len(positions))]

        def batches() -> Iterator[Batch]:
            passes = itertools.count() if self.steps_per_epoch else range(1)
            indices = iter(itertools.chain.from_iterable(order(p) for p in passes))
            while batch := list(itertools.islice(indices, self.batch_size)):
                records = [
                    Record(cached.case_ids[i], cached.images[i], cached.labels[i]) for i in batch
                ]
                images, labels = stack_records(records)
                if self.pin_memory:
                    images, labels = images.pin_memory(), labels.pin_memory()
                yield images, labels

        yield from prefetched(batches(), CACHED_PREFETCH)

    def _streamed(self, epoch: int) -> Generator[Batch, None, None]:
        stream = _RankStream(
            self.info,
            self.part,
            epoch=epoch,
            rank=self.rank,
            shuffle=self.shuffle,
            seed=self.seed,
            cycle=self.steps_per_epoch is not None,
            buffer=self.shuffle_buffer,
        )
        loader = DataLoader(
            stream,
            batch_size=self.batch_size,
            collate_fn=stack_records,
            num_workers=self.loader_workers,
            pin_memory=self.pin_memory,
            # Own generator: DataLoader draws its workers' base seed from it, not from (and
            # so without advancing) the global RNG the training loop may rely on.
            generator=torch.Generator().manual_seed(self.seed),
        )
        yield from loader
