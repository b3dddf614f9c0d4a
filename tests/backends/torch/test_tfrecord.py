"""The PyTorch datasets over shards the real converter wrote: ranks' and workers' parts.

Framing, CRCs and record decoding are tested in tests/shards/test_tfrecord.py.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from distmis.backends.torch.tfrecord import TFRecordVolumes
from distmis.errors import ContractError
from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards.info import DatasetInfo, ShardInfo
from distmis.shards.parts import Part, rank_part, read_part
from distmis.shards.records import read_records

SOURCE_SHAPE = (20, 20, 16)
STORED_SHAPE = (16, 16, 16)
CASES = 10


@pytest.fixture(scope="module")
def msd_task(tmp_path_factory) -> Path:
    return synthesize_dataset(
        tmp_path_factory.mktemp("msd"), CASES, SOURCE_SHAPE, 5, progress=False
    )


def _convert(task: Path, out: Path, **params) -> DatasetInfo:
    settings = {"shape": STORED_SHAPE, "split": (0.6, 0.2, 0.2), "shards": (4, 1, 1), **params}
    convert_dataset(task, out, ConvertParams(**settings), workers=2, progress=False)
    return DatasetInfo.from_dir(out)


@pytest.fixture(scope="module")
def plain(msd_task, tmp_path_factory) -> DatasetInfo:
    """Uncompressed float32 shards, 3 label channels, 4 train shards."""
    return _convert(msd_task, tmp_path_factory.mktemp("plain"), label_mode="regions")


def _record_ids(part: Part) -> list[tuple[str, int]]:
    """``(shard file, record number)`` of every record ``part`` keeps, by info.json counts."""
    stream = [(s.file.name, i) for s in part.shards for i in range(s.records)]
    return stream[part.offset :: part.stride]


def _shards(*counts: int) -> list[ShardInfo]:
    return [ShardInfo(Path(f"s{i}.tfrecord"), n, "") for i, n in enumerate(counts)]


@pytest.mark.parametrize("counts", [(3, 1, 2, 2, 0, 1), (5,), (2, 3)])
@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
@pytest.mark.parametrize("workers", [1, 2, 3])
def test_parts_of_ranks_and_workers_are_disjoint_and_covering(counts, world_size, workers):
    shards = _shards(*counts)
    everything = _record_ids(Part(tuple(shards)))
    by_rank = [rank_part(shards, rank, world_size) for rank in range(world_size)]
    assert sorted(i for part in by_rank for i in _record_ids(part)) == sorted(everything)
    for part in by_rank:
        assert part.records == len(_record_ids(part))
        by_worker = [part.for_worker(w, workers) for w in range(workers)]
        assert sorted(i for p in by_worker for i in _record_ids(p)) == sorted(_record_ids(part))
        assert sum(p.records for p in by_worker) == part.records


def test_whole_shards_while_there_are_enough_else_every_nth_record():
    shards = _shards(2, 2, 1, 1)
    assert rank_part(shards, 1, 2) == Part((shards[1], shards[3]))
    # 4 shards, 5 ranks: as tf.data's shard(5, 4) over all records in file order.
    assert rank_part(shards, 4, 5) == Part(tuple(shards), offset=4, stride=5)
    assert _record_ids(rank_part(shards, 0, 5)) == [("s0.tfrecord", 0), ("s3.tfrecord", 0)]
    # A rank's whole shards go to its workers whole while each gets one ...
    assert rank_part(shards, 0, 2).for_worker(1, 2) == Part((shards[2],))
    # ... else each worker keeps every 3rd of the rank's records.
    assert rank_part(shards, 0, 2).for_worker(1, 3) == Part((shards[0], shards[2]), 1, 3)
    # Record-sharded parts compose: rank 1 of 5's records, worker 1 of 2 → every 10th from 6.
    assert rank_part(shards, 1, 5).for_worker(1, 2) == Part(tuple(shards), 6, 10)


def test_shuffled_part_permutes_whole_shards_only():
    shards = _shards(1, 1, 1, 1, 1, 1)
    shuffled = Part(tuple(shards)).shuffled(np.random.default_rng(0))
    assert sorted(s.file.name for s in shuffled.shards) == sorted(s.file.name for s in shards)
    assert shuffled.shards != tuple(shards)
    with pytest.raises(ValueError, match="record-sharded part must keep its shard order"):
        Part(tuple(shards), 1, 2).shuffled(np.random.default_rng(0))


def test_read_part_keeps_every_nth_record_across_shards(plain):
    shards = plain.splits["train"]
    k = len(plain.label_channels)
    everything = [r.case_id for s in shards for r in read_records(s.file, "float32", k)]
    part = Part(tuple(shards), offset=1, stride=3)
    got = [r.case_id for r in read_part(part, plain.image_dtype, k, plain.compression)]
    assert got == everything[1::3] and len(got) == part.records


def test_dataset_yields_channels_first_float32(plain):
    dataset = TFRecordVolumes(plain.root, "train")
    items = list(dataset)
    assert len(items) == plain.count("train")
    image, label = items[0]
    assert image.dtype == torch.float32 and label.dtype == torch.float32
    assert tuple(image.shape) == (4, *STORED_SHAPE) and tuple(label.shape) == (3, *STORED_SHAPE)
    first = next(read_records(plain.shard_files("train")[0], "float32", 3, plain.compression))
    np.testing.assert_array_equal(image.numpy(), np.moveaxis(first.image, -1, 0))
    np.testing.assert_array_equal(label.numpy(), np.moveaxis(first.label, -1, 0))


def _signature(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()


# 4 train shards: (2, 2) and (1, 3) split whole shards, (5, 1) and (2, 3) fall back to records.
@pytest.mark.parametrize("world_size,workers", [(2, 1), (2, 2), (1, 3), (5, 1), (2, 3)])
def test_ranks_and_workers_split_disjoint_and_covering(plain, world_size, workers):
    everything = sorted(_signature(image) for image, _ in TFRecordVolumes(plain.root, "train"))
    seen = []
    for rank in range(world_size):
        dataset = TFRecordVolumes(plain.root, "train", rank=rank, world_size=world_size)
        loader = DataLoader(dataset, batch_size=None, num_workers=workers)
        mine = [_signature(image) for image, _ in loader]
        assert mine, f"rank {rank} of {world_size} with {workers} workers read nothing"
        seen += mine
    assert sorted(seen) == everything


def test_record_count_mismatch_with_info_raises(plain, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(plain.root, root)
    info = DatasetInfo.from_dir(root)
    first = info.splits["train"][0].file
    data = first.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    first.write_bytes(data[: 12 + length + 4])  # keep only record 0, cleanly framed
    with pytest.raises(ContractError, match="holds 1 records but info.json says"):
        list(TFRecordVolumes(root, "train"))


def test_reader_does_not_import_tensorflow():
    code = (
        "import sys, distmis.backends.torch.tfrecord, distmis.backends.torch.unet, "
        "distmis.backends.torch.losses, distmis.backends.torch.data, "
        "distmis.backends.torch.checkpoint\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf_keras', 'ray')]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
