"""The work store: a run's finished chunks, kept in a Zarr store beside its outputs.

Outputs are written from the store, not from the network: the labels (and the probabilities,
when an output writes them) are computed once, chunk by chunk, into it, and each output is then
written from it. So several outputs cost one inference pass, and a run that dies (Ctrl-C, a
crash, SIGKILL, a power cut) keeps what it finished: ``segtile --resume`` computes only the
chunks that are missing, then writes the outputs exactly as an uninterrupted run would.

A chunk counts as done only once its marker file exists (``done/ROW-COLUMN``), created after its
arrays are written: a chunk cut off half way is computed again. Only what the outputs need is
kept: labels as uint8 / uint16, and probabilities as float32 only when an output keeps floats (a
Zarr store), else as bytes (``round(p * 255)``, what a probability GeoTIFF holds anyway), so a
150-class model over a gigapixel does not stage 600 GB of floats to write a one-byte mask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any, ContextManager

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from segtile.cluster import joined_threads
from segtile.writers.atomic import OutputError, write_failure
from segtile.writers.geotiff import PROBABILITY_SCALE
from segtile.writers.outputs import Layers
from segtile.writers.zarr_store import regular_chunks

STORE, DONE, RUN = "work.zarr", "done", "run.json"


class WorkStore:
    """The store in ``folder``: ``work.zarr`` (``labels``, maybe ``probabilities``), ``done/``
    (one marker per finished chunk) and ``run.json`` (what run it belongs to)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(os.path.abspath(folder))  # the same folder for workers in another working folder

    @property
    def store(self) -> Path:
        return self.folder / STORE

    @classmethod
    def create(cls, folder: str | os.PathLike, labels: da.Array, nodata: int, classes: int,
               precision: str | None, identity: dict[str, Any] | None = None) -> WorkStore:
        """A new, empty store for labels shaped and chunked like ``labels`` (and probabilities
        of ``classes`` at ``precision``, ``"float32"`` or ``"uint8"``, unless ``None``)."""
        work = cls(folder)
        work.folder.mkdir(parents=True, exist_ok=False)
        (work.folder / DONE).mkdir()
        group = zarr.open_group(str(work.store), mode="w", zarr_format=3)
        chunks = tuple(sizes[0] for sizes in labels.chunks)
        _array(group, "labels", labels.shape, chunks, labels.dtype, nodata)
        if precision is not None:
            _array(group, "probabilities", (classes, *labels.shape), (classes, *chunks), np.dtype(precision),
                   np.nan if precision == "float32" else 0)
        (work.folder / RUN).write_text(json.dumps({"identity": identity, "precision": precision}, sort_keys=True))
        return work

    def identity(self) -> dict[str, Any] | None:
        """The identity of the run the store belongs to, as given to :meth:`create`."""
        try:
            return json.loads((self.folder / RUN).read_text()).get("identity")
        except (OSError, ValueError):  # a store cut off before its run.json: nobody's
            return None

    def done(self) -> frozenset[tuple[int, int]]:
        """The chunks ``(row, column)`` finished and written."""
        try:
            names = os.listdir(self.folder / DONE)
        except FileNotFoundError:
            return frozenset()
        return frozenset(tuple(int(n) for n in name.split("-")) for name in names)

    def fill(self, arrays: dict[str, da.Array], skip: frozenset[tuple[int, int]] = frozenset(),
             column_groups: Sequence[range] = ()) -> None:
        """Compute ``arrays`` (``labels`` and maybe ``probabilities``) into the store, chunk by
        chunk, every chunk but those in ``skip``; each chunk's marker once it is written.

        ``column_groups`` (the engine's stripes) are computed one after another: a
        ``dask.distributed`` scheduler given every stripe at once works on all of them together,
        holding each one's band of batch results (two to three times the memory of one)."""
        labels = arrays["labels"]
        probabilities = arrays.get("probabilities")
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
                graph[(name, i, j)] = (_write_chunk, str(self.folder), i, j, region, (labels.name, i, j),
                                       None if probabilities is None else (probabilities.name, 0, i, j))
        dependencies = [labels] if probabilities is None else [labels, probabilities]
        markers = da.Array(HighLevelGraph.from_collections(name, graph, dependencies=dependencies), name,
                           ((1,) * len(labels.chunks[0]), (1,) * len(labels.chunks[1])), dtype=bool)
        groups = column_groups or (range(markers.shape[1]),)
        try:
            with joined_threads():
                for columns in groups:
                    markers[:, columns.start:columns.stop].compute()
        except OSError as exc:  # a full disk, a file size limit
            raise OutputError(f"cannot write the work store in {self.folder.parent}: {write_failure(exc)}") from exc

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
        shutil.rmtree(self.folder, ignore_errors=True)


def _array(group: zarr.Group, name: str, shape: tuple, chunks: tuple, dtype: np.dtype, fill_value: float) -> None:
    group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill_value,
                       config={"write_empty_chunks": True})


@lru_cache(maxsize=8)
def _open_store(folder: str) -> zarr.Group:
    """The store of ``folder``, opened once per process (tasks write many chunks into it)."""
    return zarr.open_group(str(Path(folder) / STORE), mode="r+")


def _write_chunk(folder: str, i: int, j: int, region: tuple[slice, slice], labels: np.ndarray,
                 probabilities: np.ndarray | None) -> np.ndarray:
    """Write one chunk's arrays, then its marker (a chunk without marker is not done)."""
    group = _open_store(folder)
    group["labels"][region] = labels
    if probabilities is not None:
        stored = group["probabilities"]
        stored[(slice(None), *region)] = _as_bytes(probabilities) if stored.dtype == np.uint8 else probabilities
    (Path(folder) / DONE / f"{i}-{j}").touch()
    return np.ones((1, 1), dtype=bool)


def _as_bytes(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as a GeoTIFF stores them: ``round(p * 255)``; 0 where unknown (NaN)."""
    return np.round(np.nan_to_num(np.clip(probabilities, 0, 1)) * PROBABILITY_SCALE).astype(np.uint8)


def _from_bytes(stored: np.ndarray, labels: np.ndarray, nodata: int) -> np.ndarray:
    """Stored bytes back to probabilities; NaN where the labels say nothing was segmented."""
    probabilities = stored.astype(np.float32) / PROBABILITY_SCALE
    probabilities[:, labels[0] == nodata] = np.nan
    return probabilities


def stage(layers: Layers, folder: Path, precision: str | None) -> Layers:
    """Compute ``layers`` into a new store in ``folder``; return them read back from it."""
    return computed_store(layers, folder, precision).layers(layers)


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


@contextmanager
def staged(layers: Layers, folder: Path, precision: str | None, enabled: bool = True,
           computing: Callable[[], ContextManager] = nullcontext) -> Iterator[Layers]:
    """``layers`` computed once into a scratch store in ``folder`` (removed on leaving), read
    back lazily; with ``precision`` (``"float32"`` or ``"uint8"``) the probabilities too.
    ``computing()`` is entered around the computing. Without ``enabled``, ``layers`` as they are."""
    if not enabled:
        yield layers
        return
    with tempfile.TemporaryDirectory(prefix=".segtile-pass-", dir=folder) as scratch:
        with computing():
            ready = stage(layers, Path(scratch) / "work", precision)
        yield ready
