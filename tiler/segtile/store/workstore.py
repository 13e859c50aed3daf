"""The work store: a run's finished chunks, kept in a Zarr store beside its outputs.

Outputs are written from the store, not from the network: the labels (and the probabilities,
when an output writes them) are computed once, chunk by chunk, into it, and each output is then
written from it. So several outputs cost one inference pass, and a run that dies (Ctrl-C, a
crash, SIGKILL, a power cut) keeps what it finished: ``segtile --resume`` computes only the
chunks that are missing, then writes the outputs exactly as an uninterrupted run would.

A chunk counts as done only once its marker file exists (``done/ROW-COLUMN``), created after its
arrays are written, and only while its files still hold what was written: the marker records
their SHA-256, checked before a resumed run trusts them, so a chunk cut off half way, lost,
damaged or replaced by another is computed again. The command's store is durable: each chunk's
files, then its marker, are flushed to the disk (``fsync``) before the chunk counts as done, so
a power cut costs at most the chunks being written at that moment. Only what the outputs need is
kept: labels as uint8 / uint16, and probabilities as float32 only when an output keeps floats (a
Zarr store), else as bytes (``round(p * 255)``, what a probability GeoTIFF holds anyway), so a
150-class model over a gigapixel does not stage 600 GB of floats to write a one-byte mask.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from segtile.engine.cluster import joined_threads
from segtile.errors import OutputError
from segtile.writers.atomic import write_failure
from segtile.writers.blocks import ZarrWrites, zarr_writes
from segtile.writers.durable import fsync_folder, temporary_name, write_durably
from segtile.writers.geotiff import PROBABILITY_SCALE
from segtile.writers.outputs import Layers
from segtile.writers.zarr_store import regular_chunks

STORE, DONE, RUN, OWNER = "work.zarr", "done", "run.json", "owner"
LAYOUT = {STORE, DONE, RUN, OWNER, temporary_name(Path(RUN)).name, temporary_name(Path(OWNER)).name}
_MARKER = re.compile(r"(\d+)-(\d+)")  # done/ROW-COLUMN; any other name there is not segtile's
_VERIFYING_THREADS = 4  # hashlib releases the GIL: chunks are read and checked side by side


class WorkStore:
    """The store in ``folder``: ``work.zarr`` (``labels``, maybe ``probabilities``), ``done/``
    (one marker per finished chunk, with the checksums of its files) and ``run.json`` (what run
    it belongs to); the command's store also has the ``owner`` file of the run using it.

    ``durable``: every chunk and marker is flushed to the disk (``fsync``) as it is written, as
    the command's store is, for ``--resume`` after a power cut; a scratch store is not."""

    def __init__(self, folder: str | os.PathLike, durable: bool = False) -> None:
        self.folder = Path(os.path.abspath(folder))  # the same folder for workers in another working folder
        self.durable = durable

    @property
    def store(self) -> Path:
        return self.folder / STORE

    @classmethod
    def create(cls, folder: str | os.PathLike, labels: da.Array, nodata: int, classes: int,
               precision: str | None, identity: dict[str, Any] | None = None) -> WorkStore:
        """A new, empty store for labels shaped and chunked like ``labels`` (and probabilities
        of ``classes`` at ``precision``, ``"float32"`` or ``"uint8"``, unless ``None``).

        Without ``identity``, in a new folder. With one (the command's resumable store), in the
        folder the run claimed (:func:`segtile.store.identity.claim_work_folder`), durably.

        Raises:
            FileExistsError: ``folder`` exists (without ``identity``).
            OutputError: the store cannot be written (a full disk); nothing of it is left.
        """
        work = cls(folder, durable=identity is not None)
        work.folder.mkdir(parents=True, exist_ok=identity is not None)
        try:
            (work.folder / DONE).mkdir()
            group = zarr.open_group(str(work.store), mode="w", zarr_format=3)
            chunks = tuple(sizes[0] for sizes in labels.chunks)
            _array(group, "labels", labels.shape, chunks, labels.dtype, nodata)
            if precision is not None:
                _array(group, "probabilities", (classes, *labels.shape), (classes, *chunks), np.dtype(precision),
                       np.nan if precision == "float32" else 0)
            record = {"segtile": "work store", "identity": identity, "precision": precision}
            write_durably(work.folder / RUN, json.dumps(record, sort_keys=True).encode())
        except OSError as exc:
            work.remove()
            raise OutputError(f"cannot create the work store in {work.folder.parent}: "
                              f"{write_failure(exc, work.folder.parent)}") from exc
        return work

    def identity(self) -> dict[str, Any] | None:
        """The identity of the run the store belongs to, as given to :meth:`create`."""
        try:
            identity = json.loads((self.folder / RUN).read_text()).get("identity")
        except (OSError, ValueError, AttributeError):  # a store cut off before its run.json: nobody's
            return None
        return identity if isinstance(identity, dict) else None

    def done(self) -> frozenset[tuple[int, int]]:
        """The chunks ``(row, column)`` marked finished (what is not a marker is ignored: a
        ``.DS_Store``, a marker cut off while being written)."""
        try:
            names = os.listdir(self.folder / DONE)
        except OSError:
            return frozenset()
        matches = (_MARKER.fullmatch(name) for name in names)
        return frozenset((int(m[1]), int(m[2])) for m in matches if m)

    def verified(self) -> tuple[frozenset[tuple[int, int]], int]:
        """The chunks marked finished whose files hold what was written (the checksums in their
        markers agree), and how many marked ones do not: a chunk lost, cut short, damaged or
        replaced by another is computed again.

        Raises:
            OSError, ValueError, KeyError: the store's Zarr metadata are missing or damaged.
        """
        group = self.open()
        arrays = {name: group[name] for name in group.array_keys()}
        rows, columns = arrays["labels"].cdata_shape
        marked = [(i, j) for i, j in self.done() if i < rows and j < columns]
        with ThreadPoolExecutor(_VERIFYING_THREADS) as pool:
            intact = list(pool.map(lambda chunk: self._intact(arrays, chunk), marked))
        good = frozenset(chunk for chunk, ok in zip(marked, intact) if ok)
        return good, len(marked) - len(good)

    def _intact(self, arrays: dict[str, zarr.Array], chunk: tuple[int, int]) -> bool:
        try:
            recorded = json.loads((self.folder / DONE / _marker_name(*chunk)).read_text())
            return all(recorded[name] == _digest(_chunk_file(self.folder, name, array, *chunk))
                       for name, array in arrays.items())
        except (OSError, ValueError, KeyError, TypeError):  # a marker without checksums, a file lost
            return False

    def fill(self, arrays: dict[str, da.Array], skip: frozenset[tuple[int, int]] = frozenset(),
             column_groups: Sequence[range] = ()) -> None:
        """Compute ``arrays`` (``labels`` and maybe ``probabilities``) into the store, chunk by
        chunk, every chunk but those in ``skip``; each chunk's marker once it is written. On the
        local scheduler a task hands its chunk to Zarr without waiting for the write
        (:class:`~segtile.writers.blocks.ZarrWrites`); every chunk is written when this returns.

        ``column_groups`` (the engine's stripes) are computed one after another: a
        ``dask.distributed`` scheduler given every stripe at once works on all of them together,
        holding each one's band of batch results (two to three times the memory of one)."""
        try:
            with zarr_writes() as writes, joined_threads():
                markers = self._chunk_writes(arrays, skip, writes)
                (self.folder / DONE).mkdir(exist_ok=True)  # a done/ deleted by hand: its markers are lost, not the run
                for columns in column_groups or (range(markers.shape[1]),):
                    markers[:, columns.start:columns.stop].compute()
        except OSError as exc:  # a full disk, a file size limit, a store that cannot be opened
            raise OutputError(f"cannot write the work store in {self.folder.parent}: "
                              f"{write_failure(exc, self.folder.parent)}") from exc

    def _chunk_writes(self, arrays: dict[str, da.Array], skip: frozenset[tuple[int, int]],
                      writes: ZarrWrites | None) -> da.Array:
        """One task per chunk of ``arrays`` not in ``skip``, writing it and its marker
        (:func:`_write_chunk`), as an array of markers ``(rows, columns)`` to compute."""
        labels = arrays["labels"]
        probabilities = arrays.get("probabilities")
        stored = self.writable_arrays()  # opened once, not once a chunk (each opening reads their metadata)
        name = "segtile-store-" + tokenize(str(self.folder), labels.name, getattr(probabilities, "name", None),
                                           sorted(skip))
        graph: dict = {}
        row_starts = np.cumsum((0,) + labels.chunks[0])
        col_starts = np.cumsum((0,) + labels.chunks[1])
        for i in range(len(labels.chunks[0])):
            for j in range(len(labels.chunks[1])):
                if (i, j) in skip:
                    graph[(name, i, j)] = np.ones((1, 1), dtype=bool)
                    continue
                region = (slice(int(row_starts[i]), int(row_starts[i + 1])),
                          slice(int(col_starts[j]), int(col_starts[j + 1])))
                graph[(name, i, j)] = (_write_chunk, str(self.folder), stored, i, j, region, (labels.name, i, j),
                                       None if probabilities is None else (probabilities.name, 0, i, j), self.durable,
                                       writes)
        dependencies = [labels] if probabilities is None else [labels, probabilities]
        return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=dependencies), name,
                        ((1,) * len(labels.chunks[0]), (1,) * len(labels.chunks[1])), dtype=bool)

    def writable_arrays(self) -> dict[str, zarr.Array]:
        """The store's arrays by name (``labels``, maybe ``probabilities``), open for writing."""
        return dict(zarr.open_group(str(self.store), mode="r+").arrays())

    def open(self) -> zarr.Group:
        """The store's Zarr group, read-only."""
        return zarr.open_group(str(self.store), mode="r")

    def layers(self, template: Layers, group: zarr.Group | None = None) -> Layers:
        """``template`` with its arrays read back (lazily) from the store, or from ``group``,
        the store opened by :meth:`open` (the arrays then hold that object)."""
        group = self.open() if group is None else group
        labels = da.from_zarr(group["labels"])
        probabilities = None
        if "probabilities" in group:
            probabilities = da.from_zarr(group["probabilities"])
            if probabilities.dtype == np.uint8:
                probabilities = da.map_blocks(_from_bytes, probabilities, labels[None], template.nodata,
                                              dtype=np.float32)
        return replace(template, labels=labels, probabilities=probabilities, column_groups=())

    def remove(self) -> None:
        """Remove what the store holds (nothing but its own layout, :data:`LAYOUT`), then its
        folder unless something else is left in it (the owner file of the run using it)."""
        for name in (STORE, DONE):
            shutil.rmtree(self.folder / name, ignore_errors=True)
        for name in (RUN, temporary_name(Path(RUN)).name):
            with suppress(OSError):
                (self.folder / name).unlink()
        with suppress(OSError):
            self.folder.rmdir()


