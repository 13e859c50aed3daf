"""A paletted raster seen in colour: GDAL expands its colour table to red, green and blue.

A paletted GeoTIFF, PNG or GIF stores one band of indexes into a colour table. A model made for
colour imagery must see the colours, not the indexes; GDAL looks them up itself when the band
is read through a VRT whose sources name a ``ColorTableComponent`` (what ``gdal_translate
-expand rgb`` writes), so no colour is ever looked up by hand here.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from segtile.errors import SourceError, root_cause_line
from segtile.sources.base import Source
from segtile.sources.handles import PerThreadHandles
from segtile.sources.raster import RasterSource, _open_dataset, _rasterio_window
from segtile.sources.selection import band_positions, compose_bands

COLOURS = ("red", "green", "blue")


class PaletteSource(RasterSource):
    """A raster of one colour-table band, read as the colours of its table: red, green, blue
    (uint8, as GDAL gives colour entries), looked up by GDAL window by window.

    Args:
        path: a raster whose first image band has a colour table.
        bands: 1-based indices among red, green and blue, order kept; ``None`` reads all three.

    The georeference, the pyramid levels and the validity (GDAL's mask of the index band: its
    nodata value, an alpha band or an internal mask) are the raster's own.

    Raises:
        SourceError: the raster has no colour-table band.
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> None:
        super().__init__(path, bands=(1,))  # the index band: its georeference, levels and masks
        if not has_colour_table(self):
            raise SourceError(f"{self.path} has no colour table to read colours from")
        positions = band_positions(bands, len(COLOURS))
        self.colours = tuple(p + 1 for p in positions)
        self.shape = (len(self.colours), self.height, self.width)
        self.dtype = np.dtype(np.uint8)
        self.band_names = tuple(COLOURS[p] for p in positions)
        self._nodata = None  # validity from GDAL's mask of the indexes, never from the colours
        self._lookups: PerThreadHandles[DatasetReader] = PerThreadHandles(
            functools.partial(_open_colours, self.path, self.band_indexes[0]))

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        """The selected colours over ``window`` of ``level``: ``(bands, h, w)`` uint8."""
        bounds = _rasterio_window(window, self.level_shapes, level)
        try:
            return self._lookups.get(level).read(list(self.colours), window=bounds)
        except RasterioError as exc:
            raise SourceError(f"cannot read {self.path}: {root_cause_line(exc)}") from None

    def select_bands(self, bands: Sequence[int]) -> PaletteSource:
        return PaletteSource(self.path, bands=compose_bands(self.colours, bands))

    def close(self) -> None:
        super().close()
        self._lookups.close()


def in_colour(source: Source) -> PaletteSource | None:
    """``source`` read as red, green, blue when it is one band of colour-table indexes read
    with GDAL; ``None`` otherwise (an image of values, or one whose colours segtile cannot
    have GDAL look up)."""
    if not isinstance(source, RasterSource) or source.count != 1 or not has_colour_table(source):
        return None
    return PaletteSource(source.path)


def has_colour_table(source: RasterSource) -> bool:
    """Whether the one band ``source`` reads is a colour-table (palette) band."""
    with _open_dataset(source.path, 0) as dataset:
        return dataset.colorinterp[source.band_indexes[0] - 1] == ColorInterp.palette


def _open_colours(path: str, band: int, level: int) -> DatasetReader:
    """A VRT over pyramid ``level`` of ``path`` whose three bands are the colour table's red,
    green and blue of the indexes in GDAL band ``band``."""
    with _open_dataset(path, level) as dataset:
        width, height = dataset.width, dataset.height
    return _open_dataset(_colours_vrt(path, band, level, width, height), 0)


def _colours_vrt(path: str, band: int, level: int, width: int, height: int) -> str:
    """The VRT (XML) of :func:`_open_colours`: a level above 0 is the source's overview, opened
    with GDAL's ``OVERVIEW_LEVEL`` open option."""
    options = f'<OpenOptions><OOI key="OVERVIEW_LEVEL">{level - 1}</OOI></OpenOptions>' if level else ""
    source = (f'<SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>{options}'
              f"<SourceBand>{band}</SourceBand>")
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{component}"><ColorInterp>{name.title()}</ColorInterp>'
        f"<ComplexSource>{source}<ColorTableComponent>{component}</ColorTableComponent></ComplexSource>"
        "</VRTRasterBand>"
        for component, name in enumerate(COLOURS, start=1)
    )
    return f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">{bands}</VRTDataset>'
