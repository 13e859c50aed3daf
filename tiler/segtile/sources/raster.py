"""Every GDAL raster (GeoTIFF stripped or tiled, COG, VRT, JP2...) through rasterio, window by window."""

from __future__ import annotations

import functools
import math
import os
import re
import tarfile
import warnings
import zipfile
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from segtile.errors import SourceError, root_cause_line
from segtile.georef import Georef
from segtile.sources.base import Source
from segtile.sources.files import (
    check_local_file,
    check_tiff_file_complete,
    is_connection_string,
    is_remote,
    is_tiff,
)
from segtile.sources.handles import PerThreadHandles
from segtile.sources.remote import check_range_requests, is_url
from segtile.sources.selection import band_positions, compose_bands, window_bounds

# GDAL's block cache defaults to 5% of the machine's memory, and fills with decoded blocks as a
# large image streams through: bound it (in MB) unless the user chose a size. 16 MB hold the blocks
# shared by neighbouring tiles of a batch; 64 MB took 45 MB more at the peak for the same CPU time
# (ZSTD and JPEG GeoTIFFs of 4000 and 8000 px, docs/performance.md section 3).
os.environ.setdefault("GDAL_CACHEMAX", "16")

# Colour interpretations that name a band better than its number; grey and undefined do not.
_NAMED_COLOURS = {ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha}
_SUBDATASET_SIZE = re.compile(r"^\[(\d+(?:x\d+)*)\]")  # "[232x383] Band1 (8-bit integer)"


class RasterSource(Source):
    """A raster file read with rasterio, one window at a time, never whole.

    Args:
        path: anything ``rasterio.open`` takes (a file, a VRT, ``/vsicurl/...``, a URL
            ``https://``, ``s3://``, ``gs://``, ``az://`` read by byte ranges: :mod:`segtile.sources.remote`).
        bands: 1-based indices among the image bands (an alpha band is not one), order kept;
            ``None`` reads every image band.

    Validity comes from GDAL's mask machinery (nodata value, alpha band, internal mask);
    pyramid levels are the dataset's overviews; the georeference is the CRS and the full
    affine transform (rotation included), the ground control points, the RPCs, or nothing.
    Each thread reads through its own dataset handle, and the source pickles to its path.

    Attributes (beside the :class:`Source` ones):
        path: the path opened.
        selected_bands: the 1-based indices among the image bands that are read.
        band_indexes: the GDAL band numbers read (they differ when an alpha band comes first).
    """

    def __init__(self, path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> None:
        self.path = os.fspath(path)
        resolved_by_gdal = is_remote(self.path) or is_connection_string(self.path)
        self.files = () if resolved_by_gdal else (self.path,)
        if not resolved_by_gdal:
            check_local_file(self.path)
        if is_url(self.path):
            check_range_requests(self.path)
        if is_tiff(self.path):
            check_tiff_file_complete(self.path)
        with _open_dataset(self.path, 0) as dataset, _reading_metadata(self.path):
            _check_has_bands(dataset, self.path)
            # each of rasterio's per-band lists asks GDAL about every band: read once, not once a band
            # (a netCDF of a year of hourly steps has 8760 bands)
            colours, flags = dataset.colorinterp, dataset.mask_flag_enums
            image_bands = _image_bands(colours)
            positions = band_positions(bands, len(image_bands))
            self.selected_bands = tuple(p + 1 for p in positions)
            self.band_indexes = tuple(image_bands[p] for p in positions)
            self.shape = (len(self.band_indexes), dataset.height, dataset.width)
            self.dtype = _real_dtype([dataset.dtypes[i - 1] for i in self.band_indexes], self.path)
            self.band_names = _band_names(dataset.descriptions, colours, self.band_indexes)
            self.georef = _georef(dataset)
            self.has_mask = all(MaskFlags.all_valid not in flags[i - 1] for i in self.band_indexes)
            self._nodata = (_nodata_values([flags[i - 1] for i in self.band_indexes],
                                           [dataset.nodatavals[i - 1] for i in self.band_indexes], self.dtype)
                            if self.has_mask else None)
            overview_count = len(dataset.overviews(self.band_indexes[0]))
        self.level_shapes = ((self.height, self.width),) + tuple(
            _overview_shape(self.path, level) for level in range(1, overview_count + 1)
        )
        self._datasets: PerThreadHandles[DatasetReader] = PerThreadHandles(functools.partial(_open_dataset, self.path))

    def read(self, window: Window, level: int = 0) -> np.ndarray:
        """The selected bands over ``window`` of ``level``, as stored: ``(bands, h, w)``."""
        bounds = _rasterio_window(window, self.level_shapes, level)
        try:
            return self._datasets.get(level).read(list(self.band_indexes), window=bounds, out_dtype=self.dtype)
        except RasterioError as exc:
            raise SourceError(f"cannot read {self.path}: {root_cause_line(exc)}") from None

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """The pixels of ``window`` and their validity; when the masks are plain nodata values,
        the validity comes from the pixels themselves (GDAL would read and compare them again)."""
        pixels = self.read(window, level)
        if self._nodata is None:
            return pixels, self.read_valid(window, level)
        nodata = self._nodata[:, None, None]
        missing = np.isnan(pixels) if np.isnan(nodata).all() else pixels == nodata
        return pixels, ~missing.all(axis=0)

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        """True where any selected band is valid per GDAL's masks (so nodata means all bands
        nodata, as in GDAL's dataset mask); ``None`` when the selected bands have no mask."""
        bounds = _rasterio_window(window, self.level_shapes, level)
        if not self.has_mask:
            return None
        try:
            masks = self._datasets.get(level).read_masks(list(self.band_indexes), window=bounds)
        except RasterioError as exc:
            raise SourceError(f"cannot read the mask of {self.path}: {root_cause_line(exc)}") from None
        return masks.any(axis=0)

    def select_bands(self, bands: Sequence[int]) -> RasterSource:
        return RasterSource(self.path, bands=compose_bands(self.selected_bands, bands))

    def close(self) -> None:
        self._datasets.close()


def _open_dataset(path: str, level: int) -> DatasetReader:
    """The dataset of pyramid ``level`` (0: full resolution, ``k``: the ``k``-th overview)."""
    options = {"overview_level": level - 1} if level else {}
    try:
        with warnings.catch_warnings():  # no geotransform is reported as Georef(), not warned about
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path, **options)
    except RasterioError as exc:
        if os.path.isdir(path):
            raise SourceError(f"input is a directory GDAL cannot read as a raster: {path}") from None
        reason = _archive_reason(path) or root_cause_line(exc)
        raise SourceError(f"cannot open {path}: {reason}") from None


