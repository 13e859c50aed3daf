"""``open_source``: the one entry point from a path, an array or a Source to a Source."""

from __future__ import annotations

import os
from typing import Any, Sequence

from segtile.sources.base import Source
from segtile.sources.files import is_slide
from segtile.sources.memory import MemorySource
from segtile.sources.openslide import OpenSlideSource, opens_with_openslide
from segtile.sources.raster import RasterSource
from segtile.sources.slide import SlideSource


def open_source(obj: Any, bands: Sequence[int] | None = None) -> Source:
    """Open ``obj`` as a :class:`Source` reading ``bands`` (1-based, order kept; ``None``: all).

    ``obj`` may be:

    * a path: whole-slide TIFFs (``.svs``, ``.ndpi``, ``.ome.tif(f)``, ``.scn``, ``.bif``, or a
      TIFF that tifffile recognises as one of these) open as a :class:`SlideSource`; files that
      are no TIFF but OpenSlide reads (MIRAX, Hamamatsu VMS, Sakura…; with ``segtile[openslide]``)
      as an :class:`OpenSlideSource`; everything else (GeoTIFF, COG, VRT, JP2, any GDAL raster)
      as a :class:`RasterSource`;
    * a numpy / dask array ``(bands, H, W)`` or ``(H, W)``, or an xarray DataArray: a
      :class:`MemorySource`;
    * a Source: returned as is, or re-banded when ``bands`` select other bands than all.

    Raises:
        SourceError: the input is missing, unreadable, or the bands are out of range.
    """
    if isinstance(obj, Source):
        if bands is None or tuple(bands) == tuple(range(1, obj.count + 1)):
            return obj
        return obj.select_bands(bands)
    if isinstance(obj, (str, os.PathLike)):
        path = os.fspath(obj)
        if os.path.exists(path):  # a local file: the same for Dask workers in another working folder
            path = os.path.abspath(path)
        if is_slide(path):
            return SlideSource(path, bands=bands)
        if opens_with_openslide(path):
            return OpenSlideSource(path, bands=bands)
        return RasterSource(path, bands=bands)
    return MemorySource(obj, bands=bands)
