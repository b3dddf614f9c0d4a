"""Read the TFRecord shards of :mod:`distmis.data.records` without TensorFlow, for PyTorch.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes
    payload (length bytes)        | uint32 masked CRC32C of the payload

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``. Both checksums are
verified; a mismatch or a file that ends inside a record raises :class:`ContractError` naming
the shard and the record index. GZIP shards (info.json ``compression: gzip``) are the same
stream, gzip-compressed as a whole.

The payload is a serialised ``tf.train.Example``. The maintained definitions of that message
ship inside ``tensorflow`` (importing ``tensorflow.core.example.example_pb2`` runs TensorFlow's
own ``__init__``) or ``tensorboard`` (not installed beside PyTorch on the GPU machines), so
:func:`parse_example` reads the few protobuf wire-format messages this schema uses instead
(Example → Features → map<string, Feature> → BytesList / Int64List); unknown fields are
skipped as protobuf requires. The tests check it byte for byte against TensorFlow's parser.

:func:`rank_part` gives each distributed rank its share of a split as TF's pipeline does
(whole shards when there are enough, else every ``world_size``-th record), :func:`read_part`
reads a share, and :class:`TFRecordVolumes` serves one pass of it as ``(image (C, X, Y, Z),
label (K, X, Y, Z))`` float32 tensors, shared out over DataLoader workers.
"""

from __future__ import annotations

import gzip
import logging
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import crc32c
import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from distmis.data.info import DatasetInfo, ShardInfo
from distmis.data.records import FEATURE_KEYS, IMAGE_DTYPES, LABEL_DTYPE, Record
from distmis.errors import ContractError

log = logging.getLogger(__name__)

MADE_BY = "rule convert_tfrecords (`distmis convert`)"
CRC_MASK_DELTA = 0xA282EAD8
HEADER = struct.Struct("<QI")  # length, masked CRC of the length
FOOTER = struct.Struct("<I")  # masked CRC of the payload

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
VARINT, I64, LEN, I32 = 0, 1, 2, 5


def masked_crc32c(data: bytes) -> int:
    """The CRC32C of ``data``, masked as TFRecord framing stores it."""
    crc = crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _records(stream: BinaryIO, path: Path) -> Iterator[bytes]:
    index = 0
    while True:
        header = _read_exactly(stream, HEADER.size)
        if not header:
            return
        where = f"{path}: record {index}"
        if len(header) < HEADER.size:
            raise ContractError(f"{where}: file ends inside the record header; rerun {MADE_BY}")
        length, length_crc = HEADER.unpack(header)
        if masked_crc32c(header[:8]) != length_crc:
            raise ContractError(f"{where}: CRC32C of the record length mismatches; rerun {MADE_BY}")
        payload = _read_exactly(stream, length)
        footer = _read_exactly(stream, FOOTER.size)
        if len(payload) < length or len(footer) < FOOTER.size:
            raise ContractError(
                f"{where}: file ends inside the record ({len(payload)} of {length} payload "
                f"bytes); rerun {MADE_BY}"
            )
        if masked_crc32c(payload) != FOOTER.unpack(footer)[0]:
            raise ContractError(f"{where}: CRC32C of the payload mismatches; rerun {MADE_BY}")
        yield payload
        index += 1


