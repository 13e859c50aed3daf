"""Many rasters read as one image: a mosaic of tiles, scenes side by side, or files in several CRSs.

GDAL composes the mosaic: its raster tile index driver (GTI, GDAL 3.9+) reads a list of rasters
with their footprints as one dataset, window by window, and warps on the fly those whose CRS is
not the mosaic's. The index is given to GDAL as XML text holding the list as GeoJSON, so the
mosaic is one string that every thread and every Dask worker opens on its own, and nothing is
written to disk. segtile only decides the grid: the first input's CRS (or ``crs``), the finest
pixel size of the inputs in that CRS (or ``resolution``), the union of their footprints, lined up
with the first input's pixels so that it is read as stored.

Where inputs overlap, the one listed **last** wins, as in a VRT that ``gdalbuildvrt`` writes;
inputs warped onto the grid (another CRS, another pixel size) are resampled with nearest
neighbour, GTI's default, so pixel values are never blended. Validity: when the inputs share a
nodata value, the mosaic has it (pixels outside every input are nodata too); when none has one,
the pixels outside every input are invalid (GTI's mask band). Inputs with different band counts,
data types or nodata values are refused, as are inputs GDAL does not place by an affine
transform and a CRS.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence
from xml.sax.saxutils import escape

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from segtile.errors import SourceError, root_cause_line
from segtile.sources.base import Source
from segtile.sources.files import check_local_file, is_remote
from segtile.sources.raster import RasterSource
from segtile.sources.remote import check_range_requests, is_url, vsi_path
from segtile.sources.selection import compose_bands

_SNAP = 1e-6  # a bound within this fraction of a pixel of a grid line lies on it (floating-point sums)


@dataclass(frozen=True)
class _Input:
    """What the mosaic needs to know of one input raster."""

    path: str
    count: int
    dtype: str
    nodata: float | None
    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in the input's CRS."""
        left, top = self.transform.c, self.transform.f
        right, bottom = self.transform * (self.width, self.height)
        return left, bottom, right, top

    def describe(self) -> str:
        nodata = "no nodata" if self.nodata is None else f"nodata {self.nodata:g}"
        return f"{self.count} band{'s' * (self.count != 1)} of {self.dtype}, {nodata}"


def open_mosaic(inputs: Sequence[str | os.PathLike[str]], *, crs: str | CRS | None = None,
                resolution: float | tuple[float, float] | None = None,
                bands: Sequence[int] | None = None) -> MosaicSource:
    """Read the rasters ``inputs`` as one image (see the module docstring).

    Args:
        inputs: paths (or GDAL paths such as ``/vsicurl/...``) of georeferenced rasters, all with
            the same band count, data type and nodata value; where they overlap the last wins.
        crs: the mosaic's CRS (anything ``rasterio.crs.CRS.from_user_input`` takes); ``None``:
            the first input's.
        resolution: the mosaic's pixel size in the units of its CRS, one number or ``(x, y)``;
            ``None``: the finest pixel size of the inputs in that CRS.
        bands: 1-based indices among the inputs' bands, order kept; ``None``: all.

    Raises:
        SourceError: no input, an input missing or unreadable, not placed by a CRS and an affine
            transform (or rotated), or inputs that differ in bands, data type or nodata.
    """
    return MosaicSource(inputs, crs=crs, resolution=resolution, bands=bands)


class MosaicSource(Source):
    """Several rasters read as one, through GDAL's raster tile index driver (:func:`open_mosaic`).

    Attributes (beside the :class:`Source` ones):
        inputs: the inputs as GDAL opens them, in compositing order (the last on top).
        name: how messages name the mosaic.
        index: the GTI XML text GDAL opens as the mosaic.
    """

    def __init__(self, inputs: Sequence[str | os.PathLike[str]], crs: str | CRS | None = None,
                 resolution: float | tuple[float, float] | None = None, bands: Sequence[int] | None = None) -> None:
        self.inputs = tuple(_input_path(path) for path in inputs)
        if not self.inputs:
            raise SourceError("a mosaic needs at least one input")
        _check_gdal_has_gti()
        self.name = f"the mosaic of {len(self.inputs)} input{'s' * (len(self.inputs) != 1)} ({self.inputs[0]}, …)"
        described = [_describe(path) for path in self.inputs]
        _check_alike(described)
        grid_crs = _crs(crs) if crs is not None else described[0].crs
        pixel = _pixel_size(resolution, described, grid_crs)
        footprints = [_footprint(item, grid_crs) for item in described]
        transform, width, height = _grid(footprints, pixel, described[0] if described[0].crs == grid_crs else None)
        self.index = _tile_index(described, footprints, grid_crs, transform, width, height)
        self._mosaic = RasterSource(self.index, bands=bands)
        self.shape = self._mosaic.shape
        self.dtype = self._mosaic.dtype
        self.band_names = self._mosaic.band_names
        self.georef = self._mosaic.georef
        self.level_shapes = self._mosaic.level_shapes
        self.has_mask = self._mosaic.has_mask
        self.files = tuple(path for path in self.inputs if not is_remote(path))
        self.notes = _warp_notes(described, grid_crs, pixel)
        self._crs, self._resolution = crs, resolution

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        with self._named():
            return self._mosaic.read(window, level)

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        with self._named():
            return self._mosaic.read_valid(window, level)

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        with self._named():
            return self._mosaic.read_with_valid(window, level)

    @contextmanager
    def _named(self) -> Iterator[None]:
        """Re-raise a :class:`SourceError` of the mosaic's reads with the mosaic's name in place
        of the index's XML text (which GDAL's messages quote as the dataset's name)."""
        try:
            yield
        except SourceError as exc:
            raise SourceError(str(exc).replace(self.index, self.name)) from None

    def select_bands(self, bands: Sequence[int]) -> MosaicSource:
        return MosaicSource(self.inputs, crs=self._crs, resolution=self._resolution,
                            bands=compose_bands(self._mosaic.selected_bands, bands))

    def close(self) -> None:
        self._mosaic.close()



