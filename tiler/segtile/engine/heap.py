"""Keeping the process's resident memory close to its live data (glibc only; elsewhere a no-op).

Batch results, input batches and stitched chunks are large arrays (several MB), allocated and
freed from several threads in an order unlike their allocation. glibc's default raises its mmap
threshold each time such an array is freed, after which arrays of that size come from the
per-thread heaps, whose holes are not returned to the system: the resident memory creeps above
the live data as the image streams through. Two remedies, both used:

* :func:`keep_large_arrays_off_the_heap` fixes the mmap threshold at 32 MiB (glibc's largest), so
  every array of that size or more is its own mapping, returned to the system the moment it is
  freed (the same cure as the ``MALLOC_TRIM_THRESHOLD_`` that ``dask.distributed`` sets for its
  workers, applied only to large arrays: a many-class batch's logits, hundreds of MB). Smaller
  ones, a few-class batch's logits (8 MiB for 2 classes and 4 tiles of 512 px) above all, come
  from the heaps and reuse the memory the batch before freed: as mappings of their own (a
  threshold of 4 MiB, before) each cost 2048 page faults and an ``munmap`` that Dask's scheduler
  thread ran holding the GIL: 2.2 times the page faults and 1.2 times the time of a 2-thread
  run, for about 45 MiB less at the peak (docs/performance.md, section 15). The heaps keep up
  to twice that threshold free at their top (glibc's own rule once it adjusts the threshold
  itself) rather than giving back every 128 KiB to fault it in again.
* :func:`release_free_memory` (``malloc_trim``) hands back the free pages of the heaps, once the
  resident memory has grown by 64 MiB above the least it was since it last did: trimming after
  every chunk returned pages that the next chunk faulted back in, twice the page faults for no
  lower peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from typing import Any, Mapping

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameter numbers, from glibc's malloc.h
LARGE_ARRAY_BYTES = 32 * 2**20
HEAP_TOP_KEPT_BYTES = 2 * LARGE_ARRAY_BYTES
TRIM_AFTER_GROWTH_BYTES = 64 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _load_glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (e.g. musl): nothing to tune
        return None


_GLIBC = _load_glibc()
_THRESHOLD_SET = threading.Event()


def keep_large_arrays_off_the_heap() -> None:
    """Fix glibc's mmap threshold at 32 MiB and its trim threshold at 64 MiB, once per process,
    unless the user tuned malloc through its ``MALLOC_*_`` environment variables (theirs then stands)."""
    if _GLIBC is None or _THRESHOLD_SET.is_set():
        return
    _THRESHOLD_SET.set()
    if not any(name in os.environ for name in _USER_SETTINGS):
        _GLIBC.mallopt(M_MMAP_THRESHOLD, LARGE_ARRAY_BYTES)
        _GLIBC.mallopt(M_TRIM_THRESHOLD, HEAP_TOP_KEPT_BYTES)


def without_malloc_settings(environ: Mapping[str, Any]) -> dict[str, Any]:
    """``environ`` less glibc's malloc variables, which would make
    :func:`keep_large_arrays_off_the_heap` leave the heap as they set it: for the workers of
    segtile's own clusters, whose nannies set ``MALLOC_TRIM_THRESHOLD_`` (Dask's
    ``distributed.nanny.pre-spawn-environ``), which in glibc also fixes the mmap threshold at
    128 KiB, so every batch's arrays were mappings of their own (docs/performance.md, section 15)."""
    return {name: value for name, value in environ.items() if name not in _USER_SETTINGS}


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_low_water = float("inf")  # the least resident memory seen since the last trim


def resident_bytes() -> int:
    """The process's resident memory now (Linux: the second field of ``/proc/self/statm``)."""
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE_BYTES


def release_free_memory() -> bool:
    """Return free heap pages to the OS where the C library allows it (glibc), if the resident
    memory has grown by :data:`TRIM_AFTER_GROWTH_BYTES` above the least it was since the last
    trim; say whether it did. Trimming after each chunk whatever the growth made the next chunks
    fault the same pages back in: twice the page faults, a tenth more CPU time with a trivial
    model (docs/performance.md)."""
    global _low_water
    if _GLIBC is None:
        return False
    resident = resident_bytes()
    _low_water = min(_low_water, resident)
    if resident < _low_water + TRIM_AFTER_GROWTH_BYTES:
        return False
    _GLIBC.malloc_trim(0)
    _low_water = resident_bytes()
    return True
