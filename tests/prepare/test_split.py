from __future__ import annotations

import pytest

from distmis.prepare.split import assign_shards, shard_filename, split_cases

FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def test_same_seed_same_split_regardless_of_input_order():
    ids = [f"BRATS_{i:03d}" for i in range(1, 41)]
    first = split_cases(ids, FRACTIONS, seed=3)
    second = split_cases(list(reversed(ids)), FRACTIONS, seed=3)
    assert first == second


def test_different_seed_changes_split():
    ids = [f"BRATS_{i:03d}" for i in range(1, 41)]
    assert (
        split_cases(ids, FRACTIONS, seed=1)["test"] != split_cases(ids, FRACTIONS, seed=2)["test"]
    )


def test_split_sizes_and_partition():
    ids = [f"c{i}" for i in range(24)]
    split = split_cases(ids, FRACTIONS, seed=0)
    # round(16.8) = 17, round(3.6) = 4, rest = 3
    assert [len(split[s]) for s in ("train", "val", "test")] == [17, 4, 3]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(ids)


def test_assign_shards_round_robin():
    assert assign_shards(["a", "b", "c", "d", "e"], 2) == [["a", "c", "e"], ["b", "d"]]
    with pytest.raises(ValueError):
        assign_shards(["a"], 0)


def test_shard_filename():
    assert shard_filename("train", 1, 4, "none") == "train-00001-of-00004.tfrecord"
    assert shard_filename("val", 0, 1, "gzip") == "val-00000-of-00001.tfrecord.gz"
