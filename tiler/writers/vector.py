"""Polygons of a mask: one polygon per 4-connected region per class, in GeoPackage, FlatGeobuf,
Shapefile or GeoJSON (chosen by the extension).

The mask is polygonised chunk by chunk and regions cut by chunk seams are joined back (see
:mod:`segtile.writers.seams`; :func:`stream_regions`). Regions are written in batches as they
complete (:class:`RegionBatches`), with fields ``class_id`` (int), ``class_name`` (str) and
``area`` (float: the region's area in the mask, in the units² of the source CRS, computed before
any simplification or reprojection). Classes asked to be skipped make no polygon. Coordinates
are the source's CRS (pixel coordinates, x = column and y = row, when it has no transform);
GeoJSON follows RFC 7946: reprojected to WGS 84 longitude/latitude when the source has a CRS.
QGIS opens them coloured by class: the style is stored in a GeoPackage, or as ``NAME.qml`` beside
other formats (see :mod:`segtile.writers.legend`). A slide's GeoJSON is QuPath's, written by
:mod:`segtile.writers.qupath` from the same regions.
"""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import dask.array as da
import numpy as np
import shapely
from pyogrio.raw import write as ogr_write
from rasterio.crs import CRS
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import Advance, Key, WriterInputError, as_labels, store_chunks
from segtile.writers.legend import polygon_style_sidecars, write_polygon_style
from segtile.writers.seams import Region, SeamMerger, polygonise_chunk

DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON"}
GPKG_OPTIONS = {"VERSION": "1.2"}
"""GeoPackage 1.2, which GDAL before 3.7 (and the QGIS built on it, e.g. Debian 12's) writes and
reads without a warning on every open; the 1.4 pyogrio's GDAL writes adds nothing polygons use."""
FIELDS = ["class_id", "class_name", "area"]
BATCH_SIZE = 20_000  # regions per write call
WGS84 = CRS.from_epsg(4326)


class VectorFormatError(WriterInputError):
    """The output's extension names no polygon format segtile writes."""


class UnknownClassError(WriterInputError):
    """A class to leave out is not one of the model card's classes."""


