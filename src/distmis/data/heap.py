"""Keep a reader's heap from growing with the records it has seen (glibc).

glibc serves allocations above its mmap threshold with their own ``mmap`` and returns them to
the OS on ``free``, but it raises that threshold (up to 32 MiB) each time such a block is
freed. Records of a few MB to 32 MB — a shuffle buffer's payloads and batches — then come from
the main heap, where their staggered lifetimes fragment it: measured, a torch streaming epoch
over 36 records of 10 MB grew the peak RSS by 100 MB over 6 records, and not at all with a
fixed threshold. Records of the paper's size (79-166 MB) are above 32 MiB and unaffected.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools

M_MMAP_THRESHOLD = -3
# Blocks of 1 MiB and more get their own mapping: a record's arrays, never small objects.
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Pin glibc's mmap threshold for this process (and the workers it forks); True if set.

    A no-op returning False where the C library is not glibc.
    """
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, threshold))
    return False
