"""The TFRecord shards of :mod:`distmis.data.records` as PyTorch datasets, without TensorFlow.

Framing and CRC checks come from :mod:`distmis.data.tfrecord`, record decoding from
:func:`distmis.data.records.decode_example` (both TensorFlow-free, shared with the data stage).

:func:`rank_part` gives each distributed rank its share of a split as TF's pipeline does
(whole shards when there are enough, else every ``world_size``-th record), :func:`read_part`
reads a share, and :class:`TFRecordVolumes` serves one pass of it as ``(image (C, X, Y, Z),
label (K, X, Y, Z))`` float32 tensors, shared out over DataLoader workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distmis.data.info import DatasetInfo, ShardInfo
from distmis.data.records import Record, decode_example
from distmis.data.tfrecord import MADE_BY, read_payloads
from distmis.errors import ContractError

log = logging.getLogger(__name__)


def to_tensors(record: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (C, X, Y, Z), label (K, X, Y, Z))``, contiguous float32 copies."""
    image = np.ascontiguousarray(np.moveaxis(record.image, -1, 0), dtype=np.float32)
    label = np.ascontiguousarray(np.moveaxis(record.label, -1, 0), dtype=np.float32)
    return torch.from_numpy(image), torch.from_numpy(label)


@dataclass(frozen=True)
class Part:
    """The records one consumer reads: ``shards`` in this order, and of the records they hold
    (numbered 0, 1, … across the shards in this order) those at ``offset + k·stride``.

    ``stride == 1`` means whole shards; ``stride > 1`` is TF's record sharding
    (``Dataset.shard(stride, offset)``), a partition only while every consumer reads the same
    shards in the same order.
    """

    shards: tuple[ShardInfo, ...]
    offset: int = 0
    stride: int = 1

    @property
    def records(self) -> int:
        """How many records this part holds, by info.json's counts."""
        total = sum(s.records for s in self.shards)
        return len(range(self.offset, total, self.stride))

    def shuffled(self, generator: np.random.Generator) -> Part:
        """The same part with its shards in a random order; only whole-shard parts may be."""
        if self.stride != 1:
            raise ValueError("a record-sharded part must keep its shard order (see Part)")
        order = generator.permutation(len(self.shards))
        return Part(tuple(self.shards[i] for i in order))

    def for_worker(self, worker: int, workers: int) -> Part:
        """DataLoader worker ``worker`` of ``workers``'s share: disjoint shares that cover the part.

        Whole shards (every ``workers``-th) while the part is whole shards and has at least one
        per worker; otherwise every worker reads all the part's shards and keeps every
        ``workers``-th of its records.
        """
        if not 0 <= worker < workers:
            raise ValueError(f"need 0 <= worker < workers, got worker {worker} of {workers}")
        if self.stride == 1 and len(self.shards) >= workers:
            return Part(self.shards[worker::workers])
        return Part(self.shards, self.offset + self.stride * worker, self.stride * workers)


def rank_part(shards: Sequence[ShardInfo], rank: int, world_size: int) -> Part:
    """The part of a split's ``shards`` (info.json order) that rank ``rank`` of ``world_size`` reads.

    As :func:`distmis.backends.tensorflow.dataset._worker_files`: every ``world_size``-th whole shard when
    there are at least ``world_size`` shards; otherwise every rank reads every shard and keeps
    every ``world_size``-th record, so no rank is left without data (synchronous all-reduce
    training would wait for it forever). Ranks' parts are disjoint and cover the split.
    DataLoader workers then split a rank's part (:meth:`Part.for_worker`), so what a rank
    reads never depends on how many workers it uses.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    shards = tuple(shards)
    if len(shards) >= world_size:
        return Part(shards[rank::world_size])
    log.info(
        "%d shards for %d ranks: sharding by record, every rank reads every shard",
        len(shards),
        world_size,
    )
    return Part(shards, rank, world_size)


def read_part(
    part: Part, image_dtype: str, label_channels: int, compression: str = "none"
) -> Iterator[Record]:
    """The records of ``part``, in order; others' records are skipped undecoded.

    A shard whose record count differs from info.json raises :class:`ContractError` (after its
    last record, so a short shard is caught even when none of its records are this part's).
    """
    index = 0  # of the record within the part's shard sequence
    for shard in part.shards:
        count = 0
        for payload in read_payloads(shard.file, compression):
            if index >= part.offset and (index - part.offset) % part.stride == 0:
                try:
                    yield decode_example(payload, image_dtype, label_channels)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ContractError(
                        f"{shard.file}: record {count}: {exc}; rerun {MADE_BY}"
                    ) from exc
            count += 1
            index += 1
        if count != shard.records:
            raise ContractError(
                f"{shard.file} holds {count} records but info.json says {shard.records}; "
                f"rerun {MADE_BY}"
            )


class TFRecordVolumes(IterableDataset):
    """One split of a converted dataset as ``(image (C, X, Y, Z), label (K, X, Y, Z))`` float32.

    Reads ``<tfrecord_dir>/info.json``. Rank ``rank`` of ``world_size`` distributed processes
    reads its :func:`rank_part`, which its DataLoader workers (``get_worker_info``) share out
    (:meth:`Part.for_worker`); one pass, shards in info.json order, records in file order
    (no shuffling; :mod:`distmis.backends.torch.data` shuffles, repeats and batches).
    A shard whose record count differs from info.json raises :class:`ContractError`.
    """

    def __init__(
        self, tfrecord_dir: Path | str, split: str, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        self.info = DatasetInfo.from_dir(Path(tfrecord_dir))
        if split not in self.info.splits:
            raise ValueError(f"split must be one of {sorted(self.info.splits)}, got {split!r}")
        self.split = split
        self.part = rank_part(self.info.splits[split], rank, world_size)

    def my_part(self) -> Part:
        """What this rank and DataLoader worker reads."""
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        return self.part.for_worker(worker_id, workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        records = read_part(
            self.my_part(),
            self.info.image_dtype,
            len(self.info.label_channels),
            self.info.compression,
        )
        for record in records:
            yield to_tensors(record)


__all__ = ["Part", "TFRecordVolumes", "rank_part", "read_part", "to_tensors"]
