"""Typed access to ``info.json``, the contract between conversion and every reader of shards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distmis.fileio import read_json

MADE_BY = "rule index_tfrecords (`distmis convert`)"


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

    @property
    def tf_compression(self) -> str:
        """The ``compression_type`` string TensorFlow's record readers expect."""
        return "GZIP" if self.compression == "gzip" else ""
