"""A Zarr v3 store of the labels (and probabilities) with everything needed to read them back.

Layout of the group at ``PATH.zarr``:

- ``labels``: ``(H, W)`` uint8 / uint16, fill value ``nodata``, dimension names ``(y, x)``;
- ``probabilities`` (optional): ``(classes, H, W)`` float32, NaN where unknown, dimension names
  ``(class, y, x)``;
- group attributes: ``crs`` (WKT, or null), ``transform`` (the six affine coefficients
  ``[a, b, c, d, e, f]`` of ``x = a·col + b·row + c``, ``y = d·col + e·row + f``, as in
  rasterio's ``Affine``; GDAL's order is ``[c, a, b, f, d, e]``; or null), ``mpp`` (µm per pixel,
  or null), ``classes``, ``colors``, ``nodata`` and ``card`` (the whole model card).

Arrays are chunked as the dask arrays handed in (made regular when they are not) and written
chunk by chunk in one ``da.store`` call, so labels and probabilities computed from the same logits
share one pass.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from affine import Affine
from rasterio.crs import CRS

from segtile.cluster import joined_threads
from segtile.errors import SegtileError
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import as_labels, as_probabilities


class ZarrStoreError(SegtileError, ValueError):
    """A Zarr store is not one segtile wrote (no labels array or no model card)."""


def write_zarr(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
               probabilities: Any = None, nodata: int = 255, overwrite: bool = False,
               atomic: bool = True) -> Path:
    """Write labels (and probabilities) with their georeference and card to a Zarr v3 group;
    return ``path``. See the module docstring for the layout."""
    labels = regular_chunks(as_labels(labels, card, nodata))
    sources, targets = [labels], []
    with destination(path, overwrite, atomic, directory=True) as target:
        attributes = segtile_attributes(georef, card, nodata)
        group = zarr.open_group(str(target), mode="w", zarr_format=3, attributes=attributes)
        targets.append(group.create_array(
            "labels", shape=labels.shape, chunks=labels.chunksize, dtype=labels.dtype,
            fill_value=nodata, dimension_names=("y", "x"),
        ))
        if probabilities is not None:
            probabilities = regular_chunks(as_probabilities(probabilities, card, labels.shape).astype(np.float32))
            sources.append(probabilities)
            targets.append(group.create_array(
                "probabilities", shape=probabilities.shape, chunks=probabilities.chunksize,
                dtype=np.float32, fill_value=np.nan, dimension_names=("class", "y", "x"),
            ))
        with joined_threads():
            da.store(sources, targets, lock=False, compute=True)
    return Path(path)


def read_zarr(path: str | PathLike) -> tuple[da.Array, da.Array | None, Georef, ModelCard]:
    """Open a store written by :func:`write_zarr`: lazy ``(labels, probabilities or None, georef,
    card)``, chunked as stored. The ``nodata`` value is the group's ``nodata`` attribute (and the
    labels' fill value)."""
    group = _open(path)
    attributes = group.attrs
    labels = da.from_zarr(group["labels"])
    probabilities = da.from_zarr(group["probabilities"]) if "probabilities" in group else None
    crs = CRS.from_wkt(attributes["crs"]) if attributes.get("crs") else None
    transform = Affine(*attributes["transform"]) if attributes.get("transform") else None
    georef = Georef(crs, transform, attributes.get("mpp"))
    return labels, probabilities, georef, ModelCard.from_dict(attributes["card"])


def _open(path: str | PathLike) -> zarr.Group:
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError):
        raise ZarrStoreError(f"not a Zarr group: {path}") from None
    if "labels" not in group or "card" not in group.attrs:
        raise ZarrStoreError(f"not a segtile Zarr store (no labels or no model card): {path}")
    return group


def segtile_attributes(georef: Georef, card: ModelCard, nodata: int) -> dict[str, Any]:
    transform = georef.transform
    return {
        "crs": georef.crs.to_wkt() if georef.crs is not None else None,
        "transform": list(transform)[:6] if transform is not None else None,
        "mpp": georef.mpp,
        "classes": list(card.classes),
        "colors": list(card.colors),
        "nodata": nodata,
        "card": card.to_dict(),
    }


def regular_chunks(array: da.Array) -> da.Array:
    """``array`` with chunks Zarr can hold: equal along each axis but for a smaller last one."""
    for sizes in array.chunks:
        if len(set(sizes[:-1])) > 1 or sizes[-1] > sizes[0]:
            return array.rechunk(array.chunksize)
    return array