def _check_gdal_has_gti() -> None:
    """Refuse a mosaic when rasterio's GDAL has no tile index driver (GDAL before 3.9)."""
    with rasterio.Env() as env:
        if "GTI" not in env.drivers():
            raise SourceError(f"mosaics need GDAL 3.9 or later (its GTI driver); rasterio here runs GDAL "
                              f"{rasterio.__gdal_version__}: install a rasterio wheel (pip install -U rasterio)")


def _input_path(path: str | os.PathLike[str]) -> str:
    """``path`` as GDAL opens it: a local file by its absolute path (checked: it exists, is not
    empty), anything GDAL resolves itself (``/vsicurl/``, a URL) as given."""
    path = os.fspath(path)
    if is_url(path):
        check_range_requests(path)
        return vsi_path(path)  # GTI opens its tiles by GDAL paths
    if is_remote(path):
        return path
    check_local_file(path)
    return os.path.abspath(path)


def _describe(path: str) -> _Input:
    """Open ``path`` with GDAL and note what the mosaic needs; refuse what it cannot place."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                item = _Input(path, dataset.count, dataset.dtypes[0], dataset.nodata, dataset.crs,
                              dataset.transform, dataset.width, dataset.height)
                dtypes = set(dataset.dtypes)
    except RasterioError as exc:
        raise SourceError(f"cannot open {path}: {root_cause_line(exc)}") from None
    if len(dtypes) > 1:
        raise SourceError(f"{path} has bands of several data types ({', '.join(sorted(dtypes))}): "
                          "a mosaic needs one")
    if item.crs is None or item.transform.is_identity:
        raise SourceError(f"{path} has no CRS and geotransform: a mosaic places its inputs by them "
                          "(warp an image placed by GCPs or RPCs first: gdalwarp)")
    if item.transform.b or item.transform.d:
        raise SourceError(f"{path} is rotated (its geotransform has rotation terms): a mosaic needs north-up inputs "
                          "(warp it first: gdalwarp)")
    return item


def _check_alike(described: Sequence[_Input]) -> None:
    """Refuse inputs that differ in band count, data type or nodata value (GDAL's mosaic takes
    them from the first input)."""
    first = described[0]
    for item in described[1:]:
        if (item.count, item.dtype) != (first.count, first.dtype) or not _same_nodata(item.nodata, first.nodata):
            raise SourceError(f"the inputs of a mosaic differ: {first.path} has {first.describe()}, {item.path} has "
                              f"{item.describe()}: a mosaic needs one band count, data type and nodata value")


def _same_nodata(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def _crs(crs: str | CRS) -> CRS:
    try:
        return CRS.from_user_input(crs)
    except CRSError as exc:
        raise SourceError(f"the mosaic's CRS {crs!r} is no CRS: {root_cause_line(exc)}") from None


def _pixel_size(resolution: float | tuple[float, float] | None, described: Sequence[_Input],
                crs: CRS) -> tuple[float, float]:
    """The mosaic's ``(x, y)`` pixel size: ``resolution``, else the finest of the inputs' in ``crs``."""
    if resolution is not None:
        x, y = (resolution, resolution) if isinstance(resolution, (int, float)) else resolution
        if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
            raise SourceError(f"the mosaic's resolution must be positive: {resolution}")
        return float(x), float(y)
    sizes = [_pixel_size_in(item, crs) for item in described]
    return min(x for x, _ in sizes), min(y for _, y in sizes)


def _pixel_size_in(item: _Input, crs: CRS) -> tuple[float, float]:
    """``item``'s pixel size in ``crs``: its own in its CRS, else the one gdalwarp would choose."""
    transform = item.transform if item.crs == crs else _warped(item, crs)[0]
    return transform.a, -transform.e


