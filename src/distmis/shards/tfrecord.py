"""TFRecord files without TensorFlow: framing, CRCs, streaming writer and checked reader.

A TFRecord file is a sequence of records, each framed as::

    uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes
    payload (length bytes)        | uint32 masked CRC32C of the payload

with ``masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8 (mod 2**32)``. GZIP shards
(info.json ``compression: gzip``) are the same stream, gzip-compressed as a whole, which is
what ``tf.data.TFRecordDataset(..., compression_type="GZIP")`` reads.

:class:`TFRecordWriter` takes each payload as a list of buffers (:func:`distmis.shards.example.
encode_example`: a few header bytes around the caller's arrays), so a 140 MB volume goes from
the array to the file without being copied into a message or a string first. It streams each
array in 1 MiB chunks: the payload CRC and the file's sha256 are updated on a chunk while it
is still in cache, just before it is written (no second read of the array or the shard). GZIP output is deterministic (no name, mtime 0), so equal payloads give
equal files.

:func:`read_payloads` verifies both checksums of every record; a mismatch, a file that ends
inside a record or bad gzip data raises :class:`ContractError` naming the shard and the record.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import crc32c

from distmis.errors import ContractError
from distmis.shards.buffers import BufferPool
from distmis.shards.example import Buffer

MADE_BY = "rule convert_tfrecords (`distmis convert`)"
COMPRESSIONS = ("none", "gzip")
CRC_MASK_DELTA = 0xA282EAD8
LENGTH = struct.Struct("<Q")
HEADER = struct.Struct("<QI")  # length, masked CRC of the length
FOOTER = struct.Struct("<I")  # masked CRC of the payload
# zlib level 6 is gzip's and TensorFlow's default; wbits 31 = gzip container.
GZIP_LEVEL, GZIP_WBITS = 6, 16 + zlib.MAX_WBITS
# Small pieces (headers, framing) are gathered into one write; big ones go out as they are.
_GATHER_BELOW = 1 << 16
# Big pieces go out in chunks this size (fits a core's L2 cache; 140 write calls per case).
_CHUNK = 1 << 20


def mask(crc: int) -> int:
    """TFRecord's masking of a CRC32C (so a CRC of data holding CRCs is not degenerate)."""
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data: Buffer) -> int:
    """The CRC32C of ``data``, masked as TFRecord framing stores it."""
    return mask(crc32c.crc32c(data))


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")


class TFRecordWriter:
    """Write TFRecords to ``path``: ``write(pieces)`` per record, then :meth:`close`.

    ``compression`` is info.json's ``"none"`` or ``"gzip"``. The file is opened unbuffered:
    each big piece is one ``write`` straight from the caller's memory. After :meth:`close`,
    :attr:`sha256` is the hex digest of the file's bytes and :attr:`records` the count.
    """

    def __init__(self, path: Path | str, compression: str = "none") -> None:
        _check_compression(compression)
        self.path = Path(path)
        self.records = 0
        self.sha256: str | None = None
        self._digest = hashlib.sha256()
        self._file = self.path.open("wb", buffering=0)
        self._compressor = (
            zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, GZIP_WBITS)
            if compression == "gzip"
            else None
        )
        self._gathered = bytearray()

    def write(self, pieces: Sequence[Buffer]) -> None:
        """Append one record whose payload is the concatenation of ``pieces``."""
        views = [memoryview(p).cast("B") for p in pieces]
        length = LENGTH.pack(sum(v.nbytes for v in views))
        self._emit(length + FOOTER.pack(masked_crc32c(length)))
        # The payload CRC comes after the payload, so it is computed while streaming: each
        # chunk is CRC'd, hashed and written while it is still in the core's cache.
        crc = 0
        for view in views:
            for offset in range(0, view.nbytes, _CHUNK):
                chunk = view[offset : offset + _CHUNK]
                crc = crc32c.crc32c(chunk, value=crc)
                self._emit(chunk)
        self._emit(FOOTER.pack(mask(crc)))
        self.records += 1

    def _emit(self, data: memoryview | bytes) -> None:
        if self._compressor is not None:
            data = self._compressor.compress(data)
        if len(data) < _GATHER_BELOW:
            self._gathered += data
            return
        self._flush_gathered()
        self._write_raw(data)

    def _flush_gathered(self) -> None:
        if self._gathered:
            self._write_raw(self._gathered)
            self._gathered = bytearray()

    def _write_raw(self, data: Buffer) -> None:
        view = memoryview(data)
        self._digest.update(view)
        while view.nbytes:  # an unbuffered write may take fewer bytes than given
            view = view[self._file.write(view) :]

    def close(self) -> str:
        """Finish the file (flush, close); return its sha256."""
        if self.sha256 is None:
            try:
                if self._compressor is not None:
                    self._gathered += self._compressor.flush()
                self._flush_gathered()
            finally:
                self._file.close()
            self.sha256 = self._digest.hexdigest()
        return self.sha256

    def __enter__(self) -> TFRecordWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller discards the file; just release it
            self._file.close()


