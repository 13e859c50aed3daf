"""Whole-slide and microscopy TIFFs (SVS, NDPI, OME-TIFF, SCN, BIF, pyramidal TIFF) through
tifffile's Zarr store: only the tiles under a window are read and decoded."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import tifffile
import zarr
from affine import Affine
from rasterio.windows import Window
from tifffile.tifffile import svs_description_metadata

from segtile.errors import SourceError, root_cause_line
from segtile.georef import Georef
from segtile.sources.base import Source
from segtile.sources.files import check_local_file, check_tiff_complete, open_tiff, tagged_pixel_size
from segtile.sources.handles import PerThreadHandles
from segtile.sources.remote import check_range_requests, is_url
from segtile.sources.selection import band_positions, compose_bands, window_bounds

BAND_AXES = ("S", "C")  # samples of a pixel (RGB) or channels stored as planes (fluorescence)
_MICRONS_PER_UNIT = {"µm": 1.0, "μm": 1.0, "um": 1.0, "nm": 1e-3, "Å": 1e-4, "mm": 1e3, "cm": 1e4, "m": 1e6}
# With more than one worker, tifffile decodes each tile in a thread of its own instead of in
# Zarr's single event-loop thread, so tiles asked for by many Dask threads decode in parallel.
_DECODE_WORKERS = 2


class SlideSource(Source):
    """The first image series of a TIFF, pyramid included, read tile by tile with tifffile.

    Args:
        path: a TIFF file (SVS, NDPI, OME-TIFF, SCN, BIF or any pyramidal TIFF), local or a URL
            (``https://``, ``s3://``, ``gs://``, ``az://``: read through fsspec by byte ranges,
            :mod:`segtile.sources.remote`).
        bands: 1-based indices among the samples (RGB: 1 red, 2 green, 3 blue) or OME
            channels, order kept; ``None`` reads them all.

    The series must be a 2-D image with at most one band axis (axes ``YX``, ``YXS``, ``SYX``
    or ``CYX`` once length-1 axes are dropped). Levels are the series' pyramid levels; the
    georeference is the pixel size in µm (Aperio ``MPP``, OME ``PhysicalSizeX``, or the
    resolution tags when in a length unit and no screen or print resolution), with no CRS; its
    transform maps pixels to level-0 pixel coordinates (the identity here; scaled on a coarser
    working grid), the coordinates annotations of slides are given in. An alpha sample (RGBA,
    grey and alpha) is the validity mask, transparent pixels invalid, not a band.
    Each thread reads through its own TiffFile, and the source pickles to its path.

    Attributes (beside the :class:`Source` ones):
        path: the path opened.
        selected_bands: the 1-based indices among the samples (an alpha sample is none) or channels
            that are read.
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> None:
        self.path = os.fspath(path)
        remote = is_url(self.path)
        self.files = () if remote else (self.path,)
        if remote:
            check_range_requests(self.path)
        else:
            check_local_file(self.path)
            if os.path.isdir(self.path):
                raise SourceError(f"input is a directory, not a slide file: {self.path}")
        with open_tiff(self.path) as tif:
            check_tiff_complete(tif, self.path)
            if not tif.series:
                raise SourceError(f"cannot open {self.path}: no readable image in it (truncated or damaged?)")
            series = tif.series[0]
            self._axes = _checked_axes(series.axes, self.path)
            sample_count = _band_count(series.shape, self._axes)
            self._alpha = _alpha_sample(series, self._axes, sample_count)
            image_samples = [i for i in range(sample_count) if i != self._alpha]
            positions = band_positions(bands, len(image_samples))
            self.selected_bands = tuple(p + 1 for p in positions)
            self._samples = tuple(image_samples[p] for p in positions)
            self.level_shapes = tuple(_level_shape(level.shape, self._axes) for level in series.levels)
            self.shape = (len(positions), *self.level_shapes[0])
            self.dtype = np.dtype(series.dtype)
            self.band_names = tuple(_band_names(series, sample_count)[i] for i in self._samples)
            mpp, note = _microns_per_pixel(tif, series)
            self.georef = Georef(transform=Affine.identity(), mpp=mpp)
            self.notes = () if note is None else (f"{self.path}: {note}",)
            self.has_mask = self._alpha is not None
        self._levels: PerThreadHandles[_OpenLevel] = PerThreadHandles(functools.partial(_OpenLevel.open, self.path))

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        """The selected bands over ``window`` of ``level``, as stored: ``(bands, h, w)``."""
        return self._read_samples(window, level, list(self._samples))

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        """True where the alpha sample is not 0 (transparent); ``None`` without one."""
        if self._alpha is None:
            return None
        return self._read_samples(window, level, [self._alpha])[0] > 0

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The selected bands and the alpha sample decoded from the same tiles at once."""
        if self._alpha is None:
            return self.read(window, level), None
        samples = self._read_samples(window, level, [*self._samples, self._alpha])
        return samples[:-1], samples[-1] > 0

    def _read_samples(self, window: Window, level: int, samples: list[int]) -> np.ndarray:
        """The 0-based ``samples`` (or channels) over ``window`` of ``level``: ``(len(samples), h, w)``."""
        row_start, row_stop, col_start, col_stop = window_bounds(window, self.level_shapes, level)
        spans = {"Y": slice(row_start, row_stop), "X": slice(col_start, col_stop)}
        selection = tuple(spans.get(axis, samples) for axis in self._axes)
        try:
            pixels = self._levels.get(level).array.oindex[selection]
        except SourceError:
            raise
        except Exception as exc:  # decoders raise their own kinds (DeflateError, JpegError...) on bad tiles
            raise SourceError(f"cannot read {self.path}: {root_cause_line(exc)}") from None
        band_axis = next((i for i, axis in enumerate(self._axes) if axis in BAND_AXES), None)
        if band_axis is None:
            return np.ascontiguousarray(pixels[np.newaxis][samples])
        return np.ascontiguousarray(np.moveaxis(pixels, band_axis, 0))

    def select_bands(self, bands: Sequence[int]) -> SlideSource:
        return SlideSource(self.path, bands=compose_bands(self.selected_bands, bands))

    def close(self) -> None:
        self._levels.close()


@dataclass
class _OpenLevel:
    """One thread's TiffFile and the Zarr array of one pyramid level read through it."""

    tif: tifffile.TiffFile
    array: Any

    @classmethod
    def open(cls, path: str, level: int) -> _OpenLevel:
        tif = open_tiff(path)
        store = tif.series[0].aszarr(level=level, maxworkers=_DECODE_WORKERS)
        return cls(tif, zarr.open_array(store, mode="r"))

    def close(self) -> None:
        self.tif.close()


