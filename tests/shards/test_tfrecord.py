"""TFRecord framing: our writer read by TensorFlow, our reader on TensorFlow's files, corruption.

Shards come from the real converter (``convert_dataset`` with 2 worker processes).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from distmis.backends.tensorflow.dataset import feature_spec
from distmis.errors import ContractError
from distmis.prepare.convert import ConvertParams, convert_dataset
from distmis.prepare.synthetic import synthesize_dataset
from distmis.shards.info import DatasetInfo
from distmis.shards.records import decode_example, encode_example, read_records
from distmis.shards.tfrecord import TFRecordWriter, masked_crc32c, read_payloads

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


@pytest.fixture(scope="module")
def gzipped(msd_task, tmp_path_factory) -> DatasetInfo:
    """GZIP float16 shards, 1 label channel."""
    return _convert(
        msd_task,
        tmp_path_factory.mktemp("gzip"),
        label_mode="binary",
        compression="gzip",
        image_dtype="float16",
    )


def _all_files(info: DatasetInfo) -> list[str]:
    return [f for split in info.splits for f in info.shard_files(split)]


def _assert_tensorflow_reads_every_record(info: DatasetInfo) -> None:
    """TensorFlow's reader and ``parse_single_example`` with the README's spec agree with ours."""
    k = len(info.label_channels)
    image_dtype = {"float32": tf.float32, "float16": tf.float16}[info.image_dtype]
    for file in _all_files(info):
        dataset = tf.data.TFRecordDataset([file], compression_type=info.tf_compression)
        theirs = [tf.io.parse_single_example(raw, feature_spec()) for raw in dataset]
        ours = list(read_records(file, info.image_dtype, k, info.compression))
        assert len(ours) == len(theirs) > 0
        for mine, ref in zip(ours, theirs, strict=True):
            assert ref["case_id"].numpy().decode() == mine.case_id
            assert tuple(ref["shape"].numpy()) == mine.image.shape == (*STORED_SHAPE, 4)
            image = tf.reshape(tf.io.decode_raw(ref["image"], image_dtype), ref["shape"])
            label = tf.io.decode_raw(ref["label"], tf.uint8)
            np.testing.assert_array_equal(image.numpy(), mine.image)
            assert label.numpy().tobytes() == mine.label.tobytes()


def test_tensorflow_reads_every_record_the_writer_wrote(plain):
    assert plain.image_shape == (*STORED_SHAPE, 4) and len(plain.label_channels) == 3
    _assert_tensorflow_reads_every_record(plain)


def test_tensorflow_reads_gzip_float16_shards(gzipped):
    assert gzipped.compression == "gzip" and gzipped.image_dtype == "float16"
    assert Path(_all_files(gzipped)[0]).read_bytes()[:2] == b"\x1f\x8b"  # really gzip
    _assert_tensorflow_reads_every_record(gzipped)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_reader_reads_what_tensorflows_writer_wrote(tmp_path, compression):
    rng = np.random.default_rng(3)
    payloads = [
        encode_example(f"C{i}", rng.normal(size=(3, 4, 5, 4)).astype(np.float32), label)
        for i, label in enumerate([np.zeros((3, 4, 5, 1), np.uint8)] * 3)
    ]
    payloads.append(b"")  # an empty record frames like any other
    path = tmp_path / "theirs.tfrecord"
    options = tf.io.TFRecordOptions(compression_type="GZIP" if compression == "gzip" else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for payload in payloads:
            writer.write(payload)
    assert list(read_payloads(path, compression)) == payloads


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_writer_output_is_tensorflows_framing_and_its_sha256(tmp_path, compression):
    import hashlib

    payloads = [b"abc", b"", bytes(range(256)) * 1000]
    ours = tmp_path / "ours.tfrecord"
    with TFRecordWriter(ours, compression) as writer:
        for payload in payloads:
            writer.write([payload[:10], memoryview(payload)[10:]])  # pieces concatenate
    assert writer.records == 3
    assert writer.sha256 == hashlib.sha256(ours.read_bytes()).hexdigest()
    dataset = tf.data.TFRecordDataset(
        [str(ours)], compression_type="GZIP" if compression == "gzip" else ""
    )
    assert [raw.numpy() for raw in dataset] == payloads
    if compression == "none":
        theirs = tmp_path / "theirs.tfrecord"
        with tf.io.TFRecordWriter(str(theirs)) as tf_writer:
            for payload in payloads:
                tf_writer.write(payload)
        assert ours.read_bytes() == theirs.read_bytes()
    else:
        # Deterministic gzip: no file name, mtime 0, so equal payloads give equal files.
        again = tmp_path / "again.tfrecord"
        with TFRecordWriter(again, compression) as writer:
            for payload in payloads:
                writer.write([payload])
        assert again.read_bytes() == ours.read_bytes()
        assert struct.unpack("<I", ours.read_bytes()[4:8]) == (0,)  # gzip header MTIME


def test_masked_crc_matches_known_value():
    # CRC32C("123456789") = 0xE3069283 (the standard check value); masked by hand:
    crc = 0xE3069283
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"123456789") == expected


def _copy(src: str, dst: Path) -> Path:
    dst.write_bytes(Path(src).read_bytes())
    return dst


def test_corrupt_payload_byte_names_shard_and_record(plain, tmp_path):
    shard = _copy(plain.shard_files("train")[0], tmp_path / "bad.tfrecord")
    data = bytearray(shard.read_bytes())
    (first_length,) = struct.unpack("<Q", data[:8])
    second = 12 + first_length + 4  # start of record 1
    data[second + 12 + 100] ^= 0x01  # one bit inside record 1's payload
    shard.write_bytes(bytes(data))
    with pytest.raises(ContractError, match=r"bad\.tfrecord: record 1: CRC32C of the payload"):
        list(read_payloads(shard))


def test_corrupt_length_is_caught_by_its_crc(plain, tmp_path):
    shard = _copy(plain.shard_files("train")[0], tmp_path / "len.tfrecord")
    data = bytearray(shard.read_bytes())
    data[0] ^= 0x04
    shard.write_bytes(bytes(data))
    with pytest.raises(
        ContractError, match=r"len\.tfrecord: record 0: CRC32C of the record length"
    ):
        list(read_payloads(shard))


@pytest.mark.parametrize("cut", [5, 12 + 50, -2])
def test_truncated_file_names_shard(plain, tmp_path, cut):
    shard = _copy(plain.shard_files("train")[0], tmp_path / "cut.tfrecord")
    data = shard.read_bytes()
    shard.write_bytes(data[:cut])
    with pytest.raises(ContractError, match=r"cut\.tfrecord: record \d+: file ends inside"):
        list(read_payloads(shard))


def test_truncated_gzip_names_shard_and_record(gzipped, tmp_path):
    source = gzipped.shard_files("train")[0]
    records = len(list(read_payloads(source, "gzip")))
    assert records >= 1
    shard = _copy(source, tmp_path / "cut.tfrecord.gz")
    shard.write_bytes(shard.read_bytes()[:-40])
    # The cut falls inside the last record: the error says which one.
    with pytest.raises(
        ContractError, match=rf"cut\.tfrecord\.gz: record {records - 1}: corrupt gzip stream"
    ):
        list(read_payloads(shard, "gzip"))


def test_corrupt_payload_inside_gzip_names_shard(plain, tmp_path):
    raw = bytearray(Path(plain.shard_files("val")[0]).read_bytes())
    raw[-10] ^= 0xFF  # inside the last record's payload
    shard = tmp_path / "val.tfrecord.gz"
    shard.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(
        ContractError, match=r"val\.tfrecord\.gz: record \d+: CRC32C of the payload"
    ):
        list(read_payloads(shard, "gzip"))


def test_missing_shard_names_it(tmp_path):
    with pytest.raises(ContractError, match=r"nope\.tfrecord is missing"):
        list(read_payloads(tmp_path / "nope.tfrecord"))


def test_a_record_that_breaks_the_schema_names_shard_and_record(tmp_path):
    good = encode_example("A", np.zeros((2, 2, 2, 4), np.float32), np.zeros((2, 2, 2, 1), np.uint8))
    path = tmp_path / "schema.tfrecord"
    with TFRecordWriter(path) as writer:
        writer.write([good])
        writer.write([good[:-3]])  # framed correctly, but the Example inside is cut
    with pytest.raises(ContractError, match=r"schema\.tfrecord: record 1: "):
        list(read_records(path, "float32", 1))
    assert decode_example(good, "float32", 1).case_id == "A"