def vector_driver(path: str | PathLike) -> str:
    """The OGR driver for ``path``'s extension (``.gpkg``, ``.fgb``, ``.shp``, ``.geojson``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in DRIVERS:
        raise VectorFormatError(f"unknown polygon format {suffix!r} for {path}: use one of {', '.join(DRIVERS)}")
    return DRIVERS[suffix]


def polygon_sidecars(path: str | PathLike) -> list[Path]:
    """Every file :func:`write_polygons` writes besides ``path``: a Shapefile's index, attributes,
    CRS and encoding, and the QGIS style (``NAME.qml``) of every format but GeoPackage."""
    path = Path(path)
    shapefile = [".shx", ".dbf", ".prj", ".cpg"] if vector_driver(path) == "ESRI Shapefile" else []
    return [*(path.with_suffix(suffix) for suffix in shapefile), *polygon_style_sidecars(path)]


def write_polygons(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
                   nodata: int = 255, simplify: float | None = None, min_area: float | None = None,
                   skip_classes: Sequence[str] = (), overwrite: bool = False, progress: Advance | None = None,
                   atomic: bool = True) -> Path:
    """Write one polygon per 4-connected region of each class of ``labels``; return ``path``.

    Args:
        labels: dask (or numpy) array ``(H, W)`` of class indices; ``nodata`` pixels make no polygon.
        simplify: tolerance in CRS units for shapely's topology-preserving simplification of each
            polygon (off by default; neighbouring polygons are simplified independently).
        min_area: leave out regions smaller than this, in CRS units² (off by default).
        skip_classes: names of classes that make no polygon (e.g. ``("background",)``).
        progress: called with 1 after each chunk is done.
        atomic: see :func:`segtile.writers.geotiff.write_mask`.
    """
    driver = vector_driver(path)
    labels = without_classes(as_labels(labels, card, nodata), class_indices(card, skip_classes), nodata)
    with destination(path, overwrite, atomic, files=polygon_sidecars(path)) as target:
        layer = _PolygonLayer(target, driver, georef, card)
        batches = RegionBatches(georef, layer.write, simplify=simplify, min_area=min_area)
        stream_regions(labels, nodata, batches.add, progress=progress)
        batches.close()
        write_polygon_style(target, target.stem, card)
    return Path(path)


def class_indices(card: ModelCard, names: Sequence[str]) -> list[int]:
    """The label values of the classes ``names`` of ``card``.

    Raises:
        UnknownClassError: a name that is not one of the card's classes.
    """
    unknown = [name for name in names if name not in card.classes]
    if unknown:
        raise UnknownClassError(f"unknown class {unknown[0]!r} to skip: the model's classes are "
                                f"{', '.join(card.classes)}")
    return [card.classes.index(name) for name in names]


def without_classes(labels: da.Array, classes: Sequence[int], nodata: int) -> da.Array:
    """``labels`` with the pixels of ``classes`` set to ``nodata``: they make no polygon, and the
    regions of the other classes are unchanged (each class's regions are its own)."""
    if not classes:
        return labels
    return labels.map_blocks(lambda block: np.where(np.isin(block, classes), nodata, block).astype(block.dtype),
                             dtype=labels.dtype)


def stream_regions(labels: da.Array, nodata: int, add: Callable[[list[Region]], None], *,
                   progress: Advance | None = None) -> None:
    """Polygonise ``labels`` chunk by chunk, joined across seams (:class:`SeamMerger`); call
    ``add`` with the regions each chunk completes, in pixel coordinates of ``labels``."""
    merger = SeamMerger(labels.chunks)

    def collect(key: Key, chunk: np.ndarray) -> None:
        row0, col0 = key[0].start, key[1].start
        add(merger.add_chunk(row0, col0, polygonise_chunk(chunk, row0, col0, nodata)))

    store_chunks(labels, collect, progress=progress)
    if merger.remaining():
        raise RuntimeError(f"{merger.remaining()} polygon pieces were never joined")


class Batch(NamedTuple):
    """Regions ready to write: polygons in the output's coordinates (object array), their class
    indices, and their areas in the output's units² (before any simplification)."""

    polygons: np.ndarray
    class_ids: np.ndarray
    areas: np.ndarray


class RegionBatches:
    """Collects regions in pixel coordinates and hands them to ``write`` in batches: through the
    georeference's transform, regions under ``min_area`` left out, then ``simplify``-ed.
    ``close`` writes what is left, and calls ``write`` once even when there was no region."""

    def __init__(self, georef: Georef, write: Callable[[Batch], None], *, simplify: float | None,
                 min_area: float | None) -> None:
        self._transform = georef.transform
        self._write = write
        self._simplify = simplify
        self._min_area = min_area
        self._pending: list[Region] = []
        self._written = False

    def add(self, regions: list[Region]) -> None:
        self._pending.extend(regions)
        if len(self._pending) >= BATCH_SIZE:
            self._flush()

    def close(self) -> None:
        if self._pending or not self._written:
            self._flush()

    def _flush(self) -> None:
        polygons = self._to_output(np.array([polygon for polygon, _ in self._pending], dtype=object))
        class_ids = np.array([class_id for _, class_id in self._pending], dtype=np.int32)
        self._pending = []
        areas = shapely.area(polygons).astype(np.float64)
        if self._min_area is not None:
            keep = areas >= self._min_area
            polygons, class_ids, areas = polygons[keep], class_ids[keep], areas[keep]
        if self._simplify is not None:
            polygons = shapely.simplify(polygons, self._simplify, preserve_topology=True)
        self._write(Batch(polygons, class_ids, areas))
        self._written = True

    def _to_output(self, polygons: np.ndarray) -> np.ndarray:
        """Pixel coordinates -> the output's through the affine transform (none: pixels)."""
        transform = self._transform
        if transform is None or not len(polygons):
            return polygons
        a, b, c, d, e, f = transform[:6]

        def to_world(xy: np.ndarray) -> np.ndarray:
            x, y = xy[:, 0], xy[:, 1]
            return np.stack([a * x + b * y + c, d * x + e * y + f], axis=1)

        return shapely.transform(polygons, to_world)


class _PolygonLayer:
    """Appends batches of regions to the output's layer with OGR (the first batch creates it)."""

    def __init__(self, path: Path, driver: str, georef: Georef, card: ModelCard) -> None:
        self._path = path
        self._driver = driver
        self._crs = georef.crs
        self._classes = card.classes
        self._to_wgs84 = driver == "GeoJSON" and georef.crs is not None
        self._created = False

    def write(self, batch: Batch) -> None:
        polygons, crs = batch.polygons, self._crs
        if self._to_wgs84:
            polygons, crs = _to_wgs84(polygons, crs), WGS84
        names = np.array([self._classes[i] for i in batch.class_ids], dtype=object)
        creating_geojson = self._to_wgs84 and not self._created
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided")  # pixel coordinates
            ogr_write(
                str(self._path), shapely.to_wkb(polygons), [batch.class_ids, names, batch.areas],
                FIELDS, layer=self._path.stem, driver=self._driver, geometry_type="Polygon",
                crs=crs.to_wkt() if crs is not None else None, append=self._created,
                layer_options={"RFC7946": "YES"} if creating_geojson else None,
                dataset_options=GPKG_OPTIONS if self._driver == "GPKG" and not self._created else None,
            )
        self._created = True


def _to_wgs84(polygons: np.ndarray, crs: CRS) -> np.ndarray:
    """Reproject to WGS 84 longitude/latitude with GDAL, exterior rings counter-clockwise
    (RFC 7946)."""
    if not len(polygons):
        return polygons
    reprojected = transform_geom(crs, WGS84, [mapping(p) for p in polygons])
    return shapely.orient_polygons(np.array([shape(g) for g in reprojected], dtype=object))
