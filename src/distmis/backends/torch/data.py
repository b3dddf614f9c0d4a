"""The batches a PyTorch training worker draws each epoch, with the tf.data pipeline's semantics.

As :func:`distmis.backends.tensorflow.dataset.make_dataset`, per distributed rank::

    rank's part of the split (whole shards, or every world_size-th record: rank_part)
      ─ cache? ─ per epoch: shuffle (seeded by seed, epoch, rank) ─ repeat ─ batch

Batches are ``(images (B, C, X, Y, Z), labels (B, K, X, Y, Z))`` float32 on the CPU, with
``B = batch_size`` per replica (the global batch is ``batch_size · world_size``).

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

import itertools
import logging
import math
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distmis.backends.torch.tfrecord import Part, rank_part, read_part, to_tensors
from distmis.data.info import DatasetInfo
from distmis.data.records import Record

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]

# Records a rank holds for shuffling when streaming, over all its DataLoader workers. A BraTS
# record is 30-150 MB as float32, so tf.data's buffer of the whole split is only affordable
# when cached; shard order is shuffled as well, so the order still mixes across shards.
SHUFFLE_BUFFER = 64
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


def _stack(records: list[Record]) -> Batch:
    images, labels = zip(*(to_tensors(r) for r in records), strict=True)
    return torch.stack(images), torch.stack(labels)


class _RankStream(IterableDataset):
    """The rank's records for one epoch as ``(image, label)`` tensors, read in each DataLoader
    worker: pass after pass (``cycle``) or one pass."""

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

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
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
                mine, self.info.image_dtype, len(self.info.label_channels), self.info.compression
            )
            if self.shuffle:
                generator = order_generator(
                    self.seed, RECORD_ORDER, self.epoch, self.rank, pass_index, worker_id
                )
                records = buffer_shuffled(records, math.ceil(self.buffer / workers), generator)
            for record in records:
                yield to_tensors(record)
            if not self.cycle:
                return


class EpochBatches:
    """What one rank trains or validates on: ``epoch(e)`` iterates that epoch's batches.

    - ``tfrecord_dir``, ``split``: the converted dataset (``info.json``) and its split;
    - ``batch_size``: records per batch on this rank (per replica);
    - ``rank``, ``world_size``: this process among the distributed ones; ranks' parts are
      disjoint and cover the split (:func:`~distmis.backends.torch.tfrecord.rank_part`), and a
      rank's part does not depend on ``cache`` or ``loader_workers``;
    - ``shuffle``, ``seed``: reorder each epoch and pass (shard order and a shuffle buffer of
      ``shuffle_buffer`` records when streaming, a full permutation when cached);
    - ``cache``: decode the rank's records once into memory (in the stored dtype, so as much
      memory as its uncompressed shards) in this process, and serve every epoch from there;
      otherwise stream them from the shards with ``loader_workers`` DataLoader processes
      (0: in this process);
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
        self._cached: list[Record] | None = None
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

    def _records_in_memory(self) -> list[Record]:
        if self._cached is None:
            info = self.info
            self._cached = list(
                read_part(self.part, info.image_dtype, len(info.label_channels), info.compression)
            )
        return self._cached

    def _from_cache(self, epoch: int) -> Generator[Batch, None, None]:
        records = self._records_in_memory()

        def order(pass_index: int) -> np.ndarray:
            if not self.shuffle:
                return np.arange(len(records))
            generator = order_generator(self.seed, RECORD_ORDER, epoch, self.rank, pass_index, 0)
            return generator.permutation(len(records))

        passes = itertools.count() if self.steps_per_epoch else range(1)
        indices = iter(itertools.chain.from_iterable(order(p) for p in passes))
        while batch := list(itertools.islice(indices, self.batch_size)):
            images, labels = _stack([records[i] for i in batch])
            if self.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            yield images, labels

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
            num_workers=self.loader_workers,
            pin_memory=self.pin_memory,
            # Own generator: DataLoader draws its workers' base seed from it, not from (and
            # so without advancing) the global RNG the training loop may rely on.
            generator=torch.Generator().manual_seed(self.seed),
        )
        yield from loader
