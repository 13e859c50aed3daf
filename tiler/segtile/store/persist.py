"""A segmentation computed once and kept on disk: what ``Segmentation.persist`` returns reads it.

A lazy segmentation runs the network every time it is computed: writing a GeoTIFF, then
polygons, then looking at ``labels`` runs it three times. :func:`persist` computes the labels
(and, on request, the probabilities, as float32) once, chunk by chunk, into a work store
(:mod:`segtile.store.workstore`, a Zarr store), and :class:`Stored` hands them back as dask arrays
read from it, so every later writer and computation reads the disk instead of running the model.

Where the store lives, and for how long:

- ``path=None``: a new folder in the system's temporary folder (``segtile-persist-…``), removed
  by ``close()``, or else once nothing uses it any more: neither the persisted result nor any
  array taken from it (the arrays hold the open store, and its removal waits for them), and at
  the latest when Python exits.
- ``path`` given (a folder that must not exist yet, e.g. on a disk with room for the result):
  the store is the user's, kept after the result is gone and never removed by segtile.
"""

from __future__ import annotations

import tempfile
import uuid
import weakref
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np

from segtile.errors import PersistError
from segtile.store.workstore import WorkStore, computed_store
from segtile.writers.outputs import Layers

if TYPE_CHECKING:
    from segtile.result import Segmentation


class Stored:
    """The arrays of a persisted segmentation, read lazily from its work store.

    Attributes:
        folder: the work store's folder.
        temporary: whether segtile made the folder and removes it (see the module docstring).
        labels: dask array ``(H, W)`` read from the store.
        probabilities: dask array ``(classes, H, W)`` float32 read from the store, or ``None``
            when the result was persisted without them.
    """

    def __init__(self, work: WorkStore, template: Layers, temporary: bool) -> None:
        self.folder = work.folder
        self.temporary = temporary
        group = work.open()
        if temporary:
            weakref.finalize(group.store, work.remove)
        layers = work.layers(template, group)
        self.labels = _while_kept(layers.labels, self.folder)
        self.probabilities = None if layers.probabilities is None else _while_kept(layers.probabilities, self.folder)

    def products(self, names: tuple[str, ...]) -> dict[str, da.Array]:
        """The arrays ``names`` (among ``labels`` and ``probabilities``) as stored.

        Raises:
            PersistError: the logits, or probabilities that were not kept, or a closed store.
        """
        _check_kept(self.folder)
        if "logits" in names:
            raise PersistError("a persisted result keeps labels and probabilities, not logits: take .logits "
                               "from the result persist() was called on")
        if "probabilities" in names and self.probabilities is None:
            raise PersistError("this result was persisted without probabilities: "
                               "persist(probabilities=True) keeps them")
        arrays = {"labels": self.labels, "probabilities": self.probabilities}
        return {name: arrays[name] for name in names}

    def close(self) -> None:
        """Remove a temporary store now; a store at a path of the user's is kept."""
        if self.temporary:
            WorkStore(self.folder).remove()


def _while_kept(array: da.Array, folder: Path) -> da.Array:
    """``array``, read from the store in ``folder``, whose chunks raise :class:`PersistError`
    once the store is closed: Zarr reads a removed store's chunks as its fill value, which
    would pass for an all-nodata result."""
    return da.map_blocks(_kept_block, array, folder=folder, dtype=array.dtype)


def _kept_block(block: np.ndarray, folder: Path) -> np.ndarray:
    _check_kept(folder)
    return block


def _check_kept(folder: Path) -> None:
    if not (folder / "run.json").exists():
        raise PersistError(f"the persisted result's store {folder} was closed or removed: persist() again")


def persist(result: Segmentation, path: str | PathLike | None = None, probabilities: bool = False) -> Stored:
    """Compute ``result``'s labels (and probabilities) into a work store at ``path``, or in a
    temporary folder (see the module docstring).

    Raises:
        PersistError: ``path`` exists, or cannot be created.
        OutputError: the store cannot be written (a full disk).
    """
    temporary = path is None
    folder = Path(tempfile.gettempdir()) / f"segtile-persist-{uuid.uuid4().hex}" if temporary else Path(path)
    template = result.layers(probabilities)
    try:
        work = computed_store(template, folder, "float32" if probabilities else None)
    except FileExistsError:
        raise PersistError(f"{folder} exists: persist() makes a new folder (remove it, or choose another "
                           "path)") from None
    except BaseException as error:
        WorkStore(folder).remove()
        if isinstance(error, OSError):
            raise PersistError(f"cannot create {folder}: {error.strerror}") from None
        raise
    return Stored(work, template, temporary)
