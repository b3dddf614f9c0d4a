"""BufferPool: blocks come back when nothing uses them, and only a bounded number stay idle."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from distmis.shards.buffers import BLOCK_GRANULE, MIN_POOLED_BYTES, BufferPool
from distmis.shards.records import decode_example, encode_example
from distmis.shards.tfrecord import TFRecordWriter, read_payloads

MIB = 1 << 20


def test_a_dropped_view_gives_its_block_to_the_next_request():
    pool = BufferPool()
    first = pool.take(3 * MIB + 5)
    assert first.nbytes == 3 * MIB + 5 and first.dtype == np.uint8
    address = first.__array_interface__["data"][0]
    del first
    second = pool.take(3 * MIB + 100)  # same 4 MiB size class
    assert second.__array_interface__["data"][0] == address
    assert pool.allocated == 1


def test_views_of_a_view_keep_the_block_in_use():
    pool = BufferPool()
    payload = pool.take(2 * MIB)
    image = np.frombuffer(memoryview(payload)[MIB:], dtype=np.float32)  # as decode does
    del payload
    gc.collect()
    other = pool.take(2 * MIB)
    assert pool.allocated == 2, "the block was handed out while the image still used it"
    del image, other


def test_arrays_derived_from_a_taken_array_keep_the_block_in_use():
    """As torch's stack_records uses it: ``take(n).view(dtype).reshape(shape)``, the taken
    array itself dropped at once."""
    pool = BufferPool()
    batch = pool.take(2 * MIB).view(np.float32).reshape(2, -1)
    batch[:] = 1.0
    gc.collect()
    other = pool.take(2 * MIB)
    other[:] = 0
    assert pool.allocated == 2, "the block was handed out while the batch still used it"
    assert float(batch.min()) == 1.0
    del batch, other


def test_idle_blocks_are_bounded_whatever_passes_through():
    pool = BufferPool(max_free=2)
    live = [pool.take(MIB) for _ in range(5)]
    del live
    assert pool.allocated == 5 and pool.idle_bytes == 2 * BLOCK_GRANULE
    for _ in range(50):  # a stream of records, at most max_free alive at a time
        window = [pool.take(MIB) for _ in range(2)]
        del window
    assert pool.allocated == 5 and pool.idle_bytes == 2 * BLOCK_GRANULE


def test_small_requests_are_plain_arrays():
    pool = BufferPool()
    small = pool.take(MIN_POOLED_BYTES - 1)
    assert small.nbytes == MIN_POOLED_BYTES - 1 and pool.allocated == 0
    with pytest.raises(ValueError, match="max_free"):
        BufferPool(max_free=-1)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_pooled_reads_give_the_same_records(tmp_path, compression):
    rng = np.random.default_rng(0)
    cases = [
        (
            f"case{i}",
            rng.standard_normal((40, 40, 40, 4)).astype("<f4"),
            rng.integers(0, 2, (40, 40, 40, 1), dtype=np.uint8),
        )
        for i in range(4)
    ]
    path = tmp_path / "shard.tfrecord"
    with TFRecordWriter(path, compression) as writer:
        for case_id, image, label in cases:
            writer.write([encode_example(case_id, image, label)])
    pool = BufferPool()
    payloads = read_payloads(path, compression, pool)
    for case_id, image, label in cases:
        # next(), not zip(): zip keeps its previous tuple (and payload) to reuse it.
        payload = next(payloads)
        record = decode_example(payload, "float32", 1)
        assert record.case_id == case_id
        np.testing.assert_array_equal(record.image, image)
        np.testing.assert_array_equal(record.label, label)
        del record, payload
    assert next(payloads, None) is None
    assert pool.allocated == 1  # each record's block reused by the next