def _footprint(item: _Input, crs: CRS) -> tuple[float, float, float, float]:
    """``item``'s bounds in ``crs``: its own in its CRS, else those of the grid gdalwarp would
    warp it onto (as GDAL's mosaic checks them)."""
    if item.crs == crs:
        return item.bounds
    transform, width, height = _warped(item, crs)
    right, bottom = transform * (width, height)
    return transform.c, bottom, right, transform.f


def _warped(item: _Input, crs: CRS) -> tuple[Affine, int, int]:
    """The grid gdalwarp chooses for ``item`` in ``crs`` (``GDALSuggestedWarpOutput2``)."""
    return calculate_default_transform(item.crs, crs, item.width, item.height, *item.bounds)


def _grid(footprints: Sequence[tuple[float, float, float, float]], pixel: tuple[float, float],
          anchor: _Input | None) -> tuple[Affine, int, int]:
    """The mosaic's north-up transform and size: the union of ``footprints`` in pixels of
    ``pixel``, its lines on those of ``anchor`` (the first input, when in the mosaic's CRS)."""
    left = min(f[0] for f in footprints)
    bottom = min(f[1] for f in footprints)
    right = max(f[2] for f in footprints)
    top = max(f[3] for f in footprints)
    origin_x, origin_y = (anchor.transform.c, anchor.transform.f) if anchor else (left, top)
    x_size, y_size = pixel
    first_column = _grid_line(left, origin_x, x_size, math.floor)
    last_column = _grid_line(right, origin_x, x_size, math.ceil)
    first_row = _grid_line(origin_y - top, 0.0, y_size, math.floor)
    last_row = _grid_line(origin_y - bottom, 0.0, y_size, math.ceil)
    transform = Affine(x_size, 0.0, origin_x + first_column * x_size, 0.0, -y_size, origin_y - first_row * y_size)
    return transform, last_column - first_column, last_row - first_row


def _grid_line(value: float, origin: float, step: float, rounding) -> int:
    """The grid line (a multiple of ``step`` from ``origin``) at or beyond ``value``, ``rounding``
    down (``math.floor``) or up (``math.ceil``); a value within :data:`_SNAP` of a line is on it."""
    position = (value - origin) / step
    nearest = round(position)
    return nearest if abs(position - nearest) < _SNAP else rounding(position)


def _tile_index(described: Sequence[_Input], footprints: Sequence[tuple[float, float, float, float]], crs: CRS,
                transform: Affine, width: int, height: int) -> str:
    """The GTI XML text of the mosaic: the inputs and their footprints (in ``crs``) as an inline
    GeoJSON index, in order (GTI draws later features over earlier ones), and the grid."""
    features = [{"type": "Feature", "properties": {"location": item.path},
                 "geometry": {"type": "Polygon", "coordinates": [[[left, bottom], [right, bottom], [right, top],
                                                                  [left, top], [left, bottom]]]}}
                for item, (left, bottom, right, top) in zip(described, footprints)]
    index = {"type": "FeatureCollection", "crs": {"type": "name", "properties": {"name": crs.to_wkt()}},
             "features": features}
    geotransform = ",".join(repr(value) for value in transform.to_gdal())
    # without a common nodata value, GTI's mask band marks the pixels outside every input
    mask = "<MaskBand>true</MaskBand>" if described[0].nodata is None else ""
    return (f"<GDALTileIndexDataset><IndexDataset>{escape(json.dumps(index))}</IndexDataset>"
            f"<SRS>{escape(crs.to_wkt())}</SRS><GeoTransform>{geotransform}</GeoTransform>"
            f"<XSize>{width}</XSize><YSize>{height}</YSize>{mask}</GDALTileIndexDataset>")


def _warp_notes(described: Sequence[_Input], crs: CRS, pixel: tuple[float, float]) -> tuple[str, ...]:
    """A note naming the inputs resampled onto the mosaic's grid (another CRS or pixel size), if any."""
    moved = [item.path for item in described
             if item.crs != crs or not np.allclose((item.transform.a, -item.transform.e), pixel)]
    if not moved:
        return ()
    names = ", ".join(os.path.basename(path) for path in moved[:3]) + (", …" if len(moved) > 3 else "")
    return (f"mosaic: {len(moved)} of {len(described)} inputs ({names}) warped onto its grid "
            f"({crs.to_string()}, {pixel[0]:g} x {pixel[1]:g} per pixel) with nearest-neighbour resampling",)
