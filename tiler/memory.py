"""Handing freed heap memory back to the operating system.

Batch results are many large, short-lived arrays allocated and freed from several threads;
glibc keeps the freed pages in per-thread arenas, so the process's resident memory creeps up
with the image size although the live data does not. ``malloc_trim`` returns those pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def _load_malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_free_memory() -> None:
    """Return free heap pages to the OS where the C library allows it (glibc); else do nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
