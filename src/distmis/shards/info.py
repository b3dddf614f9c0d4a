"""Typed access to ``info.json``, the contract between conversion and every reader of shards."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distmis.fileio import read_json

MADE_BY = "rule index_tfrecords (`distmis convert`)"


# info.json's image_dtype → how the stored image bytes read; labels are always uint8.
IMAGE_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
LABEL_DTYPE = np.dtype("u1")


def decoded_record_bytes(
    image_shape: tuple[int, ...], label_shape: tuple[int, ...], image_dtype: str
) -> int:
    """Bytes of one decoded record: the image in ``image_dtype``, the label as uint8."""
    return (
        math.prod(image_shape) * IMAGE_DTYPES[image_dtype].itemsize
        + math.prod(label_shape) * LABEL_DTYPE.itemsize
    )


@dataclass(frozen=True)
class ShardInfo:
    file: Path
    records: int
    sha256: str


@dataclass(frozen=True)
class DatasetInfo:
    """What a reader needs to parse the shards: shapes, dtype, compression, files per split."""

    root: Path
    image_shape: tuple[int, int, int, int]
    label_shape: tuple[int, int, int, int]
    image_dtype: str
    compression: str
    label_channels: tuple[str, ...]
    modalities: tuple[str, ...]
    splits: dict[str, tuple[ShardInfo, ...]]
    raw: dict

    @classmethod
    def from_dir(cls, tfrecord_dir: Path) -> DatasetInfo:
        """Read ``<dir>/info.json``; a missing or malformed file names the rule that makes it."""
        from distmis.errors import ContractError

        root = Path(tfrecord_dir)
        path = root / "info.json"
        payload = read_json(path, MADE_BY)
        try:
            splits = {
                name: tuple(
                    ShardInfo(root / s["file"], int(s["records"]), s["sha256"])
                    for s in split["shards"]
                )
                for name, split in payload["splits"].items()
            }
            return cls(
                root=root,
                image_shape=tuple(payload["image_shape"]),
                label_shape=tuple(payload["label_shape"]),
                image_dtype=payload["image_dtype"],
                compression=payload["compression"],
                label_channels=tuple(payload["label_channels"]),
                modalities=tuple(payload["modalities"]),
                splits=splits,
                raw=payload,
            )
        except (KeyError, TypeError) as exc:
            raise ContractError(f"{path} is malformed (missing {exc}); rerun {MADE_BY}") from exc

    def shard_files(self, split: str) -> list[str]:
        return [str(s.file) for s in self.splits[split]]

    def count(self, split: str) -> int:
        return sum(s.records for s in self.splits[split])

    def decoded_bytes(self, split: str) -> int:
        """Bytes of ``split`` decoded: its images in ``image_dtype`` and its uint8 labels, what
        a node's cached copy of it holds (``shards/node_cache.py``) and a job's memory pays for."""
        return self.count(split) * decoded_record_bytes(
            self.image_shape, self.label_shape, self.image_dtype
        )

    @property
    def tf_compression(self) -> str:
        """The ``compression_type`` string TensorFlow's record readers expect."""
        return "GZIP" if self.compression == "gzip" else ""
