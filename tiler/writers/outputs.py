"""Several outputs from one inference pass, each format chosen by its extension.

One output is written straight from the lazy result. Several outputs (or a mask with its
probabilities) first materialise the labels, and the probabilities when asked, into a scratch
Zarr store beside the outputs, in one pass; every output is then written from that store. All
outputs are written under temporary names and appear together only when the last is complete.
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da

from segtile.writers.atomic import OutputSet
from segtile.writers.geotiff import probabilities_path_for, write_mask, write_probabilities
from segtile.writers.vector import write_polygons
from segtile.writers.zarr_store import read_zarr, write_zarr

if TYPE_CHECKING:
    from segtile.result import Segmentation

OUTPUT_KINDS = {
    ".tif": "mask", ".tiff": "mask",
    ".zarr": "zarr",
    ".gpkg": "vector", ".geojson": "vector", ".fgb": "vector", ".shp": "vector",
}


def output_kind(path: str) -> str | None:
    """``"mask"``, ``"zarr"`` or ``"vector"`` from the extension; ``None`` when unknown."""
    return OUTPUT_KINDS.get(Path(path.rstrip("/\\")).suffix.lower())


def output_paths(path: str, probabilities: bool) -> list[str]:
    """Every file ``path`` stands for: a mask with probabilities also writes a second GeoTIFF."""
    if probabilities and output_kind(path) == "mask":
        return [path, str(probabilities_path_for(path))]
    return [path]


def write_outputs(result: Segmentation, paths: list[str], *, probabilities: bool = False,
                  simplify: float | None = None, min_area: float | None = None,
                  overwrite: bool = False) -> None:
    """Write ``result`` to every path in ``paths`` (see the module docstring)."""
    kinds = [output_kind(path) for path in paths]
    if None in kinds:
        unknown = paths[kinds.index(None)]
        raise ValueError(f"unknown output format for {unknown}: use one of {', '.join(sorted(OUTPUT_KINDS))}")
    georef, card, nodata = result.georef, result.card, result.nodata
    labels = result.labels
    probs = result.probabilities if probabilities and {"mask", "zarr"} & set(kinds) else None
    with OutputSet(overwrite=overwrite) as outputs, ExitStack() as scratch:
        temporaries = {path: outputs.add(path) for path in paths}
        for path in paths:
            for extra in output_paths(path, probs is not None)[1:]:
                temporaries[extra] = outputs.add(extra)
        if len(temporaries) > 1:
            labels, probs = _materialise(scratch, Path(paths[0]).parent, labels, probs, result)
        for path, kind in zip(paths, kinds):
            target = temporaries[path]
            if kind == "mask":
                write_mask(target, labels, georef, card, nodata=nodata, atomic=False)
                if probs is not None:
                    extra = output_paths(path, True)[1]
                    write_probabilities(temporaries[extra], probs, georef, card, atomic=False)
            elif kind == "zarr":
                write_zarr(target, labels, georef, card, probabilities=probs, nodata=nodata, atomic=False)
            else:
                write_polygons(target, labels, georef, card, nodata=nodata, simplify=simplify,
                               min_area=min_area, atomic=False)


def _materialise(scratch: ExitStack, directory: Path, labels: da.Array, probs: da.Array | None,
                 result: Segmentation) -> tuple[da.Array, da.Array | None]:
    """Run inference once into a scratch Zarr store (removed afterwards); return lazy reads of it."""
    folder = scratch.enter_context(tempfile.TemporaryDirectory(prefix=".segtile-pass-", dir=directory))
    store = Path(folder) / "pass.zarr"
    write_zarr(store, labels, result.georef, result.card, probabilities=probs,
               nodata=result.nodata, atomic=False)
    stored_labels, stored_probs, _, _ = read_zarr(store)
    return stored_labels, stored_probs