def _checked_axes(axes: str, path: str) -> str:
    """``axes`` when they describe a 2-D image with at most one band axis, else a SourceError."""
    spatial = "".join(axis for axis in axes if axis not in BAND_AXES)
    bands = [axis for axis in axes if axis in BAND_AXES]
    if spatial != "YX" or len(bands) > 1:
        raise SourceError(
            f"{path}: the first image has axes {axes}; segtile reads 2-D images (YX, YXS, SYX or CYX)"
        )
    return axes


def _band_count(shape: Sequence[int], axes: str) -> int:
    return next((size for size, axis in zip(shape, axes) if axis in BAND_AXES), 1)


def _alpha_sample(series: tifffile.TiffPageSeries, axes: str, sample_count: int) -> int | None:
    """The 0-based index of the pixel's alpha sample (an ExtraSample, associated or not), which
    marks transparent pixels: a mask, not a band; ``None`` when the pixels have none."""
    if "S" not in axes:
        return None
    extra = series.keyframe.extrasamples
    alpha = (tifffile.EXTRASAMPLE.ASSOCALPHA, tifffile.EXTRASAMPLE.UNASSALPHA)
    first_extra = sample_count - len(extra)
    return next((first_extra + i for i, kind in enumerate(extra) if kind in alpha), None)


def _level_shape(shape: Sequence[int], axes: str) -> tuple[int, int]:
    return shape[axes.index("Y")], shape[axes.index("X")]


def _band_names(series: tifffile.TiffPageSeries, count: int) -> tuple[str, ...]:
    if series.keyframe.photometric == tifffile.PHOTOMETRIC.RGB:
        colours = ("red", "green", "blue")
        return tuple(colours[i] if i < 3 else f"band {i + 1}" for i in range(count))
    return tuple(f"band {i + 1}" for i in range(count))


def _microns_per_pixel(tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> tuple[float | None, str | None]:
    """Level-0 pixel size in µm from the slide's own metadata, or ``None`` when it has none; and a
    note when its resolution tags were set aside (:func:`~segtile.sources.files.tagged_pixel_size`)."""
    if tif.is_svs:
        return _svs_mpp(tif.pages[0].description), None
    if tif.is_ome:
        return _ome_mpp(tif.ome_metadata), None
    return tagged_pixel_size(series.keyframe)


def _svs_mpp(description: str) -> float | None:
    """The ``MPP`` field of an Aperio ImageDescription (``...|MPP = 0.4990|...``)."""
    try:
        mpp = svs_description_metadata(description).get("MPP")
    except ValueError:
        return None
    return float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None


def _ome_mpp(xml: str | None) -> float | None:
    """``PhysicalSizeX`` of the first OME image, converted from its unit (µm by default)."""
    if not xml:
        return None
    images = tifffile.xml2dict(xml).get("OME", {}).get("Image")
    image = images[0] if isinstance(images, list) else images
    pixels = (image or {}).get("Pixels", {})
    size = pixels.get("PhysicalSizeX")
    scale = _MICRONS_PER_UNIT.get(pixels.get("PhysicalSizeXUnit", "µm"))
    if not isinstance(size, (int, float)) or size <= 0 or scale is None:
        return None
    return float(size) * scale
