"""The TFRecord record schema shared by every stage that reads or writes shards.

Each record is one ``tf.train.Example`` with exactly these features:

=========  =========  ==========================================================
key        type       content
=========  =========  ==========================================================
image      bytes      little-endian ``image_dtype`` (info.json), channels-last
                      ``(X, Y, Z, C)``, C-order, z-scored per channel
label      bytes      uint8, ``(X, Y, Z, K)``, C-order, 0/1 per label channel
shape      int64 × 4  ``(X, Y, Z, C)`` of ``image``
case_id    bytes      UTF-8 case name, e.g. ``BRATS_001``
=========  =========  ==========================================================

``K`` is 1 for ``binary`` labels (tumour vs background) and 3 for ``regions``
(WT, TC, ET); info.json states it. Shards may be GZIP-compressed (info.json
``compression``). This module is the only place that knows the feature names;
:mod:`distmis.backends.tensorflow.dataset` states the same schema as a
``tf.io.parse_single_example`` spec. Writing and reading here need no TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distmis.errors import ContractError
from distmis.shards import example, tfrecord
from distmis.shards.example import Buffer
from distmis.shards.info import IMAGE_DTYPES, LABEL_DTYPE

FEATURE_KEYS = ("image", "label", "shape", "case_id")


@dataclass(frozen=True)
class Record:
    """One decoded record: image ``(X, Y, Z, C)`` and label ``(X, Y, Z, K)``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


def example_pieces(case_id: str, image: np.ndarray, label: np.ndarray) -> list[Buffer]:
    """One case as a serialised ``tf.train.Example`` following the schema above, as buffers.

    ``image`` must already have its on-disk dtype (float32 or float16) and ``label`` be uint8
    with the same spatial shape. C-contiguous little-endian arrays are not copied: the big
    pieces are views of them, for :class:`distmis.shards.tfrecord.TFRecordWriter` to stream.
    The bytes are deterministic (see :mod:`distmis.shards.example`).
    """
    if image.ndim != 4 or label.ndim != 4 or image.shape[:3] != label.shape[:3]:
        raise ValueError(
            f"case {case_id}: image {image.shape} and label {label.shape} must be "
            "(X,Y,Z,C)/(X,Y,Z,K)"
        )
    image_le = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    label_u8 = np.ascontiguousarray(label, dtype=LABEL_DTYPE)
    return example.encode_example(
        {
            "image": example.bytes_feature(memoryview(image_le).cast("B")),
            "label": example.bytes_feature(memoryview(label_u8).cast("B")),
            "shape": example.int64_feature(image.shape),
            "case_id": example.bytes_feature(case_id.encode()),
        }
    )


def encode_example(case_id: str, image: np.ndarray, label: np.ndarray) -> bytes:
    """:func:`example_pieces` joined into one ``bytes`` (small records, tests)."""
    return b"".join(example_pieces(case_id, image, label))


def decode_example(payload: Buffer, image_dtype: str, label_channels: int) -> Record:
    """Decode one serialised record to numpy, without TensorFlow.

    ``image`` ``(X, Y, Z, C)`` in ``image_dtype``, ``label`` ``(X, Y, Z, K)`` uint8; both are
    read-only views of ``payload`` (no copy). Raises ValueError if the record breaks the schema.
    """
    features = example.parse_example(payload)
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
        raise ValueError(f"missing features {missing}, got {sorted(features)}")
    shape = tuple(features["shape"])
    if len(shape) != 4 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be four positive ints (X, Y, Z, C), got {shape}")
    if any(len(features[k]) != 1 for k in ("image", "label", "case_id")):
        raise ValueError("image, label and case_id must each hold one bytes value")
    (image_bytes,), (label_bytes,), (case_id,) = (
        features["image"],
        features["label"],
        features["case_id"],
    )
    dtype = IMAGE_DTYPES[image_dtype]
    label_shape = shape[:3] + (int(label_channels),)
    if len(image_bytes) != dtype.itemsize * int(np.prod(shape)):
        raise ValueError(f"image has {len(image_bytes)} bytes, not {shape} of {image_dtype}")
    if len(label_bytes) != int(np.prod(label_shape)):
        raise ValueError(f"label has {len(label_bytes)} bytes, not {label_shape} of uint8")
    image = np.frombuffer(image_bytes, dtype=dtype).reshape(shape)
    label = np.frombuffer(label_bytes, dtype=LABEL_DTYPE).reshape(label_shape)
    return Record(bytes(case_id).decode(), image, label)


def read_records(
    path: Path | str, image_dtype: str, label_channels: int, compression: str = "none"
) -> Iterator[Record]:
    """The decoded records of one shard, CRC-checked; errors name the shard and the record."""
    for index, payload in enumerate(tfrecord.read_payloads(path, compression)):
        try:
            yield decode_example(payload, image_dtype, label_channels)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractError(f"{path}: record {index}: {exc}; rerun {tfrecord.MADE_BY}") from exc
