"""glibc malloc settings for processes that stream large bodies (the serving process, each uvicorn
worker, the upload validation helper)."""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 2 * 1024 * 1024
ARENA_MAX = 1


def tune_allocator(trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Fixed glibc malloc thresholds for a process that streams large bodies; whether they were set.

    - mmap threshold 1 MiB: glibc raises it each time a large block is freed, after which 8 MiB upload
      parts come from the heap and their memory stays resident; fixed, every large buffer is mmap'd
      and handed back to the OS as soon as it is freed.
    - trim threshold 2 MiB: setting the mmap threshold also freezes the trim threshold at its 128 KiB
      default, so every freed 256 KiB body chunk at the top of the heap was returned to the kernel and
      faulted back in by the next one (~43k page faults and ~0.06 s of kernel time per 200 MiB upload).
      Up to 2 MiB of free heap now stays resident instead (2 MiB: measured enough for a validated
      upload, < 100 faults where 1 MiB left 110k).
    - one arena: with a retained 2 MiB per arena, the threads' arenas (up to 8 per core) kept ~1.5 MiB
      more resident in the S3 upload test (tests/providers/test_object_store_memory.py); in one arena
      the peak is as before (98.9 vs 98.6 MiB) and idle RSS ~1 MiB lower. Python threads allocate
      under the GIL, so the shared arena's lock is rarely contended.

    Called where the serving process (and each uvicorn worker) builds its app, before any request,
    and by the upload validation helper (``tunegate.data.worker``) before it reads.
    Not glibc (musl, macOS: no ``libc.so.6``, or no ``mallopt``): nothing to tune."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
                and mallopt(M_ARENA_MAX, ARENA_MAX) == 1)
