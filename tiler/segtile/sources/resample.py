"""The working grid: an image seen at the resolution the model runs at, resampled window by window.

A model trained at 300 m per pixel, or at 0.5 µm per pixel, must see images at that scale. A
:class:`ResampledSource` is another source on a coarser (or finer) grid over the same area: its
level 0 *is* the grid the engine tiles and the outputs are written on, so nothing downstream
hears of levels or resolutions. Each window is read from the coarsest pyramid level that is still
at least as fine as the target (a slide's 4x level for 2 µm/px, not its full resolution) and
resampled on its own by GDAL (``rasterio.warp.reproject`` on the arrays: area-weighted averaging
when shrinking, bilinear when enlarging), so no level is ever read whole. Invalid pixels are left
out of the averages; a target pixel with no valid pixel under it is invalid. When a pyramid level
has exactly the target grid (``--level``), its windows are read as they are.

The grid keeps the image's extent: its size is the image's size divided by the scale, rounded,
and its georeference is the image's scaled per axis by exactly the ratio of the two sizes.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from segtile.errors import SourceError
from segtile.sources.base import Source
from segtile.sources.selection import window_bounds

# reproject needs a CRS; both grids are in level-0 pixel units of one image, so any CRS will do
# as long as it is the same on both sides (then GDAL only resamples).
_PIXEL_SPACE = CRS.from_epsg(3857)
_TOLERANCE = 1e-6  # relative: a level this close to the target's scale is at least as fine


class ResampledSource(Source):
    """``inner`` on a grid of ``shape`` ``(height, width)`` over the same area (see the module
    docstring). Pixels come as float32, NaN where invalid; the georeference is ``inner``'s scaled
    per axis.

    Attributes (beside the :class:`Source` ones):
        inner: the source resampled.
        scale: ``(x, y)``: how many of ``inner``'s level-0 pixels one pixel spans per axis.
        read_level: the level of ``inner`` the windows are read from.
    """

    def __init__(self, inner: Source, shape: tuple[int, int]) -> None:
        height, width = (int(n) for n in shape)
        if height < 1 or width < 1:
            raise SourceError(f"the working grid of {inner.height}x{inner.width} px would be empty")
        self.inner = inner
        self.scale = (inner.width / width, inner.height / height)
        self.read_level = _read_level(inner.level_shapes, self.scale)
        self._direct = inner.level_shapes[self.read_level] == (height, width)
        self.shape = (inner.count, height, width)
        self.dtype = inner.dtype if self._direct else np.dtype(np.float32)
        self.band_names = inner.band_names
        self.georef = inner.georef.scaled(*self.scale)
        self.level_shapes = ((height, width),)
        self.has_mask = inner.has_mask
        self.files = inner.files

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        return self.read_with_valid(window, level)[0]

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        return self.read_with_valid(window, level)[1]

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The window of the working grid: pixels ``(bands, h, w)`` and validity (``None``: all valid)."""
        row_start, row_stop, col_start, col_stop = window_bounds(window, self.level_shapes, level)
        if self._direct:
            return self.inner.read_with_valid(window, self.read_level)
        source_window, source_transform = self._source_window(row_start, row_stop, col_start, col_stop)
        pixels, valid = self.inner.read_with_valid(source_window, self.read_level)
        pixels = pixels.astype(np.float32)
        if valid is not None:
            pixels[:, ~valid] = np.nan
        resampled = np.full((self.count, row_stop - row_start, col_stop - col_start), np.nan, dtype=np.float32)
        scale_x, scale_y = self.scale
        reproject(
            pixels, resampled, src_transform=source_transform, src_crs=_PIXEL_SPACE, src_nodata=np.nan,
            dst_transform=Affine(scale_x, 0, col_start * scale_x, 0, scale_y, row_start * scale_y),
            dst_crs=_PIXEL_SPACE, dst_nodata=np.nan,
            resampling=Resampling.average if min(self.scale) >= 1 else Resampling.bilinear,
        )
        valid = ~np.isnan(resampled).all(axis=0)
        return resampled, (None if valid.all() else valid)

    def _source_window(self, row_start: int, row_stop: int, col_start: int,
                       col_stop: int) -> tuple[Window, Affine]:
        """The window of the read level under a window of the working grid (one pixel wider on
        each side, for the bilinear kernel, clipped to the level), and its transform into
        level-0 pixel units."""
        level_height, level_width = self.inner.level_shapes[self.read_level]
        step_x = self.inner.width / level_width  # level-0 pixels per pixel of the read level
        step_y = self.inner.height / level_height
        scale_x, scale_y = self.scale
        left = max(0, int(np.floor(col_start * scale_x / step_x)) - 1)
        top = max(0, int(np.floor(row_start * scale_y / step_y)) - 1)
        right = min(level_width, int(np.ceil(col_stop * scale_x / step_x)) + 1)
        bottom = min(level_height, int(np.ceil(row_stop * scale_y / step_y)) + 1)
        transform = Affine(step_x, 0, left * step_x, 0, step_y, top * step_y)
        return Window(left, top, right - left, bottom - top), transform

    def select_bands(self, bands: Sequence[int]) -> ResampledSource:
        selected = copy.copy(self)
        selected.inner = self.inner.select_bands(bands)
        selected.shape = (selected.inner.count, *self.level_shapes[0])
        selected.band_names = selected.inner.band_names
        return selected

    def close(self) -> None:
        self.inner.close()


