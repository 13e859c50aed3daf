"""Several outputs written together from one inference pass, through a scratch work store.

One output is written straight from the arrays given. Several outputs (or a mask with its
probabilities) first materialise what they need into a scratch Zarr store beside the outputs,
in one pass (:mod:`segtile.store.workstore`): the labels, and the probabilities only when an
output writes them, at the precision that output keeps. Every output is then written from that
store by its writer (the table of :mod:`segtile.writers.outputs`), under a temporary name, and
all appear together only when the last is complete.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import ContextManager

from pyogrio.errors import DataLayerError, DataSourceError

from segtile.engine.cluster import current_client
from segtile.engine.progress import Progress
from segtile.errors import ClippedWarning, OutputError
from segtile.store.workstore import computed_store
from segtile.writers.atomic import OutputSet, disk_full, write_failure
from segtile.writers.outputs import Layers, WriteOptions, placement_notes, plan_outputs, probability_precision


def write_outputs(layers: Layers, paths: Sequence[str | os.PathLike], options: WriteOptions = WriteOptions(), *,
                  overwrite: bool = False, protected: Iterable[str | os.PathLike] = (),
                  progress: Progress | None = None, computing: Callable[[], ContextManager] = nullcontext,
                  stage: bool | None = None) -> list[Path]:
    """Write ``layers`` to every path in ``paths`` (see the module docstring); return the paths.

    Args:
        layers: the arrays; ``layers.probabilities`` is needed only when ``options.probabilities``.
        protected: paths no output may replace, even with ``overwrite`` (the input image).
        progress: shows a stage ``writing NAME`` per output (none by default).
        computing: a context manager entered around the pass that computes the layers (the
            staging, or the first output's writing): where a caller counts the tiles run.
        stage: compute the layers into a scratch store first; by default when they would
            otherwise be computed more than once, or a ``dask.distributed`` client runs the work.

    Raises:
        SegtileError: an option that cannot apply (:meth:`WriteOptions.check`) or an output that
            cannot be written (:func:`plan_outputs`, :func:`placement_notes`), before any work.

    Warns:
        ClippedWarning: a polygon output leaves out the part of the image that has no
            geographic coordinates (:func:`placement_notes`).
    """
    if not paths:
        raise OutputError("name at least one output to write (e.g. mask.tif, regions.gpkg, labels.zarr)")
    options.check(layers.card)
    planned = plan_outputs(paths, options, overwrite=overwrite, protected=protected, slide=layers.georef.is_slide)
    for note in placement_notes(planned, layers.georef, layers.labels.shape):
        warnings.warn(note, ClippedWarning, stacklevel=2)
    precision = probability_precision([p.kind for p in planned], options)
    passes = sum(2 if p.kind.separate_probabilities and precision else 1 for p in planned)
    progress = progress or Progress("none")
    with OutputSet(overwrite=overwrite) as outputs:
        targets = [outputs.add(p.path, files=p.files[1:], directory=p.kind.directory, protected=protected)
                   for p in planned]
        # on a cluster the workers compute into the store and only what is read back travels
        enabled = (passes > 1 or current_client() is not None) if stage is None else stage
        with staged(layers, planned[0].path.parent, precision, enabled=enabled, computing=computing) as ready:
            for index, (target, output) in enumerate(zip(targets, planned)):
                units = math.prod(ready.labels.numblocks) * (2 if output.kind.separate_probabilities and precision
                                                            else 1) + 1
                first_pass = computing() if index == 0 and not enabled else nullcontext()
                with progress.stage(f"writing {output.path.name}", units) as advance, first_pass, \
                        _write_errors(output.path):
                    output.kind.write(target, ready, options, advance)
                    advance(1)  # the last step: overviews, a layer's index
    return [p.path for p in planned]


@contextmanager
def _write_errors(path: Path) -> Iterator[None]:
    """Failures to write a file (a full disk, a file size limit, a lost mount), whichever library
    meets them (GDAL through rasterio, OGR through pyogrio, zarr), as one :class:`OutputError`
    naming the output."""
    try:
        yield
    except (OSError, DataSourceError, DataLayerError) as exc:
        raise OutputError(f"cannot write {path}: {write_failure(exc, path.parent)}") from exc
    except Exception as exc:  # GDAL's own words for a write cut short ("IO error writing tag data")
        if not disk_full(path.parent):
            raise
        raise OutputError(f"cannot write {path}: {write_failure(exc, path.parent)}") from exc


def stage(layers: Layers, folder: Path, precision: str | None) -> Layers:
    """Compute ``layers`` into a new store in ``folder``; return them read back from it."""
    return computed_store(layers, folder, precision).layers(layers)


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
