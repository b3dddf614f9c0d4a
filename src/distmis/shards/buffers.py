"""Reusable memory blocks for the big, short-lived arrays of an input pipeline.

A paper-size record is 79-166 MB and a batch twice that. Allocated fresh each time, every one
costs the kernel a page fault per 4 KiB and zeroing before a byte is read into it: measured
on the development VM, reading a 149 MB record into fresh memory took 0.11 s and into reused
memory 0.04 s, filling a fresh 298 MB batch 0.12 s and a reused one 0.06 s. Letting glibc keep
freed blocks in its heap recovers the speed but not a bound: its heap then fragments and RSS
grows with the records seen (:mod:`distmis.shards.heap`). A :class:`BufferPool` hands out views
of blocks it owns and takes a block back, by a ``weakref.finalize`` on the view, as soon as
nothing uses the view any more (CPython's reference counting makes that immediate: a decoded
record's arrays keep their payload's view alive, a batch tensor keeps its array alive). So a
pipeline reuses as many blocks as it keeps alive at once, plus at most ``max_free`` idle ones
per size, however many records pass through.
"""

from __future__ import annotations

import os
import threading
import weakref

import numpy as np

# Blocks are sized in whole MiB, so records that differ by a few bytes (case ids) share them.
BLOCK_GRANULE = 1 << 20
# Smaller requests are not worth pooling: the allocator serves them from its heap cheaply.
MIN_POOLED_BYTES = 1 << 20


class BufferPool:
    """Hands out writable uint8 arrays of ``nbytes``, recycling their memory (module docstring).

    Thread-safe; one per process (:func:`process_pool`), never shared across a fork.
    """

    def __init__(self, max_free: int = 2) -> None:
        if max_free < 0:
            raise ValueError(f"max_free must be >= 0, got {max_free}")
        self.max_free = max_free
        self._free: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()
        self.allocated = 0  # blocks made so far, for tests and benchmarks

    def take(self, nbytes: int) -> np.ndarray:
        """A 1-D uint8 array of ``nbytes`` (contents undefined), from an idle block if any."""
        if nbytes < MIN_POOLED_BYTES:
            return np.empty(nbytes, dtype=np.uint8)
        size = -(-nbytes // BLOCK_GRANULE) * BLOCK_GRANULE
        with self._lock:
            idle = self._free.get(size)
            block = idle.pop() if idle else None
        if block is None:
            block = np.empty(size, dtype=np.uint8)
            self.allocated += 1
        # Through a memoryview, so that numpy makes this array, not the block, the base of
        # every array derived from it (``.view(dtype)``, ``reshape``, slices): a plain
        # ``block[:nbytes]`` lets them point past it at the block, the finalizer then runs as
        # soon as the caller drops ``view`` and the block is handed out again while they
        # still use it (torch's stack_records: every in-process batch shared one block).
        view = np.frombuffer(memoryview(block)[:nbytes], dtype=np.uint8)
        weakref.finalize(view, self._give_back, block)
        return view

    def _give_back(self, block: np.ndarray) -> None:
        with self._lock:
            idle = self._free.setdefault(block.nbytes, [])
            if len(idle) < self.max_free:
                idle.append(block)

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for blocks in self._free.values() for b in blocks)


_pools: dict[int, BufferPool] = {}


def process_pool() -> BufferPool:
    """This process's pool (a forked DataLoader worker gets its own, not its parent's copy)."""
    pid = os.getpid()
    if pid not in _pools:
        _pools.clear()  # a parent's pool, copied by fork: its blocks belong to the parent
        _pools[pid] = BufferPool()
    return _pools[pid]
