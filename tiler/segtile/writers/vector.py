"""Polygons of a mask: one polygon per 4-connected region per class, in GeoPackage, FlatGeobuf,
Shapefile or GeoJSON (chosen by the extension).

The mask is polygonised chunk by chunk and regions cut by chunk seams are joined back (see
:mod:`segtile.writers.seams`; :func:`stream_regions`). Regions are written in batches as they
complete (:class:`RegionBatches`), with fields ``class_id`` (int), ``class_name`` (str), ``area``
(float: the region's area in the units² of its map CRS, pixels² without one, computed before any
simplification or reprojection) and, when that CRS has an ellipsoid, ``area_m2`` (float: its area
on the ellipsoid in m²). Classes asked to be skipped make no polygon. Coordinates are placed as
the georeference says (:mod:`segtile.writers.placement`): through the affine transform into its
CRS (pixel coordinates, x = column and y = row, without one), through GDAL's GCP transformer into
the GCPs' CRS, through GDAL's RPC transformer into WGS 84. GeoJSON follows RFC 7946: reprojected
to WGS 84 longitude/latitude when the source has a CRS. QGIS opens them coloured by class: the
style is stored in a GeoPackage, or as ``NAME.qml`` beside other formats (see
:mod:`segtile.writers.legend`). A slide's GeoJSON is QuPath's, written by
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

from segtile.errors import PlacementError, UnknownClassError, VectorFormatError
from segtile.georef import WGS84, Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import Advance, Key, as_labels, store_chunks
from segtile.writers.legend import polygon_style_sidecars, write_polygon_style
from segtile.writers.placement import Placement
from segtile.writers.seams import Region, SeamMerger, polygonise_chunk

DRIVERS = {".gpkg": "GPKG", ".fgb": "FlatGeobuf", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON"}
GPKG_OPTIONS = {"VERSION": "1.2"}
"""GeoPackage 1.2, which GDAL before 3.7 (and the QGIS built on it, e.g. Debian 12's) writes and
reads without a warning on every open; the 1.4 pyogrio's GDAL writes adds nothing polygons use."""
FIELDS = ["class_id", "class_name", "area"]
AREA_M2 = "area_m2"  # the field of areas on the ellipsoid, after FIELDS when the map CRS has one
BATCH_SIZE = 20_000  # regions per write call


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
    placement = polygon_placement(path, georef, labels.shape)
    with destination(path, overwrite, atomic, files=polygon_sidecars(path)) as target:
        layer = _PolygonLayer(target, driver, placement, card)
        batches = RegionBatches(placement, layer.write, simplify=simplify, min_area=min_area)
        stream_regions(labels, nodata, batches.add, progress=progress)
        batches.close()
        write_polygon_style(target, target.stem, card)
    return Path(path)


def polygon_placement(path: str | PathLike, georef: Georef, shape: tuple[int, int]) -> Placement:
    """How the polygons file ``path`` places the regions of a grid of ``shape`` with ``georef``:
    a GeoJSON in WGS 84 longitude and latitude, other formats in the map CRS.

    Raises:
        PlacementError: the file cannot hold them (see :class:`Placement`).
    """
    try:
        return Placement(georef, shape, geographic=vector_driver(path) == "GeoJSON")
    except PlacementError as error:
        raise PlacementError(f"cannot write {Path(path).name}: {error}") from None


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
    """Regions ready to write: polygons in the output's map coordinates (object array), their
    class indices, their areas in the map CRS's units² (before any simplification), and their
    areas on the ellipsoid in m² (``None`` without one)."""

    polygons: np.ndarray
    class_ids: np.ndarray
    areas: np.ndarray
    areas_m2: np.ndarray | None = None


class RegionBatches:
    """Collects regions in pixel coordinates and hands them to ``write`` in batches: placed (see
    :class:`~segtile.writers.placement.Placement`), regions under ``min_area`` left out, then
    ``simplify``-ed. ``close`` writes what is left, and calls ``write`` once even when there
    was no region."""

    def __init__(self, placement: Placement, write: Callable[[Batch], None], *, simplify: float | None,
                 min_area: float | None) -> None:
        self._placement = placement
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
        polygons = np.array([polygon for polygon, _ in self._pending], dtype=object)
        class_ids = np.array([class_id for _, class_id in self._pending], dtype=np.int32)
        self._pending = []
        polygons, class_ids = self._placement.on_earth(polygons, class_ids)
        polygons, areas, areas_m2 = self._placement.place(polygons)
        if self._min_area is not None:
            keep = areas >= self._min_area
            polygons, class_ids, areas = polygons[keep], class_ids[keep], areas[keep]
            areas_m2 = areas_m2[keep] if areas_m2 is not None else None
        if self._simplify is not None:
            polygons = shapely.simplify(polygons, self._simplify, preserve_topology=True)
        self._write(Batch(polygons, class_ids, areas, areas_m2))
        self._written = True


class _PolygonLayer:
    """Appends batches of regions to the output's layer with OGR (the first batch creates it)."""

    def __init__(self, path: Path, driver: str, placement: Placement, card: ModelCard) -> None:
        self._path = path
        self._driver = driver
        self._map_crs = placement.map_crs
        self._crs = placement.output_crs
        self._fields = FIELDS + ([AREA_M2] if placement.has_area_m2 else [])
        self._classes = card.classes
        self._created = False

    def write(self, batch: Batch) -> None:
        polygons = batch.polygons
        geojson = self._driver == "GeoJSON" and self._crs is not None
        if geojson:
            polygons = _to_wgs84(polygons, self._map_crs)
        names = np.array([self._classes[i] for i in batch.class_ids], dtype=object)
        values = [batch.class_ids, names, batch.areas] + ([batch.areas_m2] if AREA_M2 in self._fields else [])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "'crs' was not provided")  # pixel coordinates
            ogr_write(
                str(self._path), shapely.to_wkb(polygons), values,
                self._fields, layer=self._path.stem, driver=self._driver, geometry_type="Polygon",
                crs=self._crs.to_wkt() if self._crs is not None else None, append=self._created,
                layer_options={"RFC7946": "YES"} if geojson and not self._created else None,
                dataset_options=GPKG_OPTIONS if self._driver == "GPKG" and not self._created else None,
            )
        self._created = True


def _to_wgs84(polygons: np.ndarray, crs: CRS) -> np.ndarray:
    """Reproject to WGS 84 longitude/latitude with GDAL, cut at the antimeridian, exterior rings
    counter-clockwise (RFC 7946)."""
    if not len(polygons):
        return polygons
    reprojected = transform_geom(crs, WGS84, [mapping(p) for p in polygons])
    return shapely.orient_polygons(np.array([shape(g) for g in reprojected], dtype=object))
