"""Large buffers go back to the system when freed, so the decoding budget bounds RSS and not only use.

glibc serves allocations under its mmap threshold from per-thread heaps, and that threshold rises to
32 MB as large blocks are freed. Pillow allocates images in 16 MB blocks, so a 40-Mpx decode on each
of several threads left each thread's heap holding hundreds of MB after the decode ended: RSS grew
to 1.7 GB with four images decoded one after another, under a 768 MiB budget. A fixed 4 MiB
threshold (what MALLOC_MMAP_THRESHOLD_=4194304 does) maps every larger buffer on its own and
unmaps it on free; measured, the same four images peak at 0.6 GB over idle and return to idle after.
At 1 MiB the batches of preprocessed images (2.4 MB for four) were mapped and faulted in afresh for
every interpreter call, and throughput at 16 clients fell by 7% (bench/serving.py --baseline).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterator
from contextlib import contextmanager

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 * 2**20
HEAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's own ceiling for its dynamic threshold (64-bit)


def map_large_buffers(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fixes glibc's mmap threshold (4 MiB by default); False where the C library is not glibc (nothing
    changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


@contextmanager
def large_buffers_mapped() -> Iterator[None]:
    """For a block that decodes images (retrain's extraction): buffers over 4 MiB mapped on their own,
    then back to a 32 MiB threshold, so that the training that follows reuses heap memory for its
    ten-megabyte arrays instead of mapping and faulting them in afresh (0.3-0.4 s of a 2 s rerun)."""
    map_large_buffers(MMAP_THRESHOLD_BYTES)
    try:
        yield
    finally:
        map_large_buffers(HEAP_THRESHOLD_BYTES)
