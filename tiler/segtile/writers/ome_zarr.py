"""OME-Zarr (NGFF 0.5 on Zarr v3): the labels as a multiscale label image napari and
ome-zarr-py open with their class colours and names.

Layout of ``NAME.ome.zarr`` (and of a slide's ``NAME.zarr``):

- the root is an OME-Zarr **image**: the class map drawn in the card's colours, axes
  ``(c, y, x)`` with three channels (red, green, blue; uint8; black where nothing was
  segmented), arrays ``0``, ``1``, … one per level. An OME-Zarr label image must belong to an
  image, and this one costs little (it compresses like the labels) where a copy of the source
  would double a slide's size; any OME-Zarr viewer shows it, label-aware or not;
- ``labels/classes`` is the **label image**: the class index of each pixel (uint8, uint16
  beyond 255 classes; ``nodata`` where nothing was segmented), axes ``(y, x)``, the same levels,
  with ``image-label`` metadata: ``colors`` (label value -> RGBA, nodata transparent),
  ``properties`` (label value -> ``class_name``; ``"nodata"`` for nodata), ``source`` (the
  image, ``../../``);
- ``probabilities`` (on request): a multiscale image of its own, ``(c, y, x)`` float32, one
  channel per class named after it (NaN where unknown);
- the root's ``segtile`` attributes keep what NGFF has no place for: the CRS, the affine
  transform, µm per pixel, the classes, nodata and the whole model card.

Levels halve the size (rounded up) until the image fits in one chunk: labels by the most frequent
class of each 2x2 block, probabilities by the mean (see :mod:`segtile.writers.pyramid`), the
class-colour image drawn from each level of labels. Every level is written chunk by chunk.

Coordinates (each level's ``scale`` then ``translation``, y before x, the channel axis at 1):

- slides: micrometres, measured from the centre of the slide's first level-0 pixel, so the
  labels lie on the slide itself as napari shows it from its own OME-Zarr (pixel size of level
  ``k`` = the processing grid's µm per pixel × 2^k; its centres shift by half the difference);
- rasters in a projected CRS: metres from the centre of the first pixel, with no map position
  (NGFF has no CRS: that is in the ``segtile`` attributes);
- other inputs (no pixel size, or a geographic CRS): unitless, in pixels of level 0.

The OME metadata is written as the specification spells it (zarr writes the arrays):
ome-zarr-py would bring a dozen dependencies to the runtime for a few dictionaries.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import WRITE_EVERY_CHUNK, as_labels, as_probabilities, store_in_zarr
from segtile.writers.legend import colour_table, rgb_palette
from segtile.writers.pyramid import halved, level_shapes, mean_2x2, mode_2x2
from segtile.writers.zarr_store import regular_chunks, segtile_attributes

NGFF_VERSION = "0.5"
LABEL_NAME = "classes"  # the label image: labels/classes
CHANNELS = (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))


def write_ome_zarr(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
                   probabilities: Any = None, nodata: int = 255, overwrite: bool = False,
                   atomic: bool = True) -> Path:
    """Write labels (and probabilities) as OME-Zarr; return ``path``. See the module docstring.

    Args:
        labels: dask (or numpy) array ``(H, W)`` of class indices, ``nodata`` where invalid.
        probabilities: dask array ``(classes, H, W)`` float, NaN where unknown, or ``None``.
        atomic: see :func:`segtile.writers.geotiff.write_mask`.
    """
    labels = regular_chunks(as_labels(labels, card, nodata))
    if probabilities is not None:
        probabilities = regular_chunks(as_probabilities(probabilities, card, labels.shape).astype(np.float32))
    chunks = labels.chunksize
    shapes = level_shapes(labels.shape, chunks)
    space = _space(georef)
    palette = rgb_palette(card, np.iinfo(labels.dtype).max + 1)
    with destination(path, overwrite, atomic, directory=True) as target:
        root = zarr.open_group(str(target), mode="w", zarr_format=3, attributes={
            "ome": {"version": NGFF_VERSION, "omero": _omero(CHANNELS, 255), "multiscales": [_multiscale(
                "class colours", space, len(shapes), channel=True, method="mode",
                description="the labels of each level drawn in their class colours")]},
            "segtile": segtile_attributes(georef, card, nodata),
        })
        image_levels = [_array(root, k, (3, *shape), (1, *chunks), np.uint8, 0, ("c", "y", "x"))
                        for k, shape in enumerate(shapes)]
        label_levels = _label_image(root, card, nodata, space, shapes, chunks, labels.dtype)
        probability_levels = [] if probabilities is None else _probability_image(root, card, space, shapes, chunks)
        # Level 0 in one pass: the labels, their colours and the probabilities share the inference.
        store_in_zarr([labels, _drawn(labels, palette), *([] if probabilities is None else [probabilities])],
                      [label_levels[0], image_levels[0], *probability_levels[:1]])
        for k in range(1, len(shapes)):
            level = halved(da.from_zarr(label_levels[k - 1]), functools.partial(mode_2x2, nodata=nodata), nodata,
                           chunks)
            store_in_zarr([level, _drawn(level, palette)], [label_levels[k], image_levels[k]])
            if probability_levels:
                store_in_zarr([halved(da.from_zarr(probability_levels[k - 1]), mean_2x2, np.nan, chunks)],
                              [probability_levels[k]])
    return Path(path)


@dataclass(frozen=True)
class _Space:
    """The physical space of level 0: the unit of the y and x axes (or ``None``), the size of a
    pixel along y and x, and the size of the pixel whose centre is the origin (y, x)."""

    unit: str | None
    step: tuple[float, float]
    origin_pixel: tuple[float, float]


def _space(georef: Georef) -> _Space:
    """Micrometres for slides, metres for projected CRSs, else pixels (see the module docstring)."""
    microns = georef.microns_per_pixel()
    transform = georef.transform
    if microns is not None:
        step = (microns[1], microns[0])
        if transform is None:
            return _Space("micrometer", step, step)
        level0 = microns[0] / math.hypot(transform.a, transform.d)  # a slide's level-0 pixels are square
        return _Space("micrometer", step, (level0, level0))
    if georef.crs is not None and georef.crs.is_projected and transform is not None:
        metres = georef.crs.linear_units_factor[1]
        step = (math.hypot(transform.b, transform.e) * metres, math.hypot(transform.a, transform.d) * metres)
        return _Space("meter", step, step)
    return _Space(None, (1.0, 1.0), (1.0, 1.0))


def _transformations(space: _Space, level: int, channel: bool) -> list[dict[str, Any]]:
    """The ``scale`` and, when not zero, the ``translation`` of ``level``."""
    scale = [size * 2 ** level for size in space.step]
    translation = [(size - origin) / 2 for size, origin in zip(scale, space.origin_pixel)]
    lead = [1.0] if channel else []
    transformations = [{"type": "scale", "scale": [*lead, *scale]}]
    if any(translation):
        transformations.append({"type": "translation", "translation": [*([0.0] if channel else []), *translation]})
    return transformations


def _multiscale(name: str, space: _Space, levels: int, *, channel: bool, method: str,
                description: str) -> dict[str, Any]:
    """One ``multiscales`` entry: axes, one dataset per level, the downsampling method."""
    spatial = [{"name": axis, "type": "space", **({"unit": space.unit} if space.unit else {})} for axis in "yx"]
    return {
        "name": name,
        "axes": [{"name": "c", "type": "channel"}, *spatial] if channel else spatial,
        "datasets": [{"path": str(k), "coordinateTransformations": _transformations(space, k, channel)}
                     for k in range(levels)],
        "type": method,
        "metadata": {"description": description},
    }


def _omero(channels: Sequence[tuple[str, str]], maximum: float) -> dict[str, Any]:
    """How viewers draw the channels: names, colours (``RRGGBB``), display range 0..maximum."""
    window = {"min": 0, "max": maximum, "start": 0, "end": maximum}
    return {"channels": [{"label": label, "color": colour, "window": window, "active": True}
                         for label, colour in channels],
            "rdefs": {"model": "color"}}


def _image_label(card: ModelCard, nodata: int) -> dict[str, Any]:
    """Colours (nodata transparent) and class names (``"nodata"`` for nodata) of the label
    values, and the image they label."""
    names = {**dict(enumerate(card.classes)), nodata: "nodata"}
    return {
        "colors": [{"label-value": value, "rgba": list(rgba)} for value, rgba in colour_table(card, nodata).items()],
        "properties": [{"label-value": value, "class_name": name} for value, name in names.items()],
        "source": {"image": "../../"},
    }


def _label_image(root: zarr.Group, card: ModelCard, nodata: int, space: _Space, shapes: list[tuple[int, int]],
                 chunks: tuple[int, int], dtype: np.dtype) -> list[zarr.Array]:
    """The ``labels`` group, the label image in it and its (empty) arrays, one per level."""
    labels = root.create_group("labels", attributes={"ome": {"version": NGFF_VERSION, "labels": [LABEL_NAME]}})
    image = labels.create_group(LABEL_NAME, attributes={"ome": {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale(LABEL_NAME, space, len(shapes), channel=False, method="mode",
                                    description="the most frequent class of each 2x2 block")],
        "image-label": _image_label(card, nodata),
    }})
    return [_array(image, k, shape, chunks, dtype, nodata, ("y", "x")) for k, shape in enumerate(shapes)]


def _probability_image(root: zarr.Group, card: ModelCard, space: _Space, shapes: list[tuple[int, int]],
                       chunks: tuple[int, int]) -> list[zarr.Array]:
    """The ``probabilities`` group and its (empty) arrays, one per level."""
    group = root.create_group("probabilities", attributes={"ome": {
        "version": NGFF_VERSION,
        "multiscales": [_multiscale("probabilities", space, len(shapes), channel=True, method="mean",
                                    description="the mean of each 2x2 block, NaN left out")],
        "omero": _omero([(name, colour[1:].upper()) for name, colour in zip(card.classes, card.colors)], 1.0),
    }})
    return [_array(group, k, (card.num_classes, *shape), (1, *chunks), np.float32, np.nan, ("c", "y", "x"))
            for k, shape in enumerate(shapes)]


def _array(group: zarr.Group, level: int, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
           fill: float, dimensions: tuple[str, ...]) -> zarr.Array:
    return group.create_array(str(level), shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                              dimension_names=dimensions, config=WRITE_EVERY_CHUNK)


def _drawn(labels: da.Array, palette: np.ndarray) -> da.Array:
    """The labels drawn in ``palette``'s colours: ``(3, H, W)`` uint8."""
    return labels.map_blocks(lambda block: np.moveaxis(palette[block], -1, 0), new_axis=0,
                             chunks=((3,), *labels.chunks), dtype=np.uint8)
