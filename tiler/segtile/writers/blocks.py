"""The arrays handed to writers: their checks, and streaming their chunks into a file.

The whole graph is computed once (tiles shared by neighbouring chunks run once) and each chunk
is handed to the writer as soon as it is ready, then forgotten: memory stays bounded by the
chunks in flight. With a local scheduler this is ``dask.array.store`` into a target that calls
the writer under a lock, one chunk at a time: a file is not written from several threads at
once, and GDAL's polygonize and rasterio's warning filters are not worth running in parallel
(the first holds the GIL, the second are not thread-safe). On a ``dask.distributed`` cluster
the target cannot travel to the workers, so the chunks are computed there as futures and
fetched into this process as each completes.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from itertools import islice
from typing import Any, Callable, Coroutine, Iterator

import dask.array as da
import numpy as np
from dask.array.core import slices_from_chunks
from distributed import Client, as_completed

from segtile.engine.cluster import active_client, current_client, joined_threads, task_threads
from segtile.errors import WriterInputError
from segtile.models.card import ModelCard
from segtile.tiling.budget import WRITE_QUEUE

Key = tuple[slice, ...]
Advance = Callable[[int], None]
"""Called with 1 after each chunk is written, under the write lock (a tqdm bar's ``update``)."""


class _ChunkTarget:
    """The ``da.store`` target: hands each chunk to ``write``, under a lock."""

    def __init__(self, write: Callable[[Key, np.ndarray], None], progress: Advance | None) -> None:
        self._write = write
        self._progress = progress
        self._lock = threading.Lock()

    def __setitem__(self, key: Key, chunk: np.ndarray) -> None:
        with self._lock:
            self._write(key, chunk)
            if self._progress is not None:
                self._progress(1)


def store_chunks(array: da.Array, write: Callable[[Key, np.ndarray], None], *,
                 progress: Advance | None = None) -> None:
    """Compute ``array`` chunk by chunk; call ``write(key, chunk)`` for each, never two at once.

    ``key`` is the chunk's place in ``array``: one ``slice`` per axis, in global coordinates.
    """
    target = _ChunkTarget(write, progress)
    client = active_client(array)
    if client is not None:
        for key, chunk in _chunks_from_cluster(client, array):
            target[key] = chunk
    else:
        with joined_threads():
            da.store(array, target, lock=False, compute=True)


def _chunks_from_cluster(client: Client, array: da.Array) -> Iterator[tuple[Key, np.ndarray]]:
    """Compute the chunks on the cluster, a few at a time (twice the workers' threads), and yield
    each as it completes, then drop it: chunks never pile up on the workers or here when writing
    is slower than computing. Chunks are meant to be independent (read from a work store): one
    that shares work with a later one would compute it twice."""
    chunks = array.to_delayed(optimize_graph=True).ravel().tolist()
    pending = iter(zip(chunks, slices_from_chunks(array.chunks)))
    window = 2 * max(1, sum(client.nthreads().values()))
    keys: dict = {}
    running = as_completed(with_results=True)

    def submit(count: int) -> None:
        for chunk, key in islice(pending, count):
            future = client.compute(chunk, optimize_graph=False)
            keys[future.key] = key
            running.add(future)

    submit(window)
    for future, chunk in running:
        yield keys.pop(future.key), chunk
        future.release()
        submit(1)


def as_labels(labels: Any, card: ModelCard, nodata: int) -> da.Array:
    """``labels`` as a 2-D dask array of uint8 / uint16, checked against ``card`` and ``nodata``."""
    labels = labels if isinstance(labels, da.Array) else da.asarray(labels)
    if labels.ndim != 2:
        raise WriterInputError(f"labels must be 2-D (height, width), got shape {labels.shape}")
    if labels.dtype not in (np.uint8, np.uint16):
        raise WriterInputError(f"labels must be uint8 or uint16, got {labels.dtype}")
    if not 0 <= nodata <= np.iinfo(labels.dtype).max:
        raise WriterInputError(f"nodata {nodata} does not fit labels of type {labels.dtype}")
    if card.num_classes > nodata:
        raise WriterInputError(f"{card.num_classes} classes do not all fit below nodata {nodata}")
    return labels


def as_probabilities(probabilities: Any, card: ModelCard, shape: tuple[int, int] | None = None) -> da.Array:
    """``probabilities`` as a 3-D float dask array ``(classes, H, W)`` checked against ``card``
    (and against the labels' ``shape`` when given)."""
    probabilities = probabilities if isinstance(probabilities, da.Array) else da.asarray(probabilities)
    if probabilities.ndim != 3:
        raise WriterInputError(
            f"probabilities must be 3-D (classes, height, width), got shape {probabilities.shape}"
        )
    if not np.issubdtype(probabilities.dtype, np.floating):
        raise WriterInputError(f"probabilities must be floating point, got {probabilities.dtype}")
    if probabilities.shape[0] != card.num_classes:
        raise WriterInputError(
            f"probabilities have {probabilities.shape[0]} classes, the model card {card.num_classes}"
        )
    if shape is not None and probabilities.shape[1:] != tuple(shape):
        raise WriterInputError(
            f"probabilities are {probabilities.shape[1:]} pixels, the labels {tuple(shape)}"
        )
    return probabilities


class ZarrWrites:
    """Zarr chunk writes started without waiting for them: each goes to Zarr's asynchronous API on
    an event loop of this object's own, and the Dask thread that handed the chunk over goes on to
    its next task while Zarr encodes and stores it. Waiting on each write (Zarr's synchronous
    API: a round trip through its one event-loop thread) kept a second core from adding up
    (docs/performance.md).

    On their way at once: up to ``limit`` bytes of chunks, or ``writers`` chunks whatever their
    size (one per Dask thread: as many as the threads wrote at once when each waited for its
    own); a thread handing over more waits for room. A write that fails fails the next hand-over,
    :meth:`finish` and the end of the ``with`` block. Leaving the block waits for the writes
    (after an exception they are cancelled, and only the file writes already under way finish)
    and closes the loop."""

    def __init__(self, writers: int = 1, limit: int = WRITE_QUEUE) -> None:
        """Nothing runs yet: the loop and its thread start as the ``with`` block is entered."""
        self._writers = writers
        self._limit = limit
        self._running: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None
        self._room = threading.Condition()  # notified whenever a write ends
        self._bytes_on_their_way = 0
        self._writes: set[Future] = set()
        self._error: BaseException | None = None

    def submit(self, write: Callable[[], Coroutine[Any, Any, Any]], nbytes: int) -> None:
        """Start ``write()``, a coroutine of Zarr's asynchronous API (``array.async_array.setitem``,
        say) holding ``nbytes`` until it is done; return without waiting for it."""
        loop, _ = self._entered()
        with self._room:
            self._room.wait_for(lambda: self._error is not None or len(self._writes) < self._writers
                                or self._bytes_on_their_way + nbytes <= self._limit)
            self._raise_error()
            started = asyncio.run_coroutine_threadsafe(write(), loop)
            self._bytes_on_their_way += nbytes
            self._writes.add(started)
        started.add_done_callback(functools.partial(self._written, nbytes))

    def _written(self, nbytes: int, write: Future) -> None:
        with self._room:
            self._writes.discard(write)
            self._bytes_on_their_way -= nbytes
            if not write.cancelled() and write.exception() is not None and self._error is None:
                self._error = write.exception()
            self._room.notify_all()

    def _entered(self) -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
        """The loop the writes run on and its thread, once the ``with`` block is entered."""
        if self._running is None:
            raise RuntimeError("ZarrWrites takes writes inside its with block only")
        return self._running

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """Wait until every chunk handed over is written; raise the first write's error."""
        with self._room:
            self._room.wait_for(lambda: not self._writes)
            self._raise_error()

    def __enter__(self) -> ZarrWrites:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="segtile-zarr-writes", daemon=True)
        thread.start()
        self._running = loop, thread
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        loop, thread = self._entered()
        with self._room:
            writes = list(self._writes)
        if exc_type is not None:
            for write in writes:
                write.cancel()
        try:
            asyncio.run_coroutine_threadsafe(_drained(), loop).result()
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._running = None
        if exc_type is None:
            self._raise_error()


