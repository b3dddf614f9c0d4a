"""glibc heap policies for the two kinds of process that handle whole volumes.

glibc serves allocations above its *mmap threshold* with their own ``mmap`` and unmaps them on
``free``; each time such a block is freed it raises the threshold (up to 32 MiB), so later
blocks of that size come from the main heap instead. Each policy here is a no-op where the C
library is not glibc.

- :func:`reuse_freed_blocks`, for conversion processes: every case allocates several
  ~140 MB arrays (BraTS size), and fresh mappings cost ~1.5 GiB of page faults and zeroing per
  case, measured as over half the conversion time. With mmap off for large blocks and no heap
  trimming, each case reuses the previous case's memory (the heap keeps its peak size).
- :func:`fix_mmap_threshold`, for training-side readers that keep a few records alive at
  staggered times (a shuffle buffer, prefetched batches): records of a few MB to 32 MB then
  fragment the heap and RSS grows with the records seen. Measured, a torch streaming epoch over
  36 records of 10 MB peaked 100 MB higher than one over 6; with the threshold pinned at 1 MiB,
  not at all. Records of the paper's size (79-166 MB) are above 32 MiB either way.
"""

from __future__ import annotations

import ctypes
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # from glibc's malloc.h
# Blocks of 1 MiB and more get their own mapping: a record's arrays, never small objects.
MMAP_THRESHOLD_BYTES = 1 << 20


def _mallopt(option: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(option, value))
    except (OSError, AttributeError):
        return False


def reuse_freed_blocks() -> None:
    """Keep freed large buffers in this process's heap instead of returning them to the OS.

    Only for dedicated conversion processes (see the module docstring).
    """
    _mallopt(M_MMAP_MAX, 0)
    _mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


@functools.cache
def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin the mmap threshold for this process (and the workers it forks); True if set."""
    return _mallopt(M_MMAP_THRESHOLD, threshold)
