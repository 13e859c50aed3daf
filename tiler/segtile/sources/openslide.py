"""Whole-slide formats only OpenSlide reads (MIRAX ``.mrxs``, Hamamatsu ``.vms``/``.vmu``, Sakura
``.svslide``, DICOM…), through OpenSlide: the optional extra ``segtile[openslide]``.

tifffile stays the reader of every TIFF-based slide (SVS, NDPI, SCN, BIF, OME-TIFF); OpenSlide is
chosen only for files that are no TIFF and that OpenSlide recognises (:func:`opens_with_openslide`).

OpenSlide hands out RGBA: pixels outside the scanned area (the gaps between a MIRAX slide's
scanned regions, say) are transparent. The alpha is taken as **validity**, not painted white:
those pixels are nodata in every output, and a tile with none valid is never run, as for a
GeoTIFF's nodata; tissue detection need not learn what glass outside the scan looks like.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np
from affine import Affine
from rasterio.windows import Window

from segtile.errors import SourceError, root_cause_line
from segtile.georef import Georef
from segtile.sources.base import Source
from segtile.sources.files import check_local_file, is_tiff
from segtile.sources.handles import PerThreadHandles
from segtile.sources.selection import band_positions, compose_bands, window_bounds

OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".svslide")  # formats no other reader here opens
_BAND_NAMES = ("red", "green", "blue")


def opens_with_openslide(path: str) -> bool:
    """Whether ``path`` is a local file that is no TIFF and that OpenSlide recognises, or a folder
    of a DICOM slide's files (:func:`dicom_slide_file`).

    Raises:
        SourceError: the file has an OpenSlide-only extension (or the folder holds ``.dcm``
            files) but OpenSlide is not installed; a folder of ``.dcm`` files none of which is a
            whole-slide image OpenSlide reads.
    """
    if os.path.isdir(path):
        return bool(_dicom_files(path)) and bool(dicom_slide_file(path))
    if is_tiff(path) or not os.path.isfile(path):
        return False
    openslide = _openslide_for(path, needed=path.lower().endswith(OPENSLIDE_SUFFIXES))
    return openslide is not None and openslide.OpenSlide.detect_format(path) is not None


def dicom_slide_file(folder: str) -> str:
    """The file OpenSlide opens a folder's DICOM slide by: the first ``.dcm`` file (by name) it
    recognises. OpenSlide 4 opens a DICOM whole-slide image from any one of its files (a scanner
    writes one per pyramid level, and others for the label and overview) and reads the files of
    the same series beside it; it does not open a folder.

    Raises:
        SourceError: OpenSlide is not installed, or recognises none of the folder's ``.dcm`` files.
    """
    openslide = _openslide_for(folder, needed=True)
    files = _dicom_files(folder)
    found = next((f for f in files if openslide.OpenSlide.detect_format(f) == "dicom"), None)
    if found is None:
        raise SourceError(f"{folder} holds {len(files)} .dcm file{'s' * (len(files) != 1)} but no DICOM whole-slide "
                          "image OpenSlide reads (a slide's files have the VL Whole Slide Microscopy Image type)")
    return found


def _dicom_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.lower().endswith(".dcm"))


def _openslide_for(path: str, needed: bool) -> Any:
    """The ``openslide`` module, or ``None`` when it is not installed and ``path`` may be read
    otherwise; a :class:`SourceError` when it is missing and ``needed``."""
    try:
        import openslide
    except ImportError:
        if needed:
            raise SourceError(f"{path} needs OpenSlide: pip install 'segtile[openslide]'") from None
        return None
    return openslide


class OpenSlideSource(Source):
    """A slide read with OpenSlide, one region at a time.

    Args:
        path: a slide file OpenSlide opens (for MIRAX, the ``.mrxs`` beside its data folder; for
            DICOM, any of the slide's ``.dcm`` files), or a folder of a DICOM slide's files.
        bands: 1-based indices among red, green and blue, order kept; ``None`` reads all three.

    Levels are OpenSlide's (``level_dimensions``); the georeference is the pixel size in µm
    (``openslide.mpp-x``; ``None`` when the slide has none), with no CRS and the identity
    transform to level-0 pixel coordinates. Validity is the alpha (see the module docstring).
    A level other than 0 is read at level-0 coordinates ``round(column × downsample)``: exact for
    the power-of-two downsamples of most slides; where a level's downsample is not a whole
    number OpenSlide resamples the region by the fraction of a pixel left over.
    Each thread reads through its own OpenSlide handle, and the source pickles to its path.

    Attributes (beside the :class:`Source` ones):
        path: the path opened.
        selected_bands: the 1-based indices among red, green, blue that are read.
    """

    has_mask = True

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> None:
        self.path = os.fspath(path)
        self.files = (self.path,)
        check_local_file(self.path)
        self._slide_file = dicom_slide_file(self.path) if os.path.isdir(self.path) else self.path
        slide = _open(self._slide_file)
        try:
            self.level_shapes = tuple((height, width) for width, height in slide.level_dimensions)
            self._downsamples = tuple(slide.level_downsamples)
            mpp = _microns_per_pixel(slide.properties)
        finally:
            slide.close()
        positions = band_positions(bands, len(_BAND_NAMES))
        self.selected_bands = tuple(p + 1 for p in positions)
        self.shape = (len(positions), *self.level_shapes[0])
        self.dtype = np.dtype(np.uint8)
        self.band_names = tuple(_BAND_NAMES[p] for p in positions)
        self.georef = Georef(transform=Affine.identity(), mpp=mpp)
        self._slides: PerThreadHandles[Any] = PerThreadHandles(functools.partial(_open_for_thread, self._slide_file))

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        return self.read_with_valid(window, level)[0]

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray:
        return self.read_with_valid(window, level)[1]

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The selected bands over ``window`` of ``level`` ``(bands, h, w)``, and True where the
        slide has data (alpha > 0)."""
        row_start, row_stop, col_start, col_stop = window_bounds(window, self.level_shapes, level)
        downsample = self._downsamples[level]
        location = (round(col_start * downsample), round(row_start * downsample))
        try:
            region = self._slides.get().read_region(location, level, (col_stop - col_start, row_stop - row_start))
        except Exception as exc:  # OpenSlideError, or a decoder's error on a damaged tile
            raise SourceError(f"cannot read {self.path}: {root_cause_line(exc)}") from None
        rgba = np.asarray(region)
        positions = [p - 1 for p in self.selected_bands]
        return np.ascontiguousarray(np.moveaxis(rgba[..., positions], -1, 0)), rgba[..., 3] > 0

    def select_bands(self, bands: Sequence[int]) -> OpenSlideSource:
        return OpenSlideSource(self.path, bands=compose_bands(self.selected_bands, bands))

    def close(self) -> None:
        self._slides.close()


def _open(path: str) -> Any:
    """``openslide.OpenSlide(path)``, its failures turned into :class:`SourceError`."""
    import openslide

    try:
        return openslide.OpenSlide(path)
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError...
        raise SourceError(f"cannot open {path} with OpenSlide: {root_cause_line(exc)}") from None


def _open_for_thread(path: str, _key: object) -> Any:
    return _open(path)


def _microns_per_pixel(properties: Any) -> float | None:
    """``openslide.mpp-x`` as a positive number, or ``None``."""
    try:
        mpp = float(properties.get("openslide.mpp-x", ""))
    except ValueError:
        return None
    return mpp if mpp > 0 else None