async def _drained() -> None:
    """Wait, on the running loop, for its other tasks (cancelled ones too) and for the threads
    they started (``asyncio.to_thread``: Zarr's file writes), so that nothing writes afterwards."""
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    await asyncio.gather(*others, return_exceptions=True)
    await asyncio.get_running_loop().shutdown_default_executor()


class SparseChunks:
    """A Zarr array as a ``dask.array.store`` target that leaves out the chunks holding nothing
    but its fill value, as Zarr leaves them out itself: a chunk never written reads as the fill
    value. Zarr makes that check on its one event-loop thread, chunk after chunk, where it took
    two thirds of the time of writing labels and kept a second core from adding up
    (docs/performance.md); here each Dask thread checks its own chunks and hands the others to
    ``writes`` (``None``: writes them itself, as on a ``dask.distributed`` worker, where the target
    travels). ``array`` must be new (a chunk left out shows whatever the store held) and created
    with ``config={"write_empty_chunks": True}`` (:data:`WRITE_EVERY_CHUNK`), so that Zarr does not
    check again."""

    def __init__(self, array: Any, writes: ZarrWrites | None = None) -> None:
        self.array = array
        self.writes = writes
        self.fill = array.fill_value
        self.fill_is_nan = isinstance(self.fill, (float, np.floating)) and bool(np.isnan(self.fill))

    def __setitem__(self, key: Key, block: np.ndarray) -> None:
        only_fill = np.isnan(block).all() if self.fill_is_nan else (block == self.fill).all()
        if only_fill:
            return
        if self.writes is None:
            self.array[key] = block
        else:
            self.writes.submit(functools.partial(self.array.async_array.setitem, key, block), block.nbytes)


WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
"""The Zarr array configuration of :class:`SparseChunks`' arrays: Zarr skips none itself."""


def store_in_zarr(sources: list[da.Array], targets: list[Any]) -> None:
    """Compute ``sources`` in one pass (work they share computed once) into the new Zarr arrays
    ``targets`` (created with :data:`WRITE_EVERY_CHUNK`), chunk by chunk, leaving out the chunks
    of nothing but the fill value (:class:`SparseChunks`); every chunk is written when this
    returns. On the local scheduler the Dask threads do not wait for the writes
    (:class:`ZarrWrites`); on a ``dask.distributed`` cluster each worker writes its chunks."""
    with zarr_writes() as writes, joined_threads():
        da.store(sources, [SparseChunks(target, writes) for target in targets], lock=False, compute=True)


@contextmanager
def zarr_writes() -> Iterator[ZarrWrites | None]:
    """The writes of this process's Dask threads, one writer per thread (:class:`ZarrWrites`: every
    chunk is written, or its error raised, when the block ends); ``None`` on a ``dask.distributed``
    cluster, whose workers write their own chunks (the writes cannot travel to them)."""
    if current_client() is not None:
        yield None
        return
    with ZarrWrites(task_threads()) as writes:
        yield writes
