"""Which records of a split each distributed rank (and each loader worker) reads.

Both backends and the node cache share these rules, so a rank's part of a split never depends
on the framework, on ``cache`` or on how many loader workers read it.

:func:`rank_part` gives rank ``r`` of ``world_size`` every ``world_size``-th whole shard when
there are at least ``world_size`` shards; otherwise every rank reads every shard and keeps
every ``world_size``-th record, so no rank is left without data (synchronous all-reduce
training would wait for it forever). :func:`read_part` reads a part, TensorFlow-free.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from distmis.errors import ContractError
from distmis.shards.buffers import BufferPool
from distmis.shards.info import ShardInfo
from distmis.shards.records import Record, decode_example
from distmis.shards.tfrecord import MADE_BY, read_payloads

log = logging.getLogger(__name__)


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
        """Loader worker ``worker`` of ``workers``'s share: disjoint shares that cover the part.

        Whole shards (every ``workers``-th) while the part is whole shards and has at least one
        per worker; otherwise every worker reads all the part's shards and keeps every
        ``workers``-th of its records.
        """
        if not 0 <= worker < workers:
            raise ValueError(f"need 0 <= worker < workers, got worker {worker} of {workers}")
        if self.stride == 1 and len(self.shards) >= workers:
            return Part(self.shards[worker::workers])
        return Part(self.shards, self.offset + self.stride * worker, self.stride * workers)

    def split_positions(self, split_shards: Sequence[ShardInfo]) -> np.ndarray:
        """Where this part's records sit in the whole split (info.json's shard order, records
        in file order), in the order the part reads them: indices into a cached split."""
        starts, position = {}, 0
        for shard in split_shards:
            starts[shard.file] = position
            position += shard.records
        missing = [str(s.file) for s in self.shards if s.file not in starts]
        if missing:
            raise ValueError(f"shards {missing} are not in the split")
        sequence = np.concatenate(
            [np.arange(starts[s.file], starts[s.file] + s.records) for s in self.shards]
            or [np.zeros(0, dtype=np.int64)]
        )
        return sequence[self.offset :: self.stride].astype(np.int64)


def rank_part(shards: Sequence[ShardInfo], rank: int, world_size: int) -> Part:
    """The part of a split's ``shards`` (info.json order) that rank ``rank`` of ``world_size`` reads.

    Every ``world_size``-th whole shard when there are at least ``world_size`` shards;
    otherwise every shard and every ``world_size``-th record (see the module docstring).
    Ranks' parts are disjoint and cover the split. Loader workers then split a rank's part
    (:meth:`Part.for_worker`), so what a rank reads never depends on how many workers it uses.
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
    part: Part,
    image_dtype: str,
    label_channels: int,
    compression: str = "none",
    pool: BufferPool | None = None,
) -> Iterator[Record]:
    """The records of ``part``, in order, as views of their payloads (no copy); others'
    records are skipped undecoded. With ``pool`` the payloads are read into its reusable
    blocks (:func:`~distmis.shards.tfrecord.read_payloads`).

    A shard whose record count differs from info.json raises :class:`ContractError` (after its
    last record, so a short shard is caught even when none of its records are this part's).
    """
    index = 0  # of the record within the part's shard sequence
    for shard in part.shards:
        count = 0
        for payload in read_payloads(shard.file, compression, pool):
            if index >= part.offset and (index - part.offset) % part.stride == 0:
                try:
                    yield decode_example(payload, image_dtype, label_channels)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ContractError(
                        f"{shard.file}: record {count}: {exc}; rerun {MADE_BY}"
                    ) from exc
            del payload  # see read_payloads: lets the next record reuse its block
            count += 1
            index += 1
        if count != shard.records:
            raise ContractError(
                f"{shard.file} holds {count} records but info.json says {shard.records}; "
                f"rerun {MADE_BY}"
            )
