"""Per-epoch batches for PyTorch workers, on shards the real converter wrote."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from distmis.backends.torch.data import EpochBatches, buffer_shuffled
from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards.info import DatasetInfo
from distmis.shards.records import read_records

STORED_SHAPE = (8, 8, 8)
# 12 cases → train 6 records in 4 shards, val 3 records in 1 shard (fewer shards than ranks).
CASES = 12


@pytest.fixture(scope="module")
def info(tmp_path_factory) -> DatasetInfo:
    root = tmp_path_factory.mktemp("data")
    task = synthesize_dataset(root / "msd", CASES, (16, 16, 16), 7, progress=False)
    params = ConvertParams(
        shape=STORED_SHAPE, label_mode="regions", split=(0.5, 0.25, 0.25), shards=(4, 1, 1)
    )
    convert_dataset(task, root / "tfrecords", params, workers=1, progress=False)
    info = DatasetInfo.from_dir(root / "tfrecords")
    assert (info.count("train"), len(info.splits["train"])) == (6, 4)
    assert (info.count("val"), len(info.splits["val"])) == (3, 1)
    return info


def _case_ids(info: DatasetInfo) -> dict[bytes, str]:
    """Channels-first float32 image bytes → case id, for every record of every split."""
    ids = {}
    for split in info.splits:
        for file in info.shard_files(split):
            for record in read_records(file, info.image_dtype, len(info.label_channels)):
                image = np.moveaxis(record.image, -1, 0).astype(np.float32)
                ids[image.tobytes()] = record.case_id
    return ids


def _split_ids(info: DatasetInfo, split: str) -> list[str]:
    k = len(info.label_channels)
    return [r.case_id for f in info.shard_files(split) for r in read_records(f, "float32", k)]


def _cases(info: DatasetInfo, batches) -> list[list[str]]:
    """The case ids of each batch, in order."""
    ids = _case_ids(info)
    return [[ids[image.numpy().tobytes()] for image in images] for images, _ in batches]


def _batches(info: DatasetInfo, split: str, **kwargs) -> EpochBatches:
    settings = {"batch_size": 2, "shuffle": False, "seed": 0, "cache": False, **kwargs}
    if settings["cache"]:
        settings.setdefault("cache_scope", _scope(info))
    return EpochBatches(info.root, split, settings.pop("batch_size"), **settings)


def _scope(info: DatasetInfo) -> Path:
    """A node-cache scope beside the module's data set (removed with tmp_path)."""
    scope = info.root.parent / "node-cache" / "scope"
    scope.mkdir(parents=True, exist_ok=True)
    return scope


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("split,world_size", [("train", 2), ("train", 5), ("val", 3)])
def test_every_rank_takes_exactly_steps_full_batches(info, split, world_size, cache):
    k = len(info.label_channels)
    for rank in range(world_size):
        data = _batches(
            info, split, rank=rank, world_size=world_size, shuffle=True, cache=cache,
            steps_per_epoch=3,
        )  # fmt: skip
        batches = list(data.epoch(0))
        assert len(batches) == 3, f"rank {rank} of {world_size}"
        for images, labels in batches:
            # As stored: float32 images (this data set), uint8 labels.
            assert (images.dtype, labels.dtype) == (torch.float32, torch.uint8)
            assert tuple(images.shape) == (2, 4, *STORED_SHAPE)
            assert tuple(labels.shape) == (2, k, *STORED_SHAPE)
            assert set(labels.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("loader_workers", [0, 2])
def test_batches_are_the_stored_records_seen_channels_first_without_a_copy(
    info, cache, loader_workers
):
    first = next(read_records(info.shard_files("val")[0], info.image_dtype, 3))
    data = _batches(info, "val", steps_per_epoch=None, cache=cache, loader_workers=loader_workers)
    images, labels = next(iter(data.epoch(0)))
    np.testing.assert_array_equal(images[0].numpy(), np.moveaxis(first.image, -1, 0))
    np.testing.assert_array_equal(labels[0].numpy(), np.moveaxis(first.label, -1, 0))
    # The stored (B, X, Y, Z, C) memory as (B, C, X, Y, Z): channels_last_3d already.
    for batch in (images, labels):
        assert batch.is_contiguous(memory_format=torch.channels_last_3d)


def test_to_device_widens_to_float32_in_the_model_memory_format(info):
    from distmis.backends.torch.data import to_device

    batch = next(iter(_batches(info, "val", steps_per_epoch=None).epoch(0)))
    for memory_format in (torch.channels_last_3d, torch.contiguous_format):
        images, labels = to_device(batch, torch.device("cpu"), memory_format)
        assert images.dtype == labels.dtype == torch.float32
        assert images.is_contiguous(memory_format=memory_format)
        torch.testing.assert_close(images, batch[0].float())
        torch.testing.assert_close(labels, batch[1].float())


def test_a_rank_with_one_record_repeats_it_to_fill_its_steps(info):
    # val: 3 records in 1 shard over 3 ranks → every 3rd record, one per rank.
    expected = _split_ids(info, "val")
    for rank in range(3):
        data = _batches(info, "val", rank=rank, world_size=3, steps_per_epoch=2)
        assert data.records == 1
        assert _cases(info, data.epoch(0)) == [[expected[rank]] * 2] * 2


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("split,world_size", [("train", 1), ("train", 3), ("train", 5), ("val", 2)])
def test_one_pass_over_all_ranks_reads_each_record_once(info, split, world_size, shuffle, cache):
    seen: list[str] = []
    for rank in range(world_size):
        data = _batches(
            info, split, rank=rank, world_size=world_size, shuffle=shuffle, cache=cache,
            steps_per_epoch=None,
        )  # fmt: skip
        cases = _cases(info, data.epoch(0))
        assert all(len(batch) == 2 for batch in cases[:-1])  # only the last may be short
        seen += [case for batch in cases for case in batch]
        assert sum(map(len, cases)) == data.records
    assert sorted(seen) == sorted(_split_ids(info, split))


def test_record_sharding_keeps_every_nth_record_in_file_order(info):
    # 1 val shard for 2 ranks: as tf.data's shard(2, rank) of the records in file order.
    expected = _split_ids(info, "val")
    for rank in range(2):
        data = _batches(info, "val", rank=rank, world_size=2, steps_per_epoch=None, batch_size=1)
        assert [b[0] for b in _cases(info, data.epoch(0))] == expected[rank::2]


@pytest.mark.parametrize("cache", [True, False])
def test_order_depends_only_on_seed_epoch_and_rank(info, cache):
    def order(seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[list[str]]:
        data = _batches(
            info, "train", rank=rank, world_size=world_size, shuffle=True, seed=seed,
            cache=cache, steps_per_epoch=3,
        )  # fmt: skip
        return _cases(info, data.epoch(epoch))

    torch.manual_seed(1)
    first = order(seed=5, epoch=0)
    torch.manual_seed(2)  # the global RNG plays no part
    assert order(seed=5, epoch=0) == first
    assert order(seed=5, epoch=1) != first
    assert order(seed=6, epoch=0) != first
    assert sorted(sum(first, [])) == sorted(_split_ids(info, "train"))  # 3 steps of 2: one pass
    assert order(seed=5, epoch=2, rank=1, world_size=2) == order(
        seed=5, epoch=2, rank=1, world_size=2
    )


def test_each_epoch_starts_a_fresh_pass(info):
    # train rank 0 of 2 holds 3 records; 4 steps of 2 = 8 draws = one pass, one pass, 2 more.
    data = _batches(info, "train", rank=0, world_size=2, shuffle=True, steps_per_epoch=4)
    assert data.records == 3
    for epoch in range(2):
        drawn = [case for batch in _cases(info, data.epoch(epoch)) for case in batch]
        assert len(set(drawn[:3])) == 3 and len(set(drawn[3:6])) == 3
        assert Counter(drawn[:6]) == Counter(drawn[:3] * 2)


@pytest.mark.parametrize("world_size", [1, 2])
def test_cache_and_stream_serve_each_rank_the_same_records(info, world_size):
    for rank in range(world_size):
        kwargs = dict(rank=rank, world_size=world_size, shuffle=True, steps_per_epoch=None)
        cached = _cases(info, _batches(info, "train", cache=True, **kwargs).epoch(3))
        streamed = _cases(info, _batches(info, "train", cache=False, **kwargs).epoch(3))
        assert Counter(sum(cached, [])) == Counter(sum(streamed, []))


def test_cached_epochs_decode_the_shards_once_for_every_rank(info, tmp_path, monkeypatch):
    from distmis.shards import node_cache

    made = []
    real = node_cache._materialise
    monkeypatch.setattr(node_cache, "_materialise", lambda *a: made.append(a[2]) or real(*a))
    for rank in range(2):
        data = _batches(
            info, "train", cache=True, cache_scope=tmp_path, shuffle=True, steps_per_epoch=4,
            rank=rank, world_size=2,
        )  # fmt: skip
        for epoch in range(3):
            assert len(list(data.epoch(epoch))) == 4
    assert made == ["train"]


def test_cache_without_a_scope_is_an_error(info):
    with pytest.raises(ValueError, match="cache=True needs cache_scope"):
        EpochBatches(info.root, "train", 1, shuffle=False, seed=0, cache=True, steps_per_epoch=1)


def test_loader_workers_give_the_same_steps_and_records(info):
    kwargs = dict(rank=1, world_size=2, shuffle=True, loader_workers=2)
    data = _batches(info, "train", steps_per_epoch=5, **kwargs)
    batches = _cases(info, data.epoch(0))
    assert len(batches) == 5 and all(len(b) == 2 for b in batches)
    one_pass = _cases(info, _batches(info, "train", steps_per_epoch=None, **kwargs).epoch(0))
    in_process = _cases(
        info, _batches(info, "train", steps_per_epoch=None, **{**kwargs, "loader_workers": 0})
        .epoch(0)
    )  # fmt: skip
    assert Counter(sum(one_pass, [])) == Counter(sum(in_process, []))
    assert set(sum(batches, [])) == set(sum(one_pass, []))


def test_a_rank_without_records_is_an_error_naming_split_and_rank(info):
    with pytest.raises(ValueError, match=r"split 'val' of .* gives rank 3 of 4 no records"):
        _batches(info, "val", rank=3, world_size=4, steps_per_epoch=1)


def test_invalid_arguments_are_rejected(info, tmp_path):
    with pytest.raises(ValueError, match="steps_per_epoch must be >= 1 or None"):
        _batches(info, "train", steps_per_epoch=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        _batches(info, "train", steps_per_epoch=1, batch_size=0)
    with pytest.raises(ValueError, match="split must be one of"):
        _batches(info, "dev", steps_per_epoch=1)
    with pytest.raises(ValueError, match="need 0 <= rank < world_size"):
        _batches(info, "train", rank=2, world_size=2, steps_per_epoch=1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        _batches(info, "train", steps_per_epoch=1).epoch(-1)
    with pytest.raises(Exception, match=r"info\.json is missing"):
        EpochBatches(
            Path(tmp_path), "train", 1, shuffle=False, seed=0, cache=False, steps_per_epoch=1
        )


def test_buffer_shuffle_is_a_seeded_permutation_local_to_its_buffer():
    items = list(range(20))
    a = list(buffer_shuffled(items, 4, np.random.default_rng(0)))
    assert sorted(a) == items and a != items
    assert a == list(buffer_shuffled(items, 4, np.random.default_rng(0)))
    # With a buffer of 4, item i is emitted no earlier than position i - 3.
    assert all(position >= item - 3 for position, item in enumerate(a))
    assert list(buffer_shuffled(items, 1, np.random.default_rng(0))) == items


def test_streaming_shuffles_shard_order_per_epoch(info):
    # A buffer of one record leaves only the shard order to shuffle: each epoch reads the
    # shards whole, in file order within each, in its own order.
    k = len(info.label_channels)
    shards = [
        tuple(r.case_id for r in read_records(f, "float32", k)) for f in info.shard_files("train")
    ]
    data = _batches(
        info, "train", shuffle=True, shuffle_buffer=1, steps_per_epoch=None, batch_size=1
    )
    orders = set()
    for epoch in range(4):
        drawn = tuple(batch[0] for batch in _cases(info, data.epoch(epoch)))
        left, rest = list(shards), drawn
        while rest:  # drawn must be the shards, whole, one after another
            shard = next(s for s in left if rest[: len(s)] == s)
            left.remove(shard)
            rest = rest[len(shard) :]
        assert not left
        orders.add(drawn)
    assert len(orders) > 1