# ---------------------------------------------------------------- reading


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_into(stream: BinaryIO, size: int, pool: BufferPool) -> memoryview:
    """``size`` bytes (fewer at the end of the file) read straight into a block of ``pool``."""
    view = memoryview(pool.take(size))
    filled = 0
    while filled < size:
        got = stream.readinto(view[filled:])
        if not got:
            break
        filled += got
    return view[:filled]


def _records(stream: BinaryIO, path: Path, pool: BufferPool | None) -> Iterator[Buffer]:
    index = 0
    while True:
        where = f"{path}: record {index}"
        try:
            header = _read_exactly(stream, HEADER.size)
            if not header:
                return
            if len(header) < HEADER.size:
                raise ContractError(f"{where}: file ends inside the record header; rerun {MADE_BY}")
            length, length_crc = HEADER.unpack(header)
            if masked_crc32c(header[:8]) != length_crc:
                raise ContractError(
                    f"{where}: CRC32C of the record length mismatches; rerun {MADE_BY}"
                )
            payload = (
                _read_exactly(stream, length) if pool is None else _read_into(stream, length, pool)
            )
            footer = _read_exactly(stream, FOOTER.size)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            # A truncated or damaged gzip stream surfaces here, inside some record.
            raise ContractError(f"{where}: corrupt gzip stream ({exc}); rerun {MADE_BY}") from exc
        if len(payload) < length or len(footer) < FOOTER.size:
            raise ContractError(
                f"{where}: file ends inside the record ({len(payload)} of {length} payload "
                f"bytes); rerun {MADE_BY}"
            )
        if masked_crc32c(payload) != FOOTER.unpack(footer)[0]:
            raise ContractError(f"{where}: CRC32C of the payload mismatches; rerun {MADE_BY}")
        yield payload
        del payload  # before the next read, so a pooled block can be reused for it
        index += 1


def read_payloads(
    path: Path | str, compression: str = "none", pool: BufferPool | None = None
) -> Iterator[Buffer]:
    """The CRC-checked payloads of one TFRecord file, in order.

    ``compression`` is info.json's ``"none"`` or ``"gzip"``. With ``pool``, each payload is
    read straight into one of its blocks and yielded as a memoryview of it (the block is
    reused once nothing refers to the view; :mod:`distmis.shards.buffers`); without, as
    ``bytes``. Raises :class:`ContractError` naming ``path`` and the record index for a bad
    checksum, a truncated file or bad gzip data.
    """
    path = Path(path)
    _check_compression(compression)
    try:
        raw = path.open("rb")
    except FileNotFoundError as exc:
        raise ContractError(f"shard {path} is missing; rerun {MADE_BY}") from exc
    with raw:
        stream = gzip.GzipFile(fileobj=raw) if compression == "gzip" else raw
        yield from _records(stream, path, pool)