def _archive_reason(path: str) -> str:
    """For a zip or tar archive GDAL cannot read as one raster, how to name a file inside it
    (GDAL's virtual file systems); empty for anything else."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members, scheme = [info.filename for info in archive.infolist() if not info.is_dir()], "/vsizip/"
        elif tarfile.is_tarfile(path):
            with tarfile.open(path) as archive:
                members, scheme = [member.name for member in archive.getmembers() if member.isfile()], "/vsitar/"
        else:
            return ""
    except (OSError, zipfile.BadZipFile, tarfile.TarError):
        return ""
    if not members:
        return ""
    files = "1 file" if len(members) == 1 else f"{len(members)} files"
    example = f"{scheme}{os.path.abspath(path)}/{members[0]}"
    return f"an archive of {files}, not one raster: name the file to read, e.g. {example}"


@contextmanager
def _reading_metadata(path: str) -> Iterator[None]:
    """Turn GDAL's failures while the dataset's metadata are read into :class:`SourceError`.

    GDAL opens some files whose metadata it then cannot express (a CRS that PROJ rejects) and
    reports the failure on the next call, whichever it is: one line, not a crash."""
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        raise SourceError(f"cannot read {path}: {root_cause_line(exc)}") from None


def _check_has_bands(dataset: DatasetReader, path: str) -> None:
    """Raise :class:`SourceError` for a container with no raster band of its own (HDF5, Zarr,
    netCDF with several variables), naming its largest subdataset, which can be segmented."""
    if dataset.count:
        return
    subdatasets = dataset.tags(ns="SUBDATASETS")
    names = [value for key, value in subdatasets.items() if key.endswith("_NAME")]
    if names:
        largest = max(names, key=lambda name: _subdataset_pixels(subdatasets, name))
        raise SourceError(f"{path} holds no raster band of its own but {len(names)} subdatasets: "
                          f"segment one of them, e.g. {largest}")
    raise SourceError(f"{path} holds no raster band")


def _subdataset_pixels(subdatasets: dict[str, str], name: str) -> int:
    """The size of the subdataset called ``name`` from its description (``[232x383] Band1
    (8-bit integer)``, as GDAL's drivers write it); 0 when it gives none."""
    key = next(key for key, value in subdatasets.items() if value == name)
    sizes = _SUBDATASET_SIZE.match(subdatasets.get(key.replace("_NAME", "_DESC"), ""))
    return math.prod(int(size) for size in sizes.group(1).split("x")) if sizes else 0


def _real_dtype(dtypes: Sequence[str], path: str) -> np.dtype:
    """The numpy dtype holding every one of ``dtypes`` (those of the bands read); complex samples
    (radar SLC, interferograms) are refused: a model takes real values, and which real values
    (amplitude, phase, intensity) is the user's choice."""
    complex_types = [d for d in dtypes if d.startswith("complex")]
    if complex_types:
        raise SourceError(f"{path} has complex samples ({complex_types[0]}), which no model takes: segment a real "
                          "band made from them, e.g. their amplitude (a VRT with the pixel function 'mod')")
    return np.result_type(*dtypes)


def _nodata_values(flags: Sequence[list[MaskFlags]], nodata: Sequence[float | None],
                   dtype: np.dtype) -> np.ndarray | None:
    """The nodata value of each band read (their mask ``flags`` and ``nodata`` values) when the
    bands' masks are nothing but those values (then validity can be computed from the pixels),
    else ``None`` (alpha bands, internal masks). In the pixels' ``dtype`` where that holds them
    exactly: comparing uint8 pixels with a float64 value would first convert every pixel to float64."""
    if any(band_flags != [MaskFlags.nodata] for band_flags in flags):
        return None
    values = np.array(nodata, dtype=np.float64)
    nan = np.isnan(values)
    if nan.any():  # NaN for some bands only: GDAL's masks say it exactly
        return values if nan.all() else None
    with np.errstate(invalid="ignore", over="ignore"):  # out of range: the check below keeps float64
        typed = values.astype(dtype)
    return typed if np.array_equal(typed.astype(np.float64), values) else values


def _overview_shape(path: str, level: int) -> tuple[int, int]:
    with _open_dataset(path, level) as overview:
        return overview.height, overview.width


def _image_bands(colours: Sequence[ColorInterp]) -> tuple[int, ...]:
    """1-based indexes of the bands that hold the image, from every band's colour
    interpretation: all but an alpha band (that is a mask)."""
    bands = tuple(i for i, colour in enumerate(colours, start=1) if colour != ColorInterp.alpha)
    return bands or tuple(range(1, len(colours) + 1))


def _band_names(descriptions: Sequence[str | None], colours: Sequence[ColorInterp],
                band_indexes: Sequence[int]) -> tuple[str, ...]:
    """The name of each band read: its description, else its colour, else ``band N``."""
    return tuple(descriptions[i - 1] or (colours[i - 1].name if colours[i - 1] in _NAMED_COLOURS else f"band {i}")
                 for i in band_indexes)


def _georef(dataset: DatasetReader) -> Georef:
    """CRS and affine transform (a dataset without geotransform, which GDAL reports as the
    identity, or one GDAL failed to give, has none), else the ground control points and their CRS;
    and the RPCs (from the file's tags, or an ``.RPB`` / ``_RPC.TXT`` beside it), whichever the
    dataset has."""
    transform = dataset.transform if _has_geotransform(dataset) else None
    gcps, gcp_crs = dataset.gcps if transform is None else ([], None)
    return Georef(crs=dataset.crs, transform=transform, gcps=tuple(gcps), gcp_crs=gcp_crs if gcps else None,
                  rpcs=dataset.rpcs)


def _has_geotransform(dataset: DatasetReader) -> bool:
    """Whether GDAL gives the dataset a geotransform: not the identity it reports for none, nor
    one that maps pixels to no area or to no number (some drivers that fail to give one leave
    whatever was in memory: GDAL 3.10's PNM reader, ``4.6e-310`` everywhere)."""
    transform = dataset.transform
    determinant = transform.determinant
    return not transform.is_identity and math.isfinite(determinant) and determinant != 0


def _rasterio_window(window: Window, level_shapes: Sequence[tuple[int, int]], level: int) -> Window:
    row_start, row_stop, col_start, col_stop = window_bounds(window, level_shapes, level)
    return Window(col_start, row_start, col_stop - col_start, row_stop - row_start)
