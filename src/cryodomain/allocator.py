"""Keep freed host memory for reuse (glibc), so that a training step does not page-fault.

A step allocates and frees the same few megabyte-sized tensors every time. glibc serves blocks
above its mmap threshold with fresh ``mmap`` pages and returns freed memory at the top of the heap
to the system, so every step pays a page fault per 4 KiB of every such tensor: on the 2-core test
machine that was a third of the step (benchmarks/RESULTS.md). Raising the mmap and trim thresholds
with ``mallopt`` keeps those blocks in the heap for the next step. The same effect as running with
jemalloc or tcmalloc, without asking users to preload one.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses mmap thresholds above half its maximum heap size (32 or 64 MiB on 64-bit builds);
# the largest accepted value is used. Tensors above it still get their own mapping.
_MMAP_THRESHOLDS = (256 << 20, 128 << 20, 64 << 20, 32 << 20)
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> int:
    """Raise glibc's mmap and trim thresholds for this process (no-op elsewhere).

    Returns:
        The mmap threshold set, in bytes; 0 when the C library is not glibc or refused.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return 0
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return 0
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    for threshold in _MMAP_THRESHOLDS:
        if mallopt(_M_MMAP_THRESHOLD, threshold) == 1:
            mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
            log.debug("allocator: mmap threshold %d MiB, trim threshold %d MiB", threshold >> 20, _TRIM_THRESHOLD >> 20)
            return threshold
    return 0
