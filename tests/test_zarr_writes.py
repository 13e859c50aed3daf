"""Zarr chunk writes started without waiting for them (segtile.writers.blocks.ZarrWrites): a Dask
thread hands a chunk over and goes on; the chunks on their way are bounded; errors are not lost."""

import functools
import threading

import numpy as np
import pytest
import zarr

from segtile.writers.blocks import WRITE_EVERY_CHUNK, ZarrWrites

CHUNK = (16, 16)


@pytest.fixture
def array(tmp_path):
    return zarr.create_array(str(tmp_path / "labels.zarr"), shape=(32, 32), chunks=CHUNK, dtype="uint8",
                             fill_value=255, config=WRITE_EVERY_CHUNK)


def _held(writes: ZarrWrites) -> threading.Event:
    """Hold the writes' event loop (no write can progress) until the returned event is set."""
    release = threading.Event()
    loop, _ = writes._running
    loop.call_soon_threadsafe(release.wait, 30)
    return release


def _write(writes: ZarrWrites, array, key, block) -> None:
    writes.submit(functools.partial(array.async_array.setitem, key, block), block.nbytes)


def _in_thread(function, *args) -> threading.Thread:
    thread = threading.Thread(target=function, args=args, daemon=True)
    thread.start()
    return thread


def test_a_chunk_handed_over_is_written_while_the_thread_goes_on(array):
    block = np.full(CHUNK, 7, dtype=np.uint8)
    with ZarrWrites() as writes:
        release = _held(writes)
        handing_over = _in_thread(_write, writes, array, (slice(0, 16), slice(0, 16)), block)
        handing_over.join(10)
        assert not handing_over.is_alive()  # returned while the write could not even start
        assert (array[:16, :16] == 255).all()  # not written yet: the fill value
        release.set()
        writes.finish()
        assert (array[:16, :16] == 7).all()
        assert (array[16:, :] == 255).all()


def test_the_chunks_on_their_way_are_bounded(array):
    block = np.full(CHUNK, 3, dtype=np.uint8)
    with ZarrWrites(writers=2, limit=block.nbytes) as writes:
        release = _held(writes)
        _write(writes, array, (slice(0, 16), slice(0, 16)), block)  # within the bytes
        _write(writes, array, (slice(16, 32), slice(0, 16)), block)  # over them, but one per writer goes
        third = _in_thread(_write, writes, array, (slice(0, 16), slice(16, 32)), block)
        third.join(0.5)
        assert third.is_alive()  # waits for room
        release.set()
        third.join(10)
        assert not third.is_alive()
        writes.finish()
    assert (array[:, :16] == 3).all() and (array[:16, 16:] == 3).all()


def test_a_failed_write_fails_finish_the_next_hand_over_and_the_end_of_the_block(array):
    read_only = zarr.open_array(array.store_path.store.root, mode="r")
    block = np.zeros(CHUNK, dtype=np.uint8)
    with pytest.raises(ValueError, match="read-only"):  # the block's end too
        with ZarrWrites() as writes:
            _write(writes, read_only, (slice(0, 16), slice(0, 16)), block)
            with pytest.raises(ValueError, match="read-only"):
                writes.finish()
            with pytest.raises(ValueError, match="read-only"):
                _write(writes, read_only, (slice(16, 32), slice(0, 16)), block)


def test_a_failed_write_is_not_lost_without_finish(array):
    read_only = zarr.open_array(array.store_path.store.root, mode="r")
    with pytest.raises(ValueError, match="read-only"):
        with ZarrWrites() as writes:
            _write(writes, read_only, (slice(0, 16), slice(0, 16)), np.zeros(CHUNK, dtype=np.uint8))


def test_a_write_that_cannot_start_leaves_no_bytes_counted(array):
    def not_a_coroutine():
        raise TypeError("not a write")

    block = np.zeros(CHUNK, dtype=np.uint8)
    with ZarrWrites(writers=1, limit=block.nbytes) as writes:
        with pytest.raises(TypeError):
            writes.submit(not_a_coroutine, block.nbytes)
        handing_over = _in_thread(_write, writes, array, (slice(0, 16), slice(0, 16)), block)
        handing_over.join(10)
        assert not handing_over.is_alive()  # room was left for it
        writes.finish()
    assert (array[:16, :16] == 0).all()


def test_leaving_on_an_exception_waits_for_the_writes_and_closes_their_loop(array):
    block = np.ones(CHUNK, dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        with ZarrWrites() as writes:
            release = _held(writes)
            _write(writes, array, (slice(0, 16), slice(0, 16)), block)
            threading.Timer(0.2, release.set).start()
            raise KeyboardInterrupt
    assert writes._running is None  # the loop closed
    assert "segtile-zarr-writes" not in [thread.name for thread in threading.enumerate()]
