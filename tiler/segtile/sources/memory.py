"""Arrays as sources: numpy, dask (only the window is computed), xarray DataArrays, and any
array-like that slices (a Zarr array, an HDF5 dataset), wrapped lazily with dask."""

from __future__ import annotations

import copy
import math
from typing import Any, Sequence

import dask.array as da
import numpy as np
from affine import Affine
from rasterio.windows import Window

from segtile.errors import SourceError
from segtile.georef import Georef
from segtile.sources.base import Source
from segtile.sources.selection import band_positions, compose_bands, window_bounds

BANDS_LAST = (1, 3, 4)
"""An unlabelled array whose last axis is this long (grey, RGB, RGBA), under two axes longer than
RGBA, is taken for ``(height, width, bands)``, the layout PIL, imageio and scikit-image give, and
refused (a DataArray's dims say which axis is which)."""


class MemorySource(Source):
    """An array ``(bands, H, W)`` or ``(H, W)`` (one band) read window by window.

    Args:
        array: a numpy or dask array, an xarray DataArray with dims ``(band, y, x)`` or
            ``(y, x)`` (other dim names are taken in that order), or an array-like with
            ``shape``, ``dtype`` and slicing.
        bands: 1-based band indices, order kept; ``None`` reads every band.
        nodata: pixels where every selected band equals it (NaN allowed) are invalid; for a
            DataArray it defaults to rioxarray's nodata when rioxarray is installed.
        georef: the array's georeference; for a DataArray it defaults to rioxarray's CRS and
            transform when rioxarray is installed, else none.

    Dask arrays compute only the window asked for, on the calling thread (the read already
    runs inside a Dask task). The source pickles with its array (a dask array as its graph).

    Attributes (beside the :class:`Source` ones):
        nodata: the nodata value in use, or ``None``.
        selected_bands: the 1-based indices among the array's bands that are read.
    """

    def __init__(
        self,
        array: Any,
        bands: Sequence[int] | None = None,
        nodata: float | None = None,
        georef: Georef | None = None,
    ) -> None:
        self.nodata = nodata
        data, names = array, None
        if _is_data_array(array):
            data, names = _data_array_bands(array)
            self.nodata = _rio_nodata(array) if nodata is None else nodata
            georef = _rio_georef(array) if georef is None else georef
        data = _as_array(data, named_dims=_is_data_array(array))
        self._array = data[np.newaxis] if data.ndim == 2 else data
        count, height, width = self._array.shape
        self._all_band_names = names or tuple(f"band {i + 1}" for i in range(count))
        self.dtype = np.dtype(self._array.dtype)
        self.georef = georef or Georef()
        self.level_shapes = ((height, width),)
        self.has_mask = self.nodata is not None
        self._select(band_positions(bands, count))

    def _select(self, positions: Sequence[int]) -> None:
        """Read the bands at 0-based ``positions`` of the array."""
        self._positions = list(positions)
        self.selected_bands = tuple(p + 1 for p in positions)
        self.shape = (len(positions), *self.level_shapes[0])
        self.band_names = tuple(self._all_band_names[p] for p in positions)

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        """The selected bands over ``window`` (level 0 only), as stored: ``(bands, h, w)``."""
        row_start, row_stop, col_start, col_stop = window_bounds(window, self.level_shapes, level)
        pixels = self._array[self._positions, row_start:row_stop, col_start:col_stop]
        if isinstance(pixels, da.Array):
            pixels = pixels.compute(scheduler="synchronous")
        return np.asarray(pixels)

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        """False where every selected band equals ``nodata``; ``None`` without a nodata value."""
        return self.read_with_valid(window, level)[1]

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The pixels of ``window`` and their validity, from one read of the array."""
        pixels = self.read(window, level)
        if self.nodata is None:
            return pixels, None
        missing = np.isnan(pixels) if np.isnan(self.nodata) else pixels == self.nodata
        return pixels, ~missing.all(axis=0)

    def select_bands(self, bands: Sequence[int]) -> MemorySource:
        selected = copy.copy(self)  # shares the array: nothing to reopen, nothing copied
        selected._select([band - 1 for band in compose_bands(self.selected_bands, bands)])
        return selected


def _as_array(data: Any, named_dims: bool = False) -> np.ndarray | da.Array:
    """A numpy or dask array of ``data``, 2-D or 3-D; other array-likes are wrapped lazily.
    ``named_dims``: its axes are known to be ``(bands, H, W)`` (a DataArray's, put in order)."""
    if not isinstance(data, (np.ndarray, da.Array)):
        if not all(hasattr(data, attribute) for attribute in ("shape", "dtype", "ndim", "__getitem__")):
            raise SourceError(
                f"cannot read a {type(data).__name__}: pass a path, a numpy / dask array, an xarray DataArray "
                "or a Source"
            )
        data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))
    if data.ndim not in (2, 3):
        raise SourceError(f"an image array must be (bands, height, width) or (height, width), not {data.ndim}-D")
    if any(math.isnan(size) for size in data.shape):  # a dask array sliced by a mask it has not computed
        raise SourceError(f"a dask array of unknown chunk sizes (shape {tuple(data.shape)}): segtile needs its size; "
                          "call array.compute_chunk_sizes() first")
    if 0 in data.shape:
        raise SourceError(f"the image array is empty: shape {tuple(data.shape)}")
    if not named_dims and data.ndim == 3 and data.shape[2] in BANDS_LAST and min(data.shape[:2]) > max(BANDS_LAST):
        raise SourceError(
            f"an image array of shape {tuple(data.shape)} looks like (height, width, bands), as imaging "
            "libraries give it: segtile takes (bands, height, width): pass numpy.moveaxis(array, -1, 0)"
        )
    if data.dtype.kind not in "buif":
        raise SourceError(f"an image array holds numbers: integers, floats or booleans, not {data.dtype}")
    return data


def _is_data_array(obj: Any) -> bool:
    """Whether ``obj`` is an xarray DataArray, without importing xarray (an optional dependency)."""
    return any(cls.__module__.startswith("xarray") and cls.__name__ == "DataArray" for cls in type(obj).__mro__)


def _data_array_bands(array: Any) -> tuple[Any, tuple[str, ...] | None]:
    """The DataArray's data ordered ``(band, y, x)`` (or ``(y, x)``) and its band names."""
    order = ("band", "y", "x") if array.ndim == 3 else ("y", "x")
    if set(order) <= set(array.dims):
        array = array.transpose(*order)
    names = None
    if array.ndim == 3 and array.dims[0] in array.coords:
        names = tuple(str(value) for value in array.coords[array.dims[0]].values)
    return array.data, names


def _rio_georef(array: Any) -> Georef | None:
    """rioxarray's CRS and transform of ``array`` (or its ground control points, whose CRS
    rioxarray gives as the array's), or ``None`` without rioxarray or georeference."""
    rio = _rio_accessor(array)
    if rio is None:
        return None
    transform: Affine = rio.transform()
    gcps = rio.get_gcps() if transform.is_identity else None
    if gcps:
        return Georef(gcps=tuple(gcps), gcp_crs=rio.crs)
    if rio.crs is None and transform.is_identity:
        return None
    return Georef(crs=rio.crs, transform=None if transform.is_identity else transform)


def _rio_nodata(array: Any) -> float | None:
    rio = _rio_accessor(array)
    return None if rio is None else rio.nodata


def _rio_accessor(array: Any) -> Any:
    """``array.rio`` when rioxarray is installed (importing it registers the accessor)."""
    try:
        import rioxarray  # noqa: F401
    except ImportError:
        return None
    return array.rio
