"""Labels on an image's pixel grid, read window by window: a label raster, or polygons.

Training (``segtile train``) and evaluation (``segtile eval``) need, for any window of an image,
the class index of each pixel, 255 where there is none. Two kinds of file give them:

* a **label raster** (any GDAL raster; band 1 holds class indices): read directly when it lies
  on the image's grid, else reprojected onto that grid with nearest-neighbour resampling by a
  GDAL ``WarpedVRT``, one window at a time. Its nodata (or mask) and the value 255 mean
  "unlabelled". A raster without any georeference is taken to be on the image's pixel grid when
  it has the image's size. Finding which parts hold labels (:meth:`LabelSource.coverage`) reads
  it once, window by window.
* **polygons** (GeoPackage, GeoJSON, QuPath GeoJSON, Shapefile, FlatGeobuf: anything OGR reads),
  one class name per feature, rasterised per window with ``rasterio.features.rasterize`` (a pixel
  is labelled when its centre is inside a polygon; where polygons overlap, the later feature in
  the file wins). Uncovered pixels are 255. Polygons are in the image's CRS, or reprojected from
  theirs; for an image without a CRS (a slide, a plain TIFF) their coordinates are level-0
  pixel coordinates (x = column, y = row), as QuPath writes them. The geometries are held in
  memory (vertices only, indexed by an STR-tree); the raster they cover never is.

:func:`open_labels` tells the two apart (OGR opens polygons; everything else is a raster).
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import struct
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pyogrio
import rasterio
import rasterio.features
import rasterio.warp
import shapely
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from segtile.errors import LabelError, one_line, refuse_sequential, root_cause_line
from segtile.sources.base import Source
from segtile.sources.files import check_tiff_file_complete, is_tiff
from segtile.sources.handles import PerThreadHandles

IGNORE = 255
"""The label of a pixel without a class: never counted by the loss or the metrics."""

MAX_CLASSES = IGNORE
"""Class indices are 0 ... 254 (labels are uint8, 255 is reserved)."""

CLASS_FIELDS = ("class_name", "classification", "class", "label")
"""The fields searched, in this order, for a feature's class when none is named: ``class_name``
(segtile's own polygons), ``classification`` (QuPath), then the common ``class`` and ``label``."""


class LabelSource(ABC):
    """Class indices on an image's pixel grid, read one window at a time.

    Attributes:
        path: the file read.
        shape: ``(height, width)``, the image's.
        classes: the class names; label ``i`` is ``classes[i]``.
    """

    path: str
    shape: tuple[int, int]
    classes: tuple[str, ...]

    @abstractmethod
    def read(self, window: Window) -> np.ndarray:
        """Labels of ``window`` (inside the image) as uint8 ``(h, w)``: class indices, 255 where none."""

    def coverage(self, block: int) -> np.ndarray:
        """Which ``block`` x ``block`` cells of the grid may hold labels: bool
        ``(ceil(height / block), ceil(width / block))``. A cell marked True may still turn out
        unlabelled; one marked False holds no label. Lets a sampler skip what was never
        annotated without reading it."""
        return np.ones(cells(self.shape, block), dtype=bool)

    @abstractmethod
    def close(self) -> None:
        """Release file handles (safe to call twice)."""

    def __enter__(self) -> LabelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_labels(path: str | os.PathLike | np.ndarray, like: Source, classes: Sequence[str],
                class_field: str | None = None) -> LabelSource:
    """Open ``path`` as labels on the grid of the image ``like``.

    Args:
        path: a label raster or a polygon file (see the module's docstring), or an array
            ``(H, W)`` of class indices of the image's size.
        like: the image the labels belong to (its size and georeference define the grid).
        classes: the class names, in index order (at most 255).
        class_field: for polygons, the field holding each feature's class name (default: the
            first of :data:`CLASS_FIELDS` the file has). Ignored for rasters.

    Raises:
        LabelError: the file is missing or unreadable, cannot be placed on the image's grid,
            names classes not in ``classes``, or has no class field.
    """
    classes = tuple(classes)
    if not 1 <= len(classes) <= MAX_CLASSES:
        raise LabelError(f"need between 1 and {MAX_CLASSES} classes, got {len(classes)}")
    if isinstance(path, np.ndarray):
        return ArrayLabels(path, like, classes)
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LabelError(f"labels not found: {path}")
    refuse_sequential(path, "labels", LabelError)
    if _is_vector(path):  # a file, or a folder OGR reads (a FileGDB, a folder of shapefiles)
        return PolygonLabels(path, like, classes, class_field)
    if os.path.isdir(path):
        raise LabelError(f"labels path is a directory, not a raster or polygon file: {path}")
    return RasterLabels(path, like, classes)


def _is_vector(path: str) -> bool:
    """Whether OGR reads ``path`` as a layer of features (else it is taken for a raster)."""
    try:
        return len(pyogrio.list_layers(path)) > 0
    except Exception:  # pyogrio's DataSourceError and friends: not a vector file
        return False


def cells(shape: tuple[int, int], block: int) -> tuple[int, int]:
    """How many rows and columns of ``block`` x ``block`` cells cover a grid of ``shape``."""
    return math.ceil(shape[0] / block), math.ceil(shape[1] / block)


def cell_window(cell: tuple[int, int], block: int, shape: tuple[int, int]) -> Window:
    """The window of cell ``(row, column)`` of a grid of ``shape`` cut in ``block`` x ``block``
    cells; the cells of the last row and column are cut short at the grid's edge."""
    row, col = cell[0] * block, cell[1] * block
    return Window(col, row, min(block, shape[1] - col), min(block, shape[0] - row))


def _grid_transform(like: Source) -> Affine:
    """The image's pixel -> world transform; the identity (pixel coordinates) when it has none."""
    return like.georef.transform or Affine.identity()


class RasterLabels(LabelSource):
    """Band 1 of a raster, on the image's grid or warped onto it (nearest neighbour)."""

    def __init__(self, path: str, like: Source, classes: tuple[str, ...]) -> None:
        self.path, self.classes = path, classes
        self.shape = (like.height, like.width)
        self._step = (1.0, 1.0)  # pixels of the grid opened on per pixel of the grid read on (x, y)
        if is_tiff(path):  # a truncated TIFF loses tiles, or its georeference, without an error from GDAL
            check_tiff_file_complete(path)
        with _open_raster(path) as dataset:
            warp = _warp_options(dataset, like)
        self._readers: PerThreadHandles[_WarpedReader] = PerThreadHandles(
            functools.partial(_WarpedReader, path, warp))

    def read(self, window: Window) -> np.ndarray:
        values, valid = self._read_band(window)
        return _as_class_indices(values, valid, len(self.classes), self.path, window)

    def on_grid(self, grid: Source) -> RasterLabels:
        """These labels on ``grid``, another grid over the same image (a preview's, coarser):
        each pixel the nearest of the raster on the grid it was opened on, read decimated by GDAL
        (from the raster's overviews when it has them)."""
        placed = copy.copy(self)
        placed.shape = (grid.height, grid.width)
        placed._step = (self._step[0] * self.shape[1] / grid.width, self._step[1] * self.shape[0] / grid.height)
        return placed

    def _read_band(self, window: Window) -> tuple[np.ndarray, np.ndarray]:
        """Band 1's values over ``window`` and where they are valid (not nodata)."""
        reader = self._readers.get()
        step_x, step_y = self._step
        read = {"window": Window(window.col_off * step_x, window.row_off * step_y, window.width * step_x,
                                 window.height * step_y),
                "out_shape": (int(window.height), int(window.width)), "resampling": Resampling.nearest}
        try:
            values = reader.handle.read(1, **read)
            valid = reader.handle.read_masks(1, **read) > 0
        except RasterioError as exc:
            raise LabelError(f"cannot read {self.path}: {root_cause_line(exc)}") from None
        return values, valid

    def coverage(self, block: int) -> np.ndarray:
        """Cells holding a labelled pixel, from one pass over the raster, cell by cell (which
        also checks every value before training starts)."""
        grid = cells(self.shape, block)
        covered = np.zeros(grid, dtype=bool)
        for cell in np.ndindex(grid):
            covered[cell] = (self.read(cell_window(cell, block, self.shape)) != IGNORE).any()
        return covered

    def close(self) -> None:
        self._readers.close()


class _WarpedReader:
    """A raster opened for reading, through a ``WarpedVRT`` when ``warp`` asks for one; one per
    thread (GDAL datasets must not be shared), ``key`` being :class:`PerThreadHandles`'."""

    def __init__(self, path: str, warp: dict | None, key: object = None) -> None:
        self.dataset = _open_raster(path)
        self.handle = WarpedVRT(self.dataset, **warp) if warp is not None else self.dataset

    def close(self) -> None:
        if self.handle is not self.dataset:
            self.handle.close()
        self.dataset.close()


def _open_raster(path: str) -> rasterio.io.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioError as exc:
        raise LabelError(f"cannot read labels {path}: not a raster or polygon file, or a truncated or damaged one "
                         f"({root_cause_line(exc)})") from None


def _warp_options(dataset: rasterio.io.DatasetReader, like: Source) -> dict | None:
    """``None`` when the raster lies on the image's grid, else the ``WarpedVRT`` options that
    put it there.

    Raises:
        LabelError: the raster and the image cannot be related (one has a CRS, the other none,
            and their grids differ).
    """
    path = dataset.name
    height, width = like.height, like.width
    image_crs, image_transform = like.georef.crs, like.georef.transform
    label_transform = None if dataset.transform.is_identity else dataset.transform
    same_size = dataset.shape == (height, width)
    if label_transform is None and dataset.crs is None:
        if same_size:
            return None  # a plain raster of the image's size: its pixels are the image's
        raise LabelError(f"{path}: labels of {dataset.width}x{dataset.height} px without georeference "
                         f"cannot be placed on the image of {width}x{height} px")
    _check_not_on_control_points(like, path)
    if image_transform is None:
        raise LabelError(f"{path}: the labels are georeferenced but the image is not: "
                         "give labels of the image's size without georeference")
    if same_size and _same_crs(dataset.crs, image_crs) and label_transform.almost_equals(image_transform):
        return None
    if dataset.crs is None or image_crs is None:
        raise LabelError(f"{path}: the labels are not on the image's grid and "
                         f"{'they' if dataset.crs is None else 'the image'} have no CRS to reproject with")
    nodata = dataset.nodata if dataset.nodata is not None else IGNORE
    return {"crs": image_crs, "transform": image_transform, "width": width, "height": height,
            "resampling": Resampling.nearest, "nodata": nodata}


def _check_not_on_control_points(like: Source, path: str) -> None:
    """Raise :class:`LabelError` when the image is placed by ground control points or RPCs:
    map coordinates are not taken back to its pixels (they would be read as pixels)."""
    placement = like.georef.placement
    if placement in ("gcps", "rpcs"):
        by = "ground control points" if placement == "gcps" else "RPCs"
        raise LabelError(f"{path}: it is in map coordinates and the image is placed by {by}, which segtile does not "
                         "take back to pixels: give it in the image's pixel coordinates (no CRS), or warp the image "
                         "first (gdalwarp)")


def _same_crs(a: CRS | None, b: CRS | None) -> bool:
    return a == b or a is None or b is None


def _as_class_indices(values: np.ndarray, valid: np.ndarray, classes: int, path: str,
                      window: Window) -> np.ndarray:
    """Raster values -> uint8 class indices, 255 where invalid or 255.

    Raises:
        LabelError: a valid value is not a class index (not a whole number in 0 ... classes - 1).
    """
    labelled = valid & (values != IGNORE)
    bad = labelled & ~((values >= 0) & (values < classes) & (values == np.round(values)))
    if bad.any():
        value = values[bad][0]
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise LabelError(
            f"{path}: value {value:g} (row {int(window.row_off) + row}, column {int(window.col_off) + col}) "
            f"is not a class index 0-{classes - 1}; 255 and nodata mean unlabelled"
        )
    out = np.full(values.shape, IGNORE, dtype=np.uint8)
    out[labelled] = values[labelled].astype(np.uint8)
    return out


class ArrayLabels(LabelSource):
    """An array ``(H, W)`` of class indices (255: unlabelled) on the image's pixel grid."""

    def __init__(self, array: np.ndarray, like: Source, classes: tuple[str, ...]) -> None:
        self.path, self.classes = "label array", classes
        self.shape = (like.height, like.width)
        if array.shape != self.shape:
            raise LabelError(f"a label array of shape {array.shape} does not fit the image of {self.shape}")
        self._array = array

    def read(self, window: Window) -> np.ndarray:
        values = self._array[window.toslices()]
        return _as_class_indices(values, np.ones(values.shape, dtype=bool), len(self.classes), self.path, window)

    def close(self) -> None:
        """Nothing to release."""


class PolygonLabels(LabelSource):
    """Polygons with a class name each, rasterised onto the image's grid window by window.

    Attributes (beside the :class:`LabelSource` ones):
        class_field: the field the class names came from.
        unclassified: how many features had no class (they label nothing).
    """

    def __init__(self, path: str, like: Source, classes: tuple[str, ...], class_field: str | None = None) -> None:
        self.path, self.classes = path, classes
        self.shape = (like.height, like.width)
        self._transform = _grid_transform(like)
        info = _layer_info(path)
        self.class_field = _class_field(path, list(info["fields"]), class_field)
        geometries, (names,) = _read_features(path, info, [self.class_field])
        names = np.array([_class_name(value) for value in names], dtype=object)
        keep = (names != None) & ~shapely.is_missing(geometries)  # noqa: E711 (element-wise)
        self.unclassified = int((~keep).sum())
        self._place(geometries[keep], _class_indices(path, self.class_field, names[keep], classes), info, like)

    def on_grid(self, grid: Source) -> PolygonLabels:
        """These polygons on ``grid``, another grid over the same image (a preview's, coarser);
        nothing is read again."""
        placed = copy.copy(self)
        placed.shape = (grid.height, grid.width)
        placed._transform = _grid_transform(grid)
        return placed

    def _place(self, geometries: np.ndarray, values: np.ndarray, info: dict, like: Source) -> None:
        """Keep ``geometries`` (in the image's CRS) and their label ``values``, indexed."""
        _check_polygonal(self.path, geometries)
        self._values = values
        self._geometries = _to_image_crs(geometries, info.get("crs"), like, self.path)
        self._tree = shapely.STRtree(self._geometries)

    def read(self, window: Window) -> np.ndarray:
        height, width = int(window.height), int(window.width)
        transform = window_transform(window, self._transform)
        footprint = shapely.Polygon([transform * corner for corner in
                                     ((0, 0), (width, 0), (width, height), (0, height))])
        hits = np.sort(self._tree.query(footprint, predicate="intersects"))  # file order: later wins
        if not len(hits):
            return np.full((height, width), IGNORE, dtype=np.uint8)
        shapes = zip(self._geometries[hits], self._values[hits].tolist())
        return rasterio.features.rasterize(shapes, out_shape=(height, width), transform=transform,
                                           fill=IGNORE, dtype="uint8")

    def coverage(self, block: int) -> np.ndarray:
        """Cells touched by any polygon (rasterised at the cell size, every touched cell kept)."""
        grid = cells(self.shape, block)
        if not len(self._geometries):
            return np.zeros(grid, dtype=bool)
        touched = rasterio.features.rasterize(((g, 1) for g in self._geometries), out_shape=grid,
                                              transform=self._transform * Affine.scale(block),
                                              fill=0, all_touched=True, dtype="uint8")
        return touched.astype(bool)

    def close(self) -> None:
        """Nothing to release: the polygons were read into memory when opened."""


AREA = ("area",)
"""The one class of an area of interest: a pixel inside it is labelled 0, one outside 255."""


def open_area(path: str | os.PathLike, like: Source) -> AreaSource:
    """An area of interest on the grid of the image ``like``: polygons (every feature, whatever
    its fields) or a raster (its valid non-zero pixels). :meth:`LabelSource.read` gives 0 inside
    and 255 outside.

    Raises:
        LabelError: the file is missing, unreadable, or cannot be placed on the image's grid.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise LabelError(f"area of interest not found: {path}")
    refuse_sequential(path, "area of interest", LabelError)
    path = os.path.abspath(path)  # the same file for Dask workers in another working folder
    if _is_vector(path):
        return AreaPolygons(path, like)
    if os.path.isdir(path):
        raise LabelError(f"area of interest is a directory, not a raster or polygon file: {path}")
    return AreaRaster(path, like, AREA)


class AreaRaster(RasterLabels):
    """A raster mask of an area of interest: its valid pixels other than 0 are inside."""

    def read(self, window: Window) -> np.ndarray:
        values, valid = self._read_band(window)
        return np.where(valid & (values != 0), 0, IGNORE).astype(np.uint8)


class AreaPolygons(PolygonLabels):
    """Polygons of an area of interest: every feature is inside, whatever its fields."""

    def __init__(self, path: str, like: Source) -> None:
        self.path, self.classes, self.class_field, self.unclassified = path, AREA, None, 0
        self.shape = (like.height, like.width)
        self._transform = _grid_transform(like)
        info = _layer_info(path)
        geometries, _ = _read_features(path, info, [])
        geometries = geometries[~shapely.is_missing(geometries)]
        self._place(geometries, np.zeros(len(geometries), dtype=np.int64), info, like)


AreaSource = AreaRaster | AreaPolygons
"""An area of interest, as :func:`open_area` opens it."""


_READ_ERRORS = (pyogrio.errors.DataSourceError, pyogrio.errors.DataLayerError)  # FeatureError is one


def _layer_info(path: str) -> dict:
    """pyogrio's description of the polygon file's first layer (fields, CRS, feature count)."""
    try:
        return pyogrio.read_info(path)
    except _READ_ERRORS as exc:
        raise LabelError(f"cannot read polygons {path}: {one_line(exc)}") from None


def _read_features(path: str, info: dict, columns: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """The geometries (``None`` where a feature has none) and the ``columns`` of the features of
    ``path``, whose layer is described by ``info``.

    Raises:
        LabelError: the file cannot be read, or was cut short: a shapefile shorter than its
            header says, or fewer features than the layer declares (OGR reads what is left of a
            truncated FlatGeobuf or shapefile without an error: a wrong count, never a word).
    """
    _check_shapefile_complete(path)
    try:
        _, _, wkb, fields = pyogrio.raw.read(path, columns=columns)
    except _READ_ERRORS as exc:
        raise LabelError(f"cannot read polygons {path}: {one_line(exc)} (truncated or damaged?)") from None
    declared = info.get("features", -1)
    if len(wkb) < declared:  # -1 when the format cannot say without reading
        raise LabelError(f"{path}: {len(wkb)} of the {declared} features it declares could be read: it is truncated "
                         "or damaged")
    return shapely.from_wkb(wkb), fields


_SHAPEFILE_CODE = 9994  # the first four bytes of a .shp or .shx, big-endian


def _check_shapefile_complete(path: str) -> None:
    """Raise :class:`LabelError` when the ``.shp`` or ``.shx`` of a shapefile is shorter than its
    header says (its length in 16-bit words at byte 24): the features past the cut would be read
    without geometry, without a word from OGR."""
    stem, suffix = os.path.splitext(path)
    if suffix.lower() != ".shp":
        return
    index = stem + (".SHX" if suffix.isupper() else ".shx")
    for part in (path, index):
        if not os.path.isfile(part):
            continue
        with open(part, "rb") as file:
            header = file.read(28)
        if len(header) < 28 or struct.unpack(">i", header[:4])[0] != _SHAPEFILE_CODE:
            continue  # no shapefile header: OGR says what is wrong with it
        declared, size = struct.unpack(">i", header[24:28])[0] * 2, os.path.getsize(part)
        if size < declared:
            raise LabelError(f"{part} is truncated: its header says {declared} bytes but the file has {size}")


def _class_field(path: str, fields: list[str], wanted: str | None) -> str:
    if wanted is not None:
        if wanted not in fields:
            raise LabelError(f"{path}: no field {wanted!r} (fields: {', '.join(fields) or 'none'})")
        return wanted
    by_lower = {field.lower(): field for field in fields}
    for candidate in CLASS_FIELDS:
        if candidate in by_lower:
            return by_lower[candidate]
    raise LabelError(f"{path}: no class field among {', '.join(CLASS_FIELDS)} "
                     f"(fields: {', '.join(fields) or 'none'}): name one with --class-field")


def _class_name(value: object) -> str | None:
    """A feature's class name: the text itself, or the ``name`` of a QuPath ``classification``
    object (which OGR hands over as JSON text); ``None`` when the feature has no class."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    if text.startswith("{"):
        try:
            name = json.loads(text).get("name")
        except (json.JSONDecodeError, AttributeError):
            return text
        return None if name is None else str(name)
    return text or None


def _class_indices(path: str, field: str, names: np.ndarray, classes: tuple[str, ...]) -> np.ndarray:
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted({name for name in names if name not in index})
    if unknown:
        raise LabelError(f"{path}: class name(s) {', '.join(repr(n) for n in unknown)} in field {field!r} "
                         f"are not among the classes {', '.join(classes)}")
    return np.array([index[name] for name in names], dtype=np.int64)


def _check_polygonal(path: str, geometries: np.ndarray) -> None:
    kinds = set(shapely.get_type_id(geometries).tolist()) - {
        shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON}
    if kinds:
        names = sorted(shapely.GeometryType(kind).name.lower() for kind in kinds)
        raise LabelError(f"{path}: labels must be polygons, found {', '.join(names)} geometries")


def _to_image_crs(geometries: np.ndarray, crs: str | None, like: Source, path: str) -> np.ndarray:
    """``geometries`` in the image's CRS: reprojected by GDAL when the file names another one;
    as they are when the image has no CRS (pixel or unknown map coordinates) or the file none.

    Raises:
        LabelError: coordinates that cannot be in the file's CRS (longitudes and latitudes out
            of range: typically a GeoJSON without a ``crs`` member, which is read as WGS 84, whose
            coordinates are in another CRS), or that GDAL cannot reproject.
    """
    if crs is not None:
        _check_not_on_control_points(like, path)
    image_crs = like.georef.crs
    if image_crs is None or crs is None:
        return geometries
    file_crs = CRS.from_user_input(crs)
    if file_crs == image_crs:
        return geometries
    left, bottom, right, top = shapely.total_bounds(geometries)  # NaN when there is no coordinate at all
    in_range = -180 <= left <= right <= 360 and -90 <= bottom <= top <= 90
    if file_crs.is_geographic and not np.isnan(left) and not in_range:
        raise LabelError(f"{path}: coordinates x {left:g} to {right:g}, y {bottom:g} to {top:g} are no longitudes and "
                         f"latitudes of its CRS ({file_crs.to_string()}; a GeoJSON without a \"crs\" member is "
                         "WGS 84): save it with the CRS its coordinates are in")

    def reproject(coords: np.ndarray) -> np.ndarray:
        xs, ys = rasterio.warp.transform(crs, image_crs, coords[:, 0], coords[:, 1])
        return np.column_stack([xs, ys])

    try:
        return shapely.transform(geometries, reproject)
    except (RasterioError, CPLE_BaseError) as exc:
        raise LabelError(f"{path}: cannot reproject its polygons from {file_crs.to_string()} to the image's CRS: "
                         f"{one_line(exc)}") from None