def is_work_store(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but a work store of segtile's (so segtile may empty it):
    nothing at all, or only the names of :data:`LAYOUT`, with a ``run.json`` or an owner file
    that says it is segtile's."""
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    if not names:
        return True
    return names <= LAYOUT and (_says_segtile(folder / RUN, "identity") or _says_segtile(folder / OWNER, "pid"))


def _says_segtile(path: Path, key: str) -> bool:
    """Whether ``path`` is a JSON record of segtile's: its ``segtile`` entry, or ``key`` (which
    records of earlier versions had)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and ("segtile" in record or key in record)


def _array(group: zarr.Group, name: str, shape: tuple, chunks: tuple, dtype: np.dtype, fill_value: float) -> None:
    group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                       config={"write_empty_chunks": True})


def _write_chunk(folder: str, stored: dict[str, zarr.Array], i: int, j: int, region: tuple[slice, slice],
                 labels: np.ndarray, probabilities: np.ndarray | None, durable: bool,
                 writes: ZarrWrites | None = None) -> np.ndarray:
    """Write one chunk's arrays into the store's arrays ``stored``, then its marker (a chunk
    without marker is not done). A ``durable`` store's marker holds the checksums of the chunk's
    files (one whose files disagree is done again), and they are on the disk before it is; a
    scratch store, never resumed, has an empty marker. With ``writes``, both are handed over, in
    that order, and the task returns."""
    blocks: list[tuple[zarr.Array, tuple[slice, ...], np.ndarray]] = [(stored["labels"], region, labels)]
    if probabilities is not None:
        array = stored["probabilities"]
        blocks.append((array, (slice(None), *region),
                       _as_bytes(probabilities) if array.dtype == np.uint8 else probabilities))
    if writes is None:
        for array, key, block in blocks:
            array[key] = block
        _mark_done(folder, stored, i, j, durable)
    else:
        writes.submit(functools.partial(_written_then_marked, folder, stored, i, j, durable, blocks),
                      sum(block.nbytes for *_, block in blocks))
    return np.ones((1, 1), dtype=bool)


async def _written_then_marked(folder: str, stored: dict[str, zarr.Array], i: int, j: int, durable: bool,
                               blocks: list[tuple[zarr.Array, tuple[slice, ...], np.ndarray]]) -> None:
    """:func:`_write_chunk`'s writes through Zarr's asynchronous API, then the marker."""
    await asyncio.gather(*(array.async_array.setitem(key, block) for array, key, block in blocks))
    await asyncio.to_thread(_mark_done, folder, stored, i, j, durable)


def _mark_done(folder: str, stored: dict[str, zarr.Array], i: int, j: int, durable: bool) -> None:
    """Chunk ``(i, j)``'s marker, its arrays written (see :func:`_write_chunk`)."""
    marker = Path(folder) / DONE / _marker_name(i, j)
    if not durable:
        marker.touch()
        return
    checksums = {}
    for name, array in stored.items():
        path = _chunk_file(folder, name, array, i, j)
        checksums[name] = _digest(path, durable=True)
        if checksums[name] is not None:
            fsync_folder(path.parent)
    write_durably(marker, json.dumps(checksums).encode())


def _marker_name(i: int, j: int) -> str:
    return f"{i}-{j}"


def _chunk_file(folder: str | Path, name: str, array: zarr.Array, i: int, j: int) -> Path:
    """The file Zarr keeps chunk ``(i, j)`` of the store's array ``name`` in (a probability chunk
    holds every class)."""
    coordinates = (i, j) if array.ndim == 2 else (0, i, j)
    return Path(folder) / STORE / name / array.metadata.encode_chunk_key(coordinates)


def _digest(path: Path, durable: bool = False) -> str | None:
    """The SHA-256 of a file's bytes (with ``durable``, the file flushed to the disk first);
    ``None`` when there is no file: Zarr writes none for a chunk of nothing but its fill value."""
    digest = hashlib.sha256()
    if not os.path.lexists(path):
        return None
    with open(path, "rb") as file:
        if durable:
            os.fsync(file.fileno())
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def _as_bytes(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as a GeoTIFF stores them: ``round(p * 255)``; 0 where unknown (NaN)."""
    return np.round(np.nan_to_num(np.clip(probabilities, 0, 1)) * PROBABILITY_SCALE).astype(np.uint8)


def _from_bytes(stored: np.ndarray, labels: np.ndarray, nodata: int) -> np.ndarray:
    """Stored bytes back to probabilities; NaN where the labels say nothing was segmented."""
    probabilities = stored.astype(np.float32) / PROBABILITY_SCALE
    probabilities[:, labels[0] == nodata] = np.nan
    return probabilities


def computed_store(layers: Layers, folder: Path, precision: str | None) -> WorkStore:
    """A new store in ``folder`` holding ``layers`` computed: the labels, and the probabilities
    at ``precision`` (``"float32"`` or ``"uint8"``; ``None``: not kept)."""
    labels = regular_chunks(layers.labels)
    arrays = {"labels": labels}
    if precision is not None:
        arrays["probabilities"] = layers.probabilities.rechunk((-1, *labels.chunks))
    work = WorkStore.create(folder, labels, layers.nodata, layers.card.num_classes, precision)
    work.fill(arrays, column_groups=layers.column_groups)
    return work
