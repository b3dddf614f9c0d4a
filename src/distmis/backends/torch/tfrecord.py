"""The TFRecord shards of :mod:`distmis.shards.records` as PyTorch datasets, without TensorFlow.

Framing and CRC checks come from :mod:`distmis.shards.tfrecord`, record decoding from
:func:`distmis.shards.records.decode_example` (both TensorFlow-free, shared with the data stage).

:class:`TFRecordVolumes` serves one rank's part of a split (:mod:`distmis.shards.parts`) for
one pass as ``(image (C, X, Y, Z), label (K, X, Y, Z))`` float32 tensors, shared out over
DataLoader workers. Training reads through :mod:`distmis.backends.torch.data` instead, which
keeps the stored dtype and layout until a batch reaches the device.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distmis.shards.info import DatasetInfo
from distmis.shards.parts import Part, rank_part, read_part
from distmis.shards.records import Record


def to_tensors(record: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (C, X, Y, Z), label (K, X, Y, Z))``, contiguous float32 copies."""
    image = np.ascontiguousarray(np.moveaxis(record.image, -1, 0), dtype=np.float32)
    label = np.ascontiguousarray(np.moveaxis(record.label, -1, 0), dtype=np.float32)
    return torch.from_numpy(image), torch.from_numpy(label)


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


__all__ = ["TFRecordVolumes", "to_tensors"]
