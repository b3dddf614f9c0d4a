"""Seeded train/val/test split and the assignment of cases to shards."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


def split_counts(cases: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Cases per split: train and val take ``round(n * fraction)``, test the rest."""
    n_train = round(cases * fractions["train"])
    n_val = round(cases * fractions["val"])
    return {"train": n_train, "val": n_val, "test": cases - n_train - n_val}


def expected_split_counts(config: Mapping[str, Any], cases: int | None = None) -> dict[str, int]:
    """The cases each split will get of ``cases``, by default the source's case count (the
    config's synthetic ``cases``, or MSD Task01's): what the conversion will write, known
    before it runs."""
    from distmis.prepare.task import MSD_BRATS_CASES

    data = config["data"]
    if cases is None:
        synthetic = data["source"] == "synthetic"
        cases = data["synthetic"]["cases"] if synthetic else MSD_BRATS_CASES
    return split_counts(cases, data["preprocess"]["split"])


def split_cases(
    case_ids: Sequence[str], fractions: Mapping[str, float], seed: int
) -> dict[str, list[str]]:
    """Shuffle ``case_ids`` with ``seed`` and cut by ``fractions`` (train, val, test).

    The input order does not matter (ids are sorted first), so the same ids and seed
    always give the same split. Train and val take ``round(n * fraction)`` cases; test
    takes the rest, so no case is lost to rounding.
    """
    ids = sorted(case_ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    counts = split_counts(len(ids), fractions)
    n_train, n_val = counts["train"], counts["val"]
    return {
        "train": sorted(shuffled[:n_train]),
        "val": sorted(shuffled[n_train : n_train + n_val]),
        "test": sorted(shuffled[n_train + n_val :]),
    }


def assign_shards(case_ids: Sequence[str], shard_count: int) -> list[list[str]]:
    """Deal cases round-robin into ``shard_count`` shards (sizes differ by at most one)."""
    if shard_count < 1:
        raise ValueError(f"shard count must be >= 1, got {shard_count}")
    return [list(case_ids[i::shard_count]) for i in range(shard_count)]


def shard_filename(split: str, index: int, count: int, compression: str) -> str:
    """``train-00001-of-00004.tfrecord`` (``.gz`` appended for GZIP shards)."""
    suffix = ".tfrecord.gz" if compression == "gzip" else ".tfrecord"
    return f"{split}-{index:05d}-of-{count:05d}{suffix}"
