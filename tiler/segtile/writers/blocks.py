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

import threading
from itertools import islice
from typing import Any, Callable, Iterator

import dask.array as da
import numpy as np
from dask.array.core import slices_from_chunks
from distributed import Client, as_completed

from segtile.engine.cluster import active_client, joined_threads
from segtile.errors import WriterInputError
from segtile.models.card import ModelCard

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


class SparseChunks:
    """A Zarr array as a ``dask.array.store`` target that leaves out the chunks holding nothing
    but its fill value, as Zarr leaves them out itself: a chunk never written reads as the fill
    value. Zarr makes that check on its one event-loop thread, chunk after chunk, where it took
    two thirds of the time of writing labels and kept a second core from adding up
    (docs/performance.md); here each Dask thread checks its own chunks. ``array`` must be new (a
    chunk left out shows whatever the store held) and created with ``config={"write_empty_chunks":
    True}`` (:data:`WRITE_EVERY_CHUNK`), so that Zarr does not check again."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.fill = array.fill_value
        self.fill_is_nan = isinstance(self.fill, (float, np.floating)) and bool(np.isnan(self.fill))

    def __setitem__(self, key: Key, block: np.ndarray) -> None:
        only_fill = np.isnan(block).all() if self.fill_is_nan else (block == self.fill).all()
        if not only_fill:
            self.array[key] = block


WRITE_EVERY_CHUNK = {"write_empty_chunks": True}
"""The Zarr array configuration of :class:`SparseChunks`' arrays: Zarr skips none itself."""


def store_in_zarr(sources: list[da.Array], targets: list[Any]) -> None:
    """Compute ``sources`` in one pass (work they share computed once) into the new Zarr arrays
    ``targets`` (created with :data:`WRITE_EVERY_CHUNK`), chunk by chunk, leaving out the chunks
    of nothing but the fill value (:class:`SparseChunks`)."""
    with joined_threads():
        da.store(sources, [SparseChunks(target) for target in targets], lock=False, compute=True)
