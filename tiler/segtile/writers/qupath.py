"""QuPath GeoJSON: the regions of a slide's labels as QuPath objects (File > Import objects).

A FeatureCollection with one Feature per 4-connected region per class, joined across chunk
seams as for every polygon output (:func:`segtile.writers.vector.stream_regions`), in the form
QuPath (0.4 and later) writes and reads:

- ``"id"``: a random UUID, QuPath's object id;
- ``"geometry"``: a Polygon (holes kept) in **level-0 pixel coordinates** of the slide: x =
  column, y = row, pixel corners on integers, y pointing down, whatever µm per pixel the model
  ran at; no CRS is claimed (QuPath places objects by pixel);
- ``"properties"``: ``"objectType"`` (``"annotation"``, or ``"detection"``: lighter objects
  QuPath draws faster and lists apart), ``"classification"`` ``{"name": class name, "color":
  [r, g, b]}`` in the model card's colours, and ``"measurements"`` ``{"Area µm^2": area}``, the
  region's area in the mask (before any simplification), named as QuPath names it (``"Area
  px^2"``, in level-0 pixels, when the slide has no pixel size).

Features are written to the file as regions complete, in batches, so the writer holds only the
regions still waiting for a seam. OGR cannot write nested properties (``classification``), so
each feature is ``json``-encoded here, its geometry by shapely.
"""

from __future__ import annotations

import json
import uuid
from os import PathLike
from pathlib import Path
from typing import Any, Sequence, TextIO

import shapely

from segtile.errors import WriterInputError
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import Advance, as_labels
from segtile.writers.legend import rgb
from segtile.writers.placement import Placement
from segtile.writers.vector import Batch, RegionBatches, class_indices, stream_regions, without_classes

OBJECT_TYPES = ("annotation", "detection")
DEFAULT_OBJECTS = "annotation"


def write_qupath_geojson(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
                         nodata: int = 255, objects: str = "annotation", skip_classes: Sequence[str] = (),
                         simplify: float | None = None, min_area: float | None = None, overwrite: bool = False,
                         progress: Advance | None = None, atomic: bool = True) -> Path:
    """Write the regions of ``labels`` as QuPath objects; return ``path``. See the module docstring.

    Args:
        labels: dask (or numpy) array ``(H, W)`` of class indices; ``nodata`` pixels make no object.
        georef: the slide's: its transform maps pixels of ``labels`` to level-0 pixels, its µm per
            pixel give the areas.
        objects: ``"annotation"`` or ``"detection"``.
        skip_classes, simplify, min_area, progress, atomic: as for
            :func:`segtile.writers.vector.write_polygons` (lengths in level-0 pixels).
    """
    check_object_type(objects)
    labels = without_classes(as_labels(labels, card, nodata), class_indices(card, skip_classes), nodata)
    with destination(path, overwrite, atomic) as target, open(target, "w", encoding="utf-8") as file:
        features = _FeatureWriter(file, georef, card, objects)
        batches = RegionBatches(Placement(georef, labels.shape), features.write, simplify=simplify,
                                min_area=min_area)
        stream_regions(labels, nodata, batches.add, progress=progress)
        batches.close()
        features.close()
    return Path(path)


def check_object_type(objects: str) -> None:
    """Raise :class:`WriterInputError` unless ``objects`` is a QuPath object type segtile writes."""
    if objects not in OBJECT_TYPES:
        raise WriterInputError(f"QuPath objects must be one of {', '.join(OBJECT_TYPES)}, not {objects!r}")


class _FeatureWriter:
    """Streams Features into a FeatureCollection: the header at once, features batch by batch,
    the closing brackets on :meth:`close`."""

    def __init__(self, file: TextIO, georef: Georef, card: ModelCard, objects: str) -> None:
        self._file = file
        self._objects = objects
        self._classifications = [{"name": name, "color": list(rgb(colour))}
                                 for name, colour in zip(card.classes, card.colors)]
        self._area_name, self._area_scale = _area_measurement(georef)
        self._first = True
        file.write('{"type": "FeatureCollection", "features": [\n')

    def write(self, batch: Batch) -> None:
        geometries = shapely.to_geojson(batch.polygons)
        for geometry, class_id, area in zip(geometries.tolist(), batch.class_ids.tolist(), batch.areas.tolist()):
            feature = {
                "type": "Feature",
                "id": str(uuid.uuid4()),
                "geometry": json.loads(geometry),
                "properties": {
                    "objectType": self._objects,
                    "classification": self._classifications[class_id],
                    "measurements": {self._area_name: area * self._area_scale},
                },
            }
            self._file.write(("" if self._first else ",\n") + json.dumps(feature, ensure_ascii=False))
            self._first = False

    def close(self) -> None:
        self._file.write("\n]}\n")


def _area_measurement(georef: Georef) -> tuple[str, float]:
    """QuPath's name of the area measurement, and the factor from level-0 pixels² to its unit:
    µm² when the slide has a pixel size, else level-0 pixels²."""
    microns = georef.microns_per_pixel()
    if microns is None:
        return "Area px^2", 1.0
    level0_pixels = abs(georef.transform.determinant) if georef.transform is not None else 1.0
    return "Area µm^2", microns[0] * microns[1] / level0_pixels
