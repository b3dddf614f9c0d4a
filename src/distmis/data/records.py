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
``compression``). This module is the only place that knows the feature names.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEATURE_KEYS = ("image", "label", "shape", "case_id")
IMAGE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
LABEL_DTYPE = np.dtype("u1")


@dataclass(frozen=True)
class Record:
    """One decoded record: image ``(X, Y, Z, C)`` and label ``(X, Y, Z, K)``."""

    case_id: str
    image: np.ndarray
    label: np.ndarray


def encode_example(case_id: str, image: np.ndarray, label: np.ndarray) -> bytes:
    """Serialise one case as a ``tf.train.Example`` following the schema above.

    ``image`` must already have its on-disk dtype (float32 or float16);
    ``label`` is uint8 with the same spatial shape.
    """
    import tensorflow as tf  # imported lazily: only writers and TF readers need it

    if image.ndim != 4 or label.ndim != 4 or image.shape[:3] != label.shape[:3]:
        raise ValueError(
            f"case {case_id}: image {image.shape} and label {label.shape} must be (X,Y,Z,C)/(X,Y,Z,K)"
        )
    image_le = image.astype(image.dtype.newbyteorder("<"), copy=False)
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_le.tobytes()])),
        "label": tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[label.astype(LABEL_DTYPE, copy=False).tobytes()])
        ),
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=list(image.shape))),
        "case_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[case_id.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_spec() -> dict:
    """The ``tf.io.parse_single_example`` spec for the schema."""
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.string),
        "shape": tf.io.FixedLenFeature([4], tf.int64),
        "case_id": tf.io.FixedLenFeature([], tf.string),
    }


def decode_example(serialized: bytes, image_dtype: str, label_channels: int) -> Record:
    """Decode one serialised record to numpy (eager; for inspection and tests)."""
    import tensorflow as tf

    parsed = tf.io.parse_single_example(serialized, feature_spec())
    shape = tuple(int(v) for v in parsed["shape"].numpy())
    image = np.frombuffer(parsed["image"].numpy(), dtype=IMAGE_DTYPES[image_dtype]).reshape(shape)
    label = np.frombuffer(parsed["label"].numpy(), dtype=LABEL_DTYPE).reshape(
        shape[:3] + (label_channels,)
    )
    return Record(parsed["case_id"].numpy().decode(), image, label)
