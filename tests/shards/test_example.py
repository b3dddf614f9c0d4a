"""The TensorFlow-free Example codec against TensorFlow's own protobuf, both directions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from distmis.shards import example
from distmis.shards.records import decode_example, encode_example, example_pieces


def _tf_example(case_id: str, image: np.ndarray, label: np.ndarray) -> tf.train.Example:
    def bytes_feature(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    return tf.train.Example(
        features=tf.train.Features(
            feature={
                "image": bytes_feature(image.astype(image.dtype.newbyteorder("<")).tobytes()),
                "label": bytes_feature(label.tobytes()),
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
                "case_id": bytes_feature(case_id.encode()),
            }
        )
    )


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [
        ((4, 2, 6, 3), np.float32),
        ((5, 3, 2, 4), np.float16),
        # ~3 MB: lengths take 4-byte varints, and the image is one piece of its own.
        ((96, 96, 20, 4), np.float32),
    ],
)
def test_encoding_is_protobufs_deterministic_serialisation(shape, dtype):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(dtype)
    label = (rng.random((*shape[:3], 2)) > 0.5).astype(np.uint8)
    ours = encode_example("BRATS_042", image, label)
    assert ours == _tf_example("BRATS_042", image, label).SerializeToString(deterministic=True)
    # ... and TensorFlow parses it back to the same example.
    assert tf.train.Example.FromString(ours) == _tf_example("BRATS_042", image, label)


def test_big_pieces_are_views_of_the_callers_arrays():
    image = np.arange(2 * 3 * 4 * 4 * 1000, dtype=np.float32).reshape(20, 30, 40, 4)
    label = np.zeros((20, 30, 40, 1), np.uint8)
    pieces = example_pieces("BRATS_001", image, label)
    image_view, label_view = [np.frombuffer(p, np.uint8) for p in pieces if len(p) > 4096]
    assert image_view.nbytes == image.nbytes and np.shares_memory(image_view, image)
    assert label_view.nbytes == label.nbytes and np.shares_memory(label_view, label)
    # A handful of pieces whatever the size: headers are merged around the two arrays.
    assert len(pieces) == 5, [memoryview(p).nbytes for p in pieces]


def test_non_contiguous_and_big_endian_inputs_are_stored_as_the_schema_says():
    rng = np.random.default_rng(1)
    image = rng.normal(size=(3, 4, 5, 2)).astype(">f4")
    label = np.asfortranarray((rng.random((3, 4, 5, 1)) > 0.5).astype(np.uint8))
    record = decode_example(encode_example("X", image, label), "float32", 1)
    np.testing.assert_array_equal(record.image, image)
    np.testing.assert_array_equal(record.label, label)
    assert record.image.dtype == np.dtype("<f4")


def test_parse_example_agrees_with_protobuf_on_negative_and_unpacked_ints():
    message = tf.train.Example(
        features=tf.train.Features(
            feature={
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=[2, -1, 300, 0])),
                "case_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b""])),
            }
        )
    )
    parsed = example.parse_example(message.SerializeToString())
    assert parsed["shape"] == [2, -1, 300, 0]
    assert [bytes(v) for v in parsed["case_id"]] == [b"a", b""]
    # Our int64 encoding of negatives is protobuf's (two's complement, 10-byte varints).
    ours = example.encode_example({"n": example.int64_feature([-1, 2**40, -(2**63)])})
    assert tf.train.Example.FromString(b"".join(ours)).features.feature["n"].int64_list.value == [
        -1,
        2**40,
        -(2**63),
    ]
    # Int64List written unpacked (field 1, varint, per value), as older writers may do.
    unpacked = bytes([0x08, 0x05, 0x08, 0x07])
    feature = bytes([0x1A, len(unpacked)]) + unpacked  # Feature.int64_list = 3
    entry = bytes([0x0A, 1]) + b"n" + bytes([0x12, len(feature)]) + feature
    features = bytes([0x0A, len(entry)]) + entry
    assert example.parse_example(bytes([0x0A, len(features)]) + features) == {"n": [5, 7]}


def test_varint_matches_the_protobuf_encoding():
    assert example.varint(0) == b"\x00"
    assert example.varint(1) == b"\x01"
    assert example.varint(150) == b"\x96\x01"  # the protobuf docs' example
    assert example.varint(2**64 - 1) == b"\xff" * 9 + b"\x01"


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"\x0a\x05\x0a\x03", "runs past the end"),
        (b"\x0a\x80", "truncated varint"),
        (b"\x0b", "unsupported wire type 3"),
    ],
)
def test_malformed_wire_data_raises_value_error(payload, problem):
    with pytest.raises(ValueError, match=problem):
        example.parse_example(payload)


def test_decode_rejects_records_that_break_the_schema():
    image = np.zeros((2, 2, 2, 4), np.float32)
    label = np.zeros((2, 2, 2, 1), np.uint8)
    good = encode_example("A", image, label)
    with pytest.raises(ValueError, match="label has 8 bytes, not"):
        decode_example(good, "float32", 3)
    with pytest.raises(ValueError, match="image has 128 bytes, not"):
        decode_example(good, "float16", 1)
    no_label = b"".join(
        example.encode_example(
            {
                "image": example.bytes_feature(image.tobytes()),
                "shape": example.int64_feature(image.shape),
                "case_id": example.bytes_feature(b"A"),
            }
        )
    )
    with pytest.raises(ValueError, match=r"missing features \['label'\]"):
        decode_example(no_label, "float32", 1)
