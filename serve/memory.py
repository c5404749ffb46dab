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

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 4 * 2**20


def map_large_buffers() -> bool:
    """Fixes glibc's mmap threshold at 4 MiB; False where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):
        return False