def _read_level(level_shapes: Sequence[tuple[int, int]], scale: tuple[float, float]) -> int:
    """The coarsest level that is still at least as fine as ``scale`` along both axes."""
    height, width = level_shapes[0]
    best = 0
    for level, (level_height, level_width) in enumerate(level_shapes):
        if width / level_width <= scale[0] * (1 + _TOLERANCE) and height / level_height <= scale[1] * (1 + _TOLERANCE):
            if level_width <= level_shapes[best][1]:
                best = level
    return best


def at_level(source: Source, level: int) -> Source:
    """``source`` seen on the grid of its pyramid ``level`` (0: itself)."""
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < len(source.level_shapes):
        count = len(source.level_shapes)
        raise SourceError(f"level {level} does not exist: the image has {count} level{'s' if count > 1 else ''}")
    return source if level == 0 else ResampledSource(source, source.level_shapes[level])


def pixel_size_option(unit: str) -> str:
    """How a user asks for a pixel size in ``unit`` (``"m"`` or ``"um"``), on the command line
    and in Python, for messages."""
    return "--mpp (Python: mpp=)" if unit == "um" else "--resolution (Python: resolution=)"


def at_pixel_size(source: Source, size: float, unit: str) -> Source:
    """``source`` on a grid of pixels ``size`` wide and high, in ``unit`` (``"m"``: metres for
    rasters, ``"um"``: µm for slides); itself when that is its own grid.

    Raises:
        SourceError: the image has no known pixel size, or one in the other unit.
    """
    if not size > 0:
        raise SourceError(f"the pixel size asked for must be positive, got {size}")
    known = source.georef.pixel_size()
    option = pixel_size_option(unit)
    if known is None:
        raise SourceError(f"{option} needs an image whose pixel size is known (a slide's µm per pixel, or a "
                          "projected CRS): this one has none")
    _, own_unit = known
    if own_unit != unit:
        hint = (f"slides take {pixel_size_option('um')}, in µm per pixel" if own_unit == "um"
                else f"rasters take {pixel_size_option('m')}, in metres per pixel")
        raise SourceError(f"{option} does not fit this image: {hint}")
    width, height = _pixel_extent(source)
    shape = (max(1, round(height / size)), max(1, round(width / size)))
    return source if shape == (source.height, source.width) else ResampledSource(source, shape)


def _pixel_extent(source: Source) -> tuple[float, float]:
    """The image's width and height in the unit of its pixel size."""
    georef = source.georef
    if georef.mpp is not None:
        return source.width * georef.mpp, source.height * georef.mpp
    _, metres_per_unit = georef.crs.linear_units_factor
    transform = georef.transform
    pixel_width = np.hypot(transform.a, transform.d) * metres_per_unit
    pixel_height = np.hypot(transform.b, transform.e) * metres_per_unit
    return source.width * pixel_width, source.height * pixel_height
