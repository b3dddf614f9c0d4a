"""The tf.data pipeline over real converted shards: shapes, batching, sharding, seeded order."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from distmis.backends.tensorflow.dataset import load_arrays, make_dataset
from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards.info import DatasetInfo

SOURCE_SHAPE = (24, 24, 20)
SHAPE = (16, 16, 16)


def write_tfrecords(root: Path, cases: int, params: ConvertParams, seed: int = 0) -> DatasetInfo:
    """Synthesise ``cases`` MSD cases under ``root`` and convert them; return the info."""
    task = synthesize_dataset(root / "msd", cases, SOURCE_SHAPE, seed, progress=False)
    convert_dataset(task, root / "tfrecords", params, workers=1, progress=False)
    return DatasetInfo.from_dir(root / "tfrecords")


@pytest.fixture(scope="module")
def binary(tmp_path_factory) -> DatasetInfo:
    """12 cases, binary labels: train 9 in two shards (5 + 4), val 3 in one, test empty."""
    params = ConvertParams(
        shape=SHAPE, label_mode="binary", split=(0.75, 0.25, 0.0), shards=(2, 1, 1)
    )
    return write_tfrecords(tmp_path_factory.mktemp("binary"), 12, params)


@pytest.fixture(scope="module")
def regions(tmp_path_factory) -> DatasetInfo:
    """6 cases, WT/TC/ET labels, float16 images in GZIP shards: train 3 in three shards."""
    params = ConvertParams(
        shape=SHAPE,
        label_mode="regions",
        split=(0.5, 0.5, 0.0),
        shards=(3, 1, 1),
        compression="gzip",
        image_dtype="float16",
    )
    return write_tfrecords(tmp_path_factory.mktemp("regions"), 6, params)


def fingerprints(dataset: tf.data.Dataset) -> list[str]:
    """One hash per record, in the order the (batched) dataset yields them."""
    return [
        hashlib.sha256(image.tobytes()).hexdigest()[:16]
        for image, _ in dataset.unbatch().as_numpy_iterator()
    ]


def batch_sizes(dataset: tf.data.Dataset) -> list[int]:
    return [int(image.shape[0]) for image, _ in dataset]


def test_batches_have_the_shapes_and_dtypes_of_info(binary):
    dataset = make_dataset(binary, "train", 4, shuffle=True, seed=0)
    image_spec, label_spec = dataset.element_spec
    assert image_spec.dtype == tf.float32 and label_spec.dtype == tf.float32
    assert tuple(image_spec.shape) == (None, 16, 16, 16, 4)
    assert tuple(label_spec.shape) == (None, 16, 16, 16, 1)
    assert batch_sizes(dataset) == [4, 4, 1]
    image, label = next(iter(dataset))
    assert set(np.unique(label.numpy())) <= {0.0, 1.0} and label.numpy().max() == 1.0
    assert np.isfinite(image.numpy()).all()


def test_drop_remainder_gives_static_full_batches(binary):
    dataset = make_dataset(binary, "train", 4, shuffle=False, seed=0, drop_remainder=True)
    assert tuple(dataset.element_spec[0].shape) == (4, 16, 16, 16, 4)
    assert batch_sizes(dataset) == [4, 4]


def test_float16_gzip_regions_decode_to_float32_with_three_label_channels(regions, tmp_path):
    dataset = make_dataset(
        regions, "train", 2, shuffle=False, seed=0, cache=True, cache_scope=tmp_path
    )
    assert tuple(dataset.element_spec[1].shape) == (None, 16, 16, 16, 3)
    images, labels = load_arrays(regions, "train")
    assert images.dtype == np.float32 and images.shape == (3, 16, 16, 16, 4)
    assert labels.shape == (3, 16, 16, 16, 3)
    # Nested BraTS regions: ET inside TC inside WT.
    assert (labels[..., 2] <= labels[..., 1]).all() and (labels[..., 1] <= labels[..., 0]).all()
    # Two passes over the cached dataset give the same records as load_arrays.
    expected = sorted(hashlib.sha256(i.tobytes()).hexdigest()[:16] for i in images)
    for _ in range(2):
        assert sorted(fingerprints(dataset)) == expected


def test_load_arrays_reads_the_split_in_file_order(binary):
    images, labels = load_arrays(binary, "val")
    assert images.shape == (3, 16, 16, 16, 4) and labels.shape == (3, 16, 16, 16, 1)
    unshuffled = make_dataset(binary, "val", 3, shuffle=False, seed=0)
    assert fingerprints(unshuffled) == [
        hashlib.sha256(i.tobytes()).hexdigest()[:16] for i in images
    ]


@pytest.mark.parametrize(
    ("split", "workers", "by_file"),
    [("train", 2, True), ("val", 2, False), ("val", 3, False)],
)
def test_worker_shards_are_disjoint_and_cover_the_split(binary, split, workers, by_file):
    everything = fingerprints(make_dataset(binary, split, 2, shuffle=False, seed=0))
    parts = [
        fingerprints(make_dataset(binary, split, 2, shuffle=True, seed=5, shard=(workers, i)))
        for i in range(workers)
    ]
    assert sorted(sum(parts, [])) == sorted(everything)
    if by_file:
        files = binary.splits[split]
        assert [len(p) for p in parts] == [s.records for s in files]


def test_more_workers_than_files_falls_back_to_record_sharding(regions):
    everything = fingerprints(make_dataset(regions, "train", 1, shuffle=False, seed=0))
    parts = [
        fingerprints(make_dataset(regions, "train", 1, shuffle=True, seed=i, shard=(4, i)))
        for i in range(4)
    ]
    assert sorted(sum(parts, [])) == sorted(everything)
    assert sorted(len(p) for p in parts) == [0, 1, 1, 1]


@pytest.mark.parametrize(("split", "workers"), [("train", 2), ("train", 3), ("val", 2)])
def test_cached_and_streamed_workers_get_the_records_the_torch_backend_gets(
    binary, tmp_path, split, workers
):
    from distmis.shards.parts import rank_part, read_part

    for index in range(workers):
        kwargs = dict(shuffle=True, seed=3, shard=(workers, index))
        streamed = make_dataset(binary, split, 2, **kwargs)
        cached = make_dataset(binary, split, 2, cache=True, cache_scope=tmp_path, **kwargs)
        part = rank_part(binary.splits[split], index, workers)
        torch_side = [
            hashlib.sha256(r.image.astype(np.float32).tobytes()).hexdigest()[:16]
            for r in read_part(part, binary.image_dtype, 1)
        ]
        assert sorted(fingerprints(streamed)) == sorted(fingerprints(cached)) == sorted(torch_side)


def test_a_buffer_of_one_record_keeps_each_shard_whole_and_in_file_order(binary):
    # Interleaving two shards, one record from each in turn; the buffer adds no reordering.
    dataset = make_dataset(binary, "train", 1, shuffle=True, seed=0, shuffle_buffer=1)
    drawn = fingerprints(dataset)
    shards = [
        fingerprints(make_dataset(binary, "train", 1, shuffle=False, seed=0, shard=(2, i)))
        for i in range(2)
    ]
    assert drawn[0::2][:4] in (shards[0][:4], shards[1][:4])
    assert sorted(drawn) == sorted(shards[0] + shards[1])


def test_sharded_dataset_turns_off_tf_distribute_auto_sharding(binary):
    off = tf.data.experimental.AutoShardPolicy.OFF
    sharded = make_dataset(binary, "train", 2, shuffle=False, seed=0, shard=(2, 0))
    assert sharded.options().experimental_distribute.auto_shard_policy == off
    plain = make_dataset(binary, "train", 2, shuffle=False, seed=0)
    assert plain.options().experimental_distribute.auto_shard_policy != off


def test_seeded_shuffle_is_reproducible_and_reshuffles_each_epoch(binary):
    def order(seed: int) -> list[str]:
        dataset = make_dataset(binary, "train", 3, shuffle=True, seed=seed, repeat=True)
        return fingerprints(dataset.take(6))  # two epochs of 9 records (3 batches each)

    first = order(1)
    assert first == order(1)
    assert first != order(2)
    epoch1, epoch2 = first[:9], first[9:]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    assert first[:9] != fingerprints(make_dataset(binary, "train", 3, shuffle=False, seed=1))


def test_bad_arguments_are_rejected(binary):
    with pytest.raises(ValueError, match="split must be one of"):
        make_dataset(binary, "validation", 2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="holds no records"):
        make_dataset(binary, "test", 2, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="shard must be"):
        make_dataset(binary, "train", 2, shuffle=False, seed=0, shard=(2, 2))
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(binary, "train", 0, shuffle=False, seed=0)
    with pytest.raises(ValueError, match="shuffle_buffer >= 1"):
        make_dataset(binary, "train", 2, shuffle=True, seed=0, shuffle_buffer=0)
    with pytest.raises(ValueError, match="cache=True needs cache_scope"):
        make_dataset(binary, "train", 2, shuffle=True, seed=0, cache=True)