def read_payloads(path: Path | str, compression: str = "none") -> Iterator[bytes]:
    """The CRC-checked payloads of one TFRecord file, in order.

    ``compression`` is info.json's ``"none"`` or ``"gzip"``. Raises :class:`ContractError`
    naming ``path`` and the record index for a bad checksum, a truncated file or bad gzip data.
    """
    path = Path(path)
    if compression not in ("none", "gzip"):
        raise ValueError(f"compression must be 'none' or 'gzip', got {compression!r}")
    try:
        with path.open("rb") as raw:
            stream = gzip.GzipFile(fileobj=raw) if compression == "gzip" else raw
            yield from _records(stream, path)
    except FileNotFoundError as exc:
        raise ContractError(f"shard {path} is missing; rerun {MADE_BY}") from exc
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ContractError(f"{path}: corrupt gzip stream ({exc}); rerun {MADE_BY}") from exc


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """``(field number, wire type, value)`` of one message; LEN values as memoryviews."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == LEN:
            size, pos = _varint(buf, pos)
            if pos + size > len(buf):
                raise ValueError(f"field {number} runs past the end of its message")
            value, pos = buf[pos : pos + size], pos + size
        elif wire in (I64, I32):
            size = 8 if wire == I64 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported wire type {wire} for field {number}")
        yield number, wire, value


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _feature(buf: memoryview) -> list[bytes] | list[int]:
    """A ``Feature``: BytesList (field 1) → bytes values; Int64List (field 3) → ints."""
    for number, wire, value in _fields(buf):
        if number == 1 and wire == LEN:  # BytesList { repeated bytes value = 1; }
            return [bytes(v) for n, w, v in _fields(value) if n == 1 and w == LEN]
        if number == 3 and wire == LEN:  # Int64List { repeated int64 value = 1 [packed]; }
            ints: list[int] = []
            for n, w, v in _fields(value):
                if n == 1 and w == VARINT:  # unpacked
                    ints.append(_int64(v))
                elif n == 1 and w == LEN:  # packed
                    pos = 0
                    while pos < len(v):
                        item, pos = _varint(v, pos)
                        ints.append(_int64(item))
            return ints
        if number == 2:
            raise ValueError("float_list features are not part of the record schema")
    return []


def parse_example(payload: bytes) -> dict[str, list[bytes] | list[int]]:
    """The features of a serialised ``tf.train.Example``: name → bytes or int64 values.

    Raises ValueError for malformed wire data.
    """
    features: dict[str, list[bytes] | list[int]] = {}
    for number, wire, example_field in _fields(memoryview(payload)):
        if number != 1 or wire != LEN:  # Example { Features features = 1; }
            continue
        for n, w, entry in _fields(example_field):
            if n != 1 or w != LEN:  # Features { map<string, Feature> feature = 1; }
                continue
            key, value = "", memoryview(b"")
            for en, ew, ev in _fields(entry):  # map entry { string key = 1; Feature value = 2; }
                if en == 1 and ew == LEN:
                    key = bytes(ev).decode()
                elif en == 2 and ew == LEN:
                    value = ev
            # As protobuf: a later entry for the same key replaces an earlier one.
            features[key] = _feature(value)
    return features


def decode_payload(payload: bytes, image_dtype: str, label_channels: int) -> Record:
    """One record as :func:`distmis.data.records.decode_example` returns it, without TF.

    ``image`` ``(X, Y, Z, C)`` in ``image_dtype``, ``label`` ``(X, Y, Z, K)`` uint8; both are
    read-only views of the payload. Raises ValueError if the record breaks the schema.
    """
    features = parse_example(payload)
    missing = [k for k in FEATURE_KEYS if k not in features]
    if missing:
        raise ValueError(f"missing features {missing}, got {sorted(features)}")
    shape = tuple(features["shape"])
    if len(shape) != 4 or any(not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"shape must be four positive ints (X, Y, Z, C), got {shape}")
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
    return Record(case_id.decode(), image, label)


def read_records(
    path: Path | str, image_dtype: str, label_channels: int, compression: str = "none"
) -> Iterator[Record]:
    """The decoded records of one shard; errors name the shard and the record index."""
    for index, payload in enumerate(read_payloads(path, compression)):
        try:
            yield decode_payload(payload, image_dtype, label_channels)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ContractError(f"{path}: record {index}: {exc}; rerun {MADE_BY}") from exc


def to_tensors(record: Record) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image (C, X, Y, Z), label (K, X, Y, Z))``, contiguous float32 copies."""
    image = np.ascontiguousarray(np.moveaxis(record.image, -1, 0), dtype=np.float32)
    label = np.ascontiguousarray(np.moveaxis(record.label, -1, 0), dtype=np.float32)
    return torch.from_numpy(image), torch.from_numpy(label)


@dataclass(frozen=True)
class Part:
    """The records one consumer reads: ``shards`` in this order, and of the records they hold
    (numbered 0, 1, … across the shards in this order) those at ``offset + k·stride``.

    ``stride == 1`` means whole shards; ``stride > 1`` is TF's record sharding
    (``Dataset.shard(stride, offset)``), a partition only while every consumer reads the same
    shards in the same order.
    """

    shards: tuple[ShardInfo, ...]
    offset: int = 0
    stride: int = 1

    @property
    def records(self) -> int:
        """How many records this part holds, by info.json's counts."""
        total = sum(s.records for s in self.shards)
        return len(range(self.offset, total, self.stride))

    def shuffled(self, generator: np.random.Generator) -> Part:
        """The same part with its shards in a random order; only whole-shard parts may be."""
        if self.stride != 1:
            raise ValueError("a record-sharded part must keep its shard order (see Part)")
        order = generator.permutation(len(self.shards))
        return Part(tuple(self.shards[i] for i in order))

    def for_worker(self, worker: int, workers: int) -> Part:
        """DataLoader worker ``worker`` of ``workers``'s share: disjoint shares that cover the part.

        Whole shards (every ``workers``-th) while the part is whole shards and has at least one
        per worker; otherwise every worker reads all the part's shards and keeps every
        ``workers``-th of its records.
        """
        if not 0 <= worker < workers:
            raise ValueError(f"need 0 <= worker < workers, got worker {worker} of {workers}")
        if self.stride == 1 and len(self.shards) >= workers:
            return Part(self.shards[worker::workers])
        return Part(self.shards, self.offset + self.stride * worker, self.stride * workers)


