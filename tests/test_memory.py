"""The heap trim: only once the resident memory has grown, and then it gives the free pages back."""

import numpy as np
import pytest

from segtile.engine import heap as memory

pytestmark = pytest.mark.skipif(memory._GLIBC is None, reason="the heap trim is glibc's")

SMALL_ARRAY_BYTES = 64 * 2**10  # below glibc's least mmap threshold: from the heap


def test_the_heap_is_trimmed_once_it_has_grown_and_not_before():
    memory.release_free_memory()  # whatever earlier tests left: the low-water mark is now
    assert not memory.release_free_memory()  # no growth since: nothing to trim

    count = 2 * memory.TRIM_AFTER_GROWTH_BYTES // SMALL_ARRAY_BYTES
    arrays = [np.ones(SMALL_ARRAY_BYTES, dtype=np.uint8) for _ in range(count)]
    del arrays[:-1]  # the last one pins the heap's top: the free pages below stay resident
    grown = memory.resident_bytes()

    assert memory.release_free_memory()
    assert memory.resident_bytes() < grown - memory.TRIM_AFTER_GROWTH_BYTES
    assert not memory.release_free_memory()
