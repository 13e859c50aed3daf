"""Polygons found in pixel coordinates, placed where an output holds them, with their areas.

**Pixels to map coordinates** follow the georeference (:attr:`segtile.georef.Georef.placement`),
as gdalwarp and QGIS place the image: the affine transform; else GDAL's GCP transformer (the
polynomial GDAL fits to the ground control points, of the order their count allows) into the
GCPs' CRS; else GDAL's RPC transformer into WGS 84 longitude and latitude. Where straight pixel
edges become curves (through GCPs, RPCs, or a reprojection to WGS 84 for GeoJSON) they are
first split every :data:`DENSIFY` pixels, so that the polygons follow the curves.

**Where geographic coordinates end.** Some pixels have no longitude and latitude: the corners
of a geostationary view beyond the Earth's disk, pixels far outside the domain of RPCs. Which
pixels have is found once, before any work (:class:`Placement`): pixel corners sampled on a
lattice of at most :data:`LATTICE` points a side, and in the lattice cells where that changes
(and their neighbours) every pixel corner; a pixel has geographic coordinates when its four
corners have. Outputs in longitude and latitude (GeoJSON, outputs of RPC images) hold only the
part of each region that has, and every ``area_m2`` counts only that part; a note says how much
of the image is left out, and an output that would hold nothing is refused.

**Areas.** ``area`` is a region's area in its map CRS's units² (pixels² without one), before
simplification: through an affine transform, exactly its pixel count times a pixel's area, so
that per class the polygons' areas add up to the mask's. ``area_m2`` (outputs whose CRS has an
ellipsoid) is the area on that ellipsoid in m², computed as the plane area in an equal-area
projection of it: the cylindrical one for a geographic CRS, where pixel edges along parallels and
meridians stay straight lines (the area is exact, polar and whole-world rasters included),
Lambert's azimuthal one centred on the image for other CRSs. Geodesic polygon areas (pyproj's
``Geod``) join vertices by geodesics rather than by the parallels pixel edges follow, and give 0
for a polygon around the world.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pyproj
import rasterio.features
import shapely
from affine import Affine
from pyproj.crs import ProjectedCRS
from pyproj.crs.coordinate_operation import LambertAzimuthalEqualAreaConversion, LambertCylindricalEqualAreaConversion
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, TransformWarning
from rasterio.transform import GCPTransformer, RPCTransformer

from segtile.errors import PlacementError
from segtile.georef import WGS84, Georef

DENSIFY = 8.0
"""Longest pixel edge, in pixels, carried through a non-affine mapping as one straight segment."""
LATTICE = 512
"""Points a side of the lattice on which geographic coordinates are first looked for."""
POINTS_AT_ONCE = 1 << 20  # pixel corners transformed in one call while refining

Points = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class Placed(NamedTuple):
    """Polygons in an output's map coordinates (object array), their areas in the map CRS's
    units², and their areas on the ellipsoid in m² (``None`` without an ellipsoid)."""

    polygons: np.ndarray
    areas: np.ndarray
    areas_m2: np.ndarray | None


class Placement:
    """How one output places the regions of a ``shape`` ``(height, width)`` grid with ``georef``
    (see the module docstring); everything the output needs is checked when it is made.

    Args:
        geographic: the output holds WGS 84 longitudes and latitudes whenever the georeference
            has a CRS (GeoJSON, RFC 7946).

    Attributes:
        map_crs: the CRS of the polygons :meth:`place` gives (``None``: pixels or a transform's
            units without CRS).
        output_crs: the CRS the output is written in: ``map_crs``, or WGS 84 for a geographic
            output (the writer reprojects to it).
        clips: the output holds only what has geographic coordinates (:meth:`on_earth`).
        has_area_m2: :meth:`place` gives areas on the ellipsoid (the map CRS has one).
        region: the pixels that have geographic coordinates, as a (multi)polygon in pixel
            coordinates; ``None`` when every pixel has, or the map CRS has no ellipsoid.
        left_out: the share of the image's area without geographic coordinates (0 to 1).

    Raises:
        PlacementError: a geographic output (or an output of an image placed by RPCs) of which no
            pixel has geographic coordinates.
    """

    def __init__(self, georef: Georef, shape: tuple[int, int], *, geographic: bool = False) -> None:
        self.georef = georef
        self.map_crs = georef.map_crs
        self.output_crs = WGS84 if geographic and self.map_crs is not None else self.map_crs
        self._reprojects = self.output_crs != self.map_crs
        self._curved = georef.placement in ("gcps", "rpcs") or self._reprojects
        geodetic = _geodetic_crs(self.map_crs)
        if geodetic is None and self._reprojects:
            raise PlacementError("its CRS has no geographic coordinates (longitude and latitude), which GeoJSON "
                                 "holds: write .gpkg, .fgb or .shp (in the image's CRS) instead")
        self.clips = geodetic is not None and (geographic or georef.placement == "rpcs")
        self.has_area_m2 = geodetic is not None
        self.region: shapely.Geometry | None = None
        self._equal_area: Points | None = None
        self.left_out = 0.0
        if geodetic is not None:
            lattice = _Lattice(_chain(self._map_points, _transformer(self.map_crs, geodetic)), *shape)
            exact = georef.placement == "transform" and self.map_crs.is_geographic
            self.region = _between_the_poles(georef.transform, shape) if exact else lattice.region()
            self.left_out = 0.0 if self.region is None else 1 - self.region.area / (shape[0] * shape[1])
            if self.region is None or not self.region.is_empty:
                centre = lattice.centre(self.map_crs.is_geographic)
                self._equal_area = _transformer(self.map_crs, _equal_area_crs(geodetic, centre, self.map_crs))
            elif self.clips:
                raise PlacementError("no pixel of the image has geographic coordinates (longitude and latitude) in "
                                     "its CRS: nothing could be written in them")

    def on_earth(self, polygons: np.ndarray, class_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The parts of ``polygons`` (pixel coordinates) that have geographic coordinates, one
        polygon per part, with their classes: what an output that :attr:`clips` holds."""
        if not self.clips or self.region is None:
            return polygons, class_ids
        clipped = _clipped(polygons, self.region)
        parts, index = shapely.get_parts(clipped, return_index=True)
        keep = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
        return parts[keep], class_ids[index[keep]]

    def place(self, polygons: np.ndarray) -> Placed:
        """``polygons`` (pixel coordinates, the parts :meth:`on_earth` keeps when the output
        clips) in map coordinates, with their areas."""
        mapped = self._to_map(shapely.segmentize(polygons, DENSIFY) if self._curved and len(polygons) else polygons)
        transform = self.georef.transform
        if self.georef.placement == "transform":
            areas = shapely.area(polygons) * abs(transform.determinant)
        else:
            areas = shapely.area(mapped)
        return Placed(mapped, np.asarray(areas, dtype=np.float64), self._areas_m2(polygons))

    def _areas_m2(self, polygons: np.ndarray) -> np.ndarray | None:
        """The area on the ellipsoid of the part of each polygon with geographic coordinates."""
        if not self.has_area_m2:
            return None
        if self._equal_area is None or not len(polygons):  # no pixel has geographic coordinates
            return np.zeros(len(polygons), dtype=np.float64)
        on_earth = polygons if self.clips or self.region is None else _clipped(polygons, self.region)
        mapped = self._to_map(shapely.segmentize(on_earth, DENSIFY))
        areas = shapely.area(shapely.transform(mapped, _pairs(self._equal_area))).astype(np.float64)
        if not np.isfinite(areas).all():
            raise RuntimeError("a polygon with geographic coordinates has none in an equal-area projection")
        return areas

    def _to_map(self, polygons: np.ndarray) -> np.ndarray:
        """Pixel coordinates -> map coordinates, vertex by vertex (none: pixels)."""
        if self.georef.placement is None or not len(polygons):
            return polygons
        return shapely.transform(polygons, _pairs(self._map_points))

    def _map_points(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (x = column, y = row, from the top-left corner) -> map coordinates;
        infinite where GDAL's transformer fails."""
        georef = self.georef
        placement = georef.placement
        if placement == "transform":
            return georef.transform * (x, y)
        if placement is None:
            return x, y
        make = (lambda: GCPTransformer(list(georef.gcps))) if placement == "gcps" else (
            lambda: RPCTransformer(georef.rpcs))
        with make() as transformer, warnings.catch_warnings():
            warnings.simplefilter("ignore", TransformWarning)  # points outside the RPCs' domain: infinite
            xs, ys = transformer.xy(y, x, offset="ul")
        return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def _pairs(points: Points) -> Callable[[np.ndarray], np.ndarray]:
    """``points`` as shapely.transform takes it: an ``(N, 2)`` array to an ``(N, 2)`` array."""
    return lambda xy: np.column_stack(points(xy[:, 0], xy[:, 1]))


def _chain(first: Points, then: Points) -> Points:
    def both(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return then(*first(x, y))

    return both


def _geodetic_crs(crs: CRS | None) -> pyproj.CRS | None:
    """The geographic CRS of ``crs``'s datum (longitude, latitude); ``None`` when it has none
    (no CRS, an engineering CRS)."""
    if crs is None:
        return None
    return pyproj.CRS.from_user_input(crs.to_wkt()).geodetic_crs


def _transformer(source: CRS | pyproj.CRS, target: pyproj.CRS) -> Points:
    """Coordinates of ``source`` -> ``target`` (x before y: longitude first), infinite where
    they have none."""
    # the horizontal part of a compound CRS (a vertical datum beside it): points come in 2-D
    horizontal = pyproj.CRS.from_user_input(source.to_wkt() if isinstance(source, CRS) else source).to_2d()
    transformer = pyproj.Transformer.from_crs(horizontal, target, always_xy=True)

    def transform(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(invalid="ignore"):
            xs, ys = transformer.transform(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                                           errcheck=False)
        return np.asarray(xs), np.asarray(ys)

    return transform


def _equal_area_crs(geodetic: pyproj.CRS, centre: tuple[float, float], map_crs: CRS) -> pyproj.CRS:
    """An equal-area projection of ``geodetic``'s ellipsoid (see the module docstring) centred on
    ``centre`` (longitude, latitude): cylindrical for a geographic ``map_crs``, so that no
    longitude of an image (never wider than 360°) is more than 180° from the centre line;
    azimuthal for other CRSs."""
    longitude, latitude = centre
    if map_crs.is_geographic:
        conversion = LambertCylindricalEqualAreaConversion(latitude_first_parallel=0,
                                                           longitude_natural_origin=longitude)
    else:
        conversion = LambertAzimuthalEqualAreaConversion(latitude_natural_origin=latitude,
                                                         longitude_natural_origin=longitude)
    return ProjectedCRS(conversion=conversion, geodetic_crs=geodetic)


def _clipped(polygons: np.ndarray, region: shapely.Geometry) -> np.ndarray:
    """``polygons`` cut to ``region`` (empty where they lie outside); those inside it as they are."""
    shapely.prepare(region)
    inside = shapely.contains(region, polygons)
    clipped = polygons.copy()
    crossing = ~inside
    clipped[crossing] = shapely.intersection(polygons[crossing], region)
    return clipped


class _Lattice:
    """Which pixels of a ``height`` × ``width`` grid have geographic coordinates (``to_lonlat``
    finite at their four corners): see the module docstring."""

    def __init__(self, to_lonlat: Points, height: int, width: int) -> None:
        self._to_lonlat = to_lonlat
        self._step = max(1, math.ceil(max(height, width) / LATTICE))
        self._cols = _ticks(width, self._step)
        self._rows = _ticks(height, self._step)
        x, y = np.meshgrid(self._cols.astype(np.float64), self._rows.astype(np.float64))
        self._lon, self._lat = to_lonlat(x.ravel(), y.ravel())
        self._valid = _on_earth(self._lon, self._lat).reshape(x.shape)

    def centre(self, geographic: bool) -> tuple[float, float]:
        """Longitude and latitude of the image's middle. In a ``geographic`` CRS, the middle of
        its longitudes and latitudes (as the CRS gives them: never more than 180° from the
        middle). Otherwise the same when the image spans less than half the globe in longitude,
        else the lattice point nearest the middle of the grid (a longitude range across the
        antimeridian has its middle on the other side of the Earth)."""
        valid = self._valid.ravel()
        lon, lat = self._lon[valid], self._lat[valid]
        if geographic or lon.max() - lon.min() < 180:
            return float(lon.min() + lon.max()) / 2, float(lat.min() + lat.max()) / 2
        rows, cols = np.meshgrid(self._rows, self._cols, indexing="ij")
        distance = np.hypot(rows.ravel() - self._rows[-1] / 2, cols.ravel() - self._cols[-1] / 2)[valid]
        nearest = int(np.argmin(distance))
        return float(lon[nearest]), float(lat[nearest])

    def region(self) -> shapely.Geometry | None:
        """The pixels that have geographic coordinates, as a polygon in pixel coordinates (maybe
        empty); ``None`` when every one has."""
        valid = self._valid
        if valid.all():
            return None
        corners = (valid[:-1, :-1], valid[:-1, 1:], valid[1:, :-1], valid[1:, 1:])
        whole = np.logical_and.reduce(corners)
        if self._step == 1:
            return _cells_polygon(whole, self._cols, self._rows)
        changing = _grown(whole != np.logical_or.reduce(corners))
        coarse = _cells_polygon(whole & ~changing, self._cols, self._rows)
        return shapely.union_all(np.concatenate([[coarse], *self._refined(np.argwhere(changing))]))

    def _refined(self, cells: np.ndarray) -> list[np.ndarray]:
        """The pixels with geographic coordinates in the lattice cells ``cells`` (row, column),
        as polygons: the cells' pixel corners are transformed a group of cells at a time, and
        each group's pixels are polygonised at once, its cells side by side one pixel apart."""
        pieces = []
        slot = self._step + 1
        per_group = max(1, POINTS_AT_ONCE // slot ** 2)
        for start in range(0, len(cells), per_group):
            group = cells[start:start + per_group]
            left, top = self._cols[group[:, 1]], self._rows[group[:, 0]]
            widths, heights = self._cols[group[:, 1] + 1] - left, self._rows[group[:, 0] + 1] - top
            meshes = [np.meshgrid(np.arange(x, x + w + 1.0), np.arange(y, y + h + 1.0))
                      for x, y, w, h in zip(left, top, widths, heights)]
            lon, lat = self._to_lonlat(np.concatenate([mx.ravel() for mx, _ in meshes]),
                                       np.concatenate([my.ravel() for _, my in meshes]))
            corners = np.split(_on_earth(lon, lat), np.cumsum([mx.size for mx, _ in meshes])[:-1])
            packed = np.zeros((self._step, len(group) * slot), dtype=bool)
            for k, (valid, (mx, _)) in enumerate(zip(corners, meshes)):
                valid = valid.reshape(mx.shape)
                pixels = valid[:-1, :-1] & valid[:-1, 1:] & valid[1:, :-1] & valid[1:, 1:]
                packed[:pixels.shape[0], k * slot:k * slot + pixels.shape[1]] = pixels
            polygons = _shapes(packed)
            if len(polygons):
                cell = (shapely.bounds(polygons)[:, 0] // slot).astype(int)
                pieces.append(_translated(polygons, left[cell] - cell * slot, top[cell]))
        return pieces


def _on_earth(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Where a longitude and latitude (degrees) are a place on the Earth: finite, and no latitude
    beyond a pole (a CRS declared geographic over coordinates that are not passes them through)."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(lon) & np.isfinite(lat) & (np.abs(lat) <= 90)


def _between_the_poles(transform: Affine, shape: tuple[int, int]) -> shapely.Geometry | None:
    """The part of a ``shape`` grid placed by ``transform`` in a geographic CRS that lies between
    the poles, in pixel coordinates (exact: an affine transform maps the band of latitudes onto a
    band of pixels); ``None`` when that is the whole grid. Global grids whose pixel centres lie on
    the poles reach half a pixel beyond them."""
    height, width = shape
    grid = shapely.box(0, 0, width, height)
    corners = np.array(grid.exterior.coords)
    longitudes = (transform * corners.T)[0]
    reach = float(np.abs(longitudes).max()) + 360
    band = shapely.box(-reach, -90, reach, 90)
    in_pixels = shapely.transform(band, _pairs(lambda x, y: ~transform * (x, y)))
    inside = shapely.intersection(grid, in_pixels)
    return None if shapely.equals(inside, grid) else inside


def _ticks(size: int, step: int) -> np.ndarray:
    """0, step, 2·step, … and ``size`` itself: the lattice's lines along one axis."""
    return np.unique(np.append(np.arange(0, size, step), size))


def _grown(cells: np.ndarray) -> np.ndarray:
    """``cells`` and their eight neighbours."""
    padded = np.pad(cells, 1)
    height, width = cells.shape
    return np.logical_or.reduce([padded[i:i + height, j:j + width] for i in range(3) for j in range(3)])


def _cells_polygon(cells: np.ndarray, cols: np.ndarray, rows: np.ndarray) -> shapely.Geometry:
    """The union of the true ``cells`` of a grid whose lines are at ``cols`` and ``rows`` (pixel
    coordinates), as one (multi)polygon."""
    polygons = _shapes(cells)
    if not len(polygons):
        return shapely.Polygon()

    def to_pixels(indices: np.ndarray) -> np.ndarray:
        return np.column_stack([np.interp(indices[:, 0], np.arange(len(cols)), cols),
                                np.interp(indices[:, 1], np.arange(len(rows)), rows)])

    return shapely.union_all(shapely.transform(polygons, to_pixels))


def _shapes(cells: np.ndarray) -> np.ndarray:
    """The 4-connected areas of the true ``cells``, as polygons in cell coordinates."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # cell indices: the identity
        shapes = rasterio.features.shapes(cells.astype(np.uint8), mask=cells, connectivity=4,
                                          transform=Affine.identity())
        return np.array([shapely.geometry.shape(geometry) for geometry, _ in shapes], dtype=object)


def _translated(polygons: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Each of ``polygons`` moved by its own ``(dx, dy)``."""
    coordinates, index = shapely.get_coordinates(polygons, return_index=True)
    return shapely.set_coordinates(polygons.copy(), coordinates + np.column_stack([dx, dy])[index])
