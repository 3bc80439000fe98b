"""Process-wide CPU settings that the command line applies once at start: glibc's allocator thresholds.

glibc serves blocks above M_MMAP_THRESHOLD (128 KiB, adapting up to 32 MiB) with mmap and hands
them back to the OS on free, and trims the heap top above M_TRIM_THRESHOLD. A training step
allocates and frees tensors of tens to hundreds of MB, so each one is page-faulted and zeroed by
the kernel again: on the 2-core dev VM that doubled a training step (half the wall time in system
time). Raising both thresholds keeps the memory in the process for reuse, at the cost of the
resident size staying at its peak. Same effect as exporting MALLOC_MMAP_THRESHOLD_ and
MALLOC_TRIM_THRESHOLD_ (the Makefile does), or preloading jemalloc/tcmalloc.
Set HYBRIDLM_ALLOCATOR=default to leave glibc's behaviour alone (for A/B measurements).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
THRESHOLD = 2**31 - 1  # mallopt takes a C int: 2 GiB, above any tensor a CPU run allocates in one piece


@functools.cache
def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds, once per process. True when applied; a no-op on
    non-glibc systems, when HYBRIDLM_ALLOCATOR=default, or when the MALLOC_*_ variables are set."""
    if os.environ.get("HYBRIDLM_ALLOCATOR", "").lower() == "default":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user (or the Makefile) already chose
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        applied = libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
    except (OSError, AttributeError):  # musl has no mallopt worth calling; not glibc
        return False
    if applied:
        logger.info("glibc malloc: mmap and trim thresholds raised to %d bytes", THRESHOLD)
    return applied