def rank_part(shards: Sequence[ShardInfo], rank: int, world_size: int) -> Part:
    """The part of a split's ``shards`` (info.json order) that rank ``rank`` of ``world_size`` reads.

    As :func:`distmis.backends.tensorflow.dataset._worker_files`: every ``world_size``-th whole shard when
    there are at least ``world_size`` shards; otherwise every rank reads every shard and keeps
    every ``world_size``-th record, so no rank is left without data (synchronous all-reduce
    training would wait for it forever). Ranks' parts are disjoint and cover the split.
    DataLoader workers then split a rank's part (:meth:`Part.for_worker`), so what a rank
    reads never depends on how many workers it uses.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank} of {world_size}")
    shards = tuple(shards)
    if len(shards) >= world_size:
        return Part(shards[rank::world_size])
    log.info(
        "%d shards for %d ranks: sharding by record, every rank reads every shard",
        len(shards),
        world_size,
    )
    return Part(shards, rank, world_size)


def read_part(
    part: Part, image_dtype: str, label_channels: int, compression: str = "none"
) -> Iterator[Record]:
    """The records of ``part``, in order; others' records are skipped undecoded.

    A shard whose record count differs from info.json raises :class:`ContractError` (after its
    last record, so a short shard is caught even when none of its records are this part's).
    """
    index = 0  # of the record within the part's shard sequence
    for shard in part.shards:
        count = 0
        for payload in read_payloads(shard.file, compression):
            if index >= part.offset and (index - part.offset) % part.stride == 0:
                try:
                    yield decode_payload(payload, image_dtype, label_channels)
                except (ValueError, UnicodeDecodeError) as exc:
                    raise ContractError(
                        f"{shard.file}: record {count}: {exc}; rerun {MADE_BY}"
                    ) from exc
            count += 1
            index += 1
        if count != shard.records:
            raise ContractError(
                f"{shard.file} holds {count} records but info.json says {shard.records}; "
                f"rerun {MADE_BY}"
            )


class TFRecordVolumes(IterableDataset):
    """One split of a converted dataset as ``(image (C, X, Y, Z), label (K, X, Y, Z))`` float32.

    Reads ``<tfrecord_dir>/info.json``. Rank ``rank`` of ``world_size`` distributed processes
    reads its :func:`rank_part`, which its DataLoader workers (``get_worker_info``) share out
    (:meth:`Part.for_worker`); one pass, shards in info.json order, records in file order
    (no shuffling; :mod:`distmis.backends.torch.data` shuffles, repeats and batches).
    A shard whose record count differs from info.json raises :class:`ContractError`.
    """

    def __init__(
        self, tfrecord_dir: Path | str, split: str, rank: int = 0, world_size: int = 1
    ) -> None:
        super().__init__()
        self.info = DatasetInfo.from_dir(Path(tfrecord_dir))
        if split not in self.info.splits:
            raise ValueError(f"split must be one of {sorted(self.info.splits)}, got {split!r}")
        self.split = split
        self.part = rank_part(self.info.splits[split], rank, world_size)

    def my_part(self) -> Part:
        """What this rank and DataLoader worker reads."""
        worker = get_worker_info()
        worker_id, workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        return self.part.for_worker(worker_id, workers)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        records = read_part(
            self.my_part(),
            self.info.image_dtype,
            len(self.info.label_channels),
            self.info.compression,
        )
        for record in records:
            yield to_tensors(record)


__all__ = [
    "Part",
    "TFRecordVolumes",
    "decode_payload",
    "masked_crc32c",
    "parse_example",
    "rank_part",
    "read_part",
    "read_payloads",
    "read_records",
    "to_tensors",
]
