"""The work store: a run's finished chunks, kept in a Zarr store beside its outputs.

Several outputs are written from one inference pass by computing the labels (and the
probabilities, when an output writes them) once, chunk by chunk, into this store; each output is
then written from it. Only what the outputs need is kept: labels as uint8 / uint16, and
probabilities as float32 only when an output keeps floats (a Zarr store), else as bytes
(``round(p * 255)``, what a probability GeoTIFF holds anyway), so a 150-class model over a
gigapixel does not stage 600 GB of floats to write a one-byte mask.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import ContextManager

import dask.array as da
import numpy as np
import zarr

from segtile.cluster import joined_threads
from segtile.writers.atomic import OutputError
from segtile.writers.geotiff import PROBABILITY_SCALE
from segtile.writers.outputs import Layers, write_failure


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
            try:
                ready = stage(layers, Path(scratch) / "work.zarr", precision)
            except OSError as exc:  # a full disk, a file size limit
                raise OutputError(f"cannot write the work store in {folder}: {write_failure(exc)}") from exc
        yield ready


def stage(layers: Layers, path: Path, precision: str | None) -> Layers:
    """Compute ``layers`` into a new store at ``path``; return them read back from it."""
    labels = layers.labels
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    sources = [labels]
    targets = [_array(group, "labels", labels, layers.nodata)]
    if precision is not None:
        probabilities = layers.probabilities.rechunk({0: -1})
        if precision == "uint8":
            probabilities = probabilities.map_blocks(_as_bytes, dtype=np.uint8)
        sources.append(probabilities)
        targets.append(_array(group, "probabilities", probabilities, np.nan if precision == "float32" else 0))
    with joined_threads():
        da.store(sources, targets, lock=False, compute=True)
    stored_labels = da.from_zarr(targets[0])
    stored_probabilities = None
    if precision is not None:
        stored_probabilities = da.from_zarr(targets[1])
        if precision == "uint8":
            stored_probabilities = da.map_blocks(_from_bytes, stored_probabilities, stored_labels[None],
                                                 layers.nodata, dtype=np.float32)
    return replace(layers, labels=stored_labels, probabilities=stored_probabilities)


def _array(group: zarr.Group, name: str, array: da.Array, fill_value: float) -> zarr.Array:
    return group.create_array(name, shape=array.shape, chunks=array.chunksize, dtype=array.dtype,
                              fill_value=fill_value,
                              config={"write_empty_chunks": True})


def _as_bytes(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities as a GeoTIFF stores them: ``round(p * 255)``; 0 where unknown (NaN)."""
    return np.round(np.nan_to_num(np.clip(probabilities, 0, 1)) * PROBABILITY_SCALE).astype(np.uint8)


def _from_bytes(stored: np.ndarray, labels: np.ndarray, nodata: int) -> np.ndarray:
    """Stored bytes back to probabilities; NaN where the labels say nothing was segmented."""
    probabilities = stored.astype(np.float32) / PROBABILITY_SCALE
    probabilities[:, labels[0] == nodata] = np.nan
    return probabilities
