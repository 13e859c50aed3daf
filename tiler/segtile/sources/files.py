"""Checks on input files before a backend opens them, so bad input fails early in one line."""

from __future__ import annotations

import os
import re
import warnings
from urllib.parse import urlparse

import numpy as np
import rasterio
import tifffile
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from segtile.errors import SourceError, refuse_sequential, root_cause_line
from segtile.sources.remote import RemoteFile, is_url

TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
GEOTIFF_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeys
LENGTH_UNITS = (tifffile.RESUNIT.CENTIMETER, tifffile.RESUNIT.MILLIMETER, tifffile.RESUNIT.MICROMETER)
SCREEN_DPI = (72, 96, 150, 300, 600, 1200)
"""Screen and print resolutions, in dots per inch. Resolution tags say how large to show or print
an image; imaging software writes these values by default, in inches or converted into a unit
of length (72 dpi is 28.3465 pixels per centimetre), and they are never a pixel size. A
microscope's tags in a unit of length (an NDPI's 44150 px/cm: 0.2265 µm) are."""
SCREEN_DPI_TOLERANCE = 0.01  # relative: 28.35 or 28.3 px/cm are 72 dpi rounded
MICRONS_PER_INCH = 25_400
SLIDE_SUFFIXES = (".svs", ".ndpi", ".ome.tif", ".ome.tiff", ".scn", ".bif")
# A GDAL driver's name and a colon: a subdataset (NETCDF:"f.nc":var, HDF4_SDS:..., GPKG:f.gpkg:table);
# two characters at least, so that a Windows drive letter (C:) is no driver.
_CONNECTION_STRING = re.compile(r"^[A-Za-z][A-Za-z0-9_]+:")


def is_remote(path: str) -> bool:
    """Whether GDAL resolves ``path`` itself (``/vsicurl/...``, ``s3://...``): no local checks."""
    return path.startswith("/vsi") or "://" in path


def is_connection_string(path: str) -> bool:
    """Whether ``path`` names no local file but a dataset inside one in a GDAL driver's syntax
    (``NETCDF:"f.nc":var``, the subdataset names ``gdalinfo`` lists), or describes one in XML
    given in place of a path (a VRT's, or a mosaic's tile index: :mod:`segtile.sources.mosaic`):
    GDAL resolves it, so no local checks."""
    return not os.path.exists(path) and (_CONNECTION_STRING.match(path) is not None or path.startswith("<"))


def check_local_file(path: str) -> None:
    """Raise :class:`SourceError` when ``path`` is missing, empty, or a FIFO, socket or character
    device (:func:`~segtile.errors.refuse_sequential`); directories are let through: GDAL reads
    some, such as Zarr stores."""
    if not os.path.exists(path):
        raise SourceError(f"input not found: {path}")
    refuse_sequential(path, "input", SourceError)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise SourceError(f"input is empty: {path}")


def is_tiff(path: str) -> bool:
    """Whether ``path`` is a local file that starts like a TIFF or BigTIFF."""
    if is_remote(path) or not os.path.isfile(path):
        return False
    with open(path, "rb") as file:
        return file.read(4) in TIFF_MAGICS


def is_slide(path: str) -> bool:
    """Whether ``path`` is a whole-slide / microscopy TIFF (read with tifffile, not GDAL).

    Known suffixes decide at once (for a URL, the only test:
    its bytes are not fetched to guess); other TIFFs are slides when tifffile recognises an Aperio,
    Hamamatsu, OME, Leica or Ventana layout in their first page, or when they are no GeoTIFF but
    a pyramid or an image whose resolution tags give a microscope's pixel size
    (:func:`tagged_pixel_size`), and GDAL finds no georeference for them either (RPCs in their
    tags or an ``.RPB`` beside them, a world file, a ``.aux.xml``).
    """
    name = urlparse(path).path if is_url(path) else path
    if name.lower().endswith(SLIDE_SUFFIXES):
        return True
    if not is_tiff(path):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            if tif.is_svs or tif.is_ndpi or tif.is_ome or tif.is_scn or tif.is_bif:
                return True
            page = tif.pages.first
            if any(code in page.tags for code in GEOTIFF_TAGS):
                return False
            looks_like_a_slide = len(tif.series[0].levels) > 1 or tagged_pixel_size(page)[0] is not None
    except Exception:  # an unreadable TIFF is reported by the backend that then tries it
        return False
    return looks_like_a_slide and not _georeferenced_by_gdal(path)


def _georeferenced_by_gdal(path: str) -> bool:
    """Whether GDAL places ``path`` on the Earth (a geotransform, GCPs or RPCs, from the file or
    its side-cars)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                return not dataset.transform.is_identity or bool(dataset.gcps[0]) or dataset.rpcs is not None
    except RasterioError:  # GDAL cannot open it: not a raster of GDAL's
        return False


def tagged_pixel_size(page: tifffile.TiffPage) -> tuple[float | None, str | None]:
    """The pixel size in µm that ``page``'s resolution tags give, or ``None``; and a note when
    tags in a unit of length were set aside.

    Tags in inches, or without a unit, give none: inches are the unit of screens and printers.
    Tags in a unit of length (centimetre, millimetre, micrometre) give one, unless their value is
    a screen or print resolution of :data:`SCREEN_DPI` converted into that unit (72 dpi as
    28.3465 px/cm would be 352.8 µm pixels): the pixel size is then unknown, and the note says so.
    """
    if "XResolution" not in page.tags or page.resolutionunit not in LENGTH_UNITS:
        return None, None
    pixels_per_micron = page.get_resolution(tifffile.RESUNIT.MICROMETER)[0]
    if not pixels_per_micron > 0:
        return None, None
    dpi = pixels_per_micron * MICRONS_PER_INCH
    screen = next((value for value in SCREEN_DPI if abs(dpi - value) <= value * SCREEN_DPI_TOLERANCE), None)
    if screen is None:
        return 1.0 / pixels_per_micron, None
    unit = page.resolutionunit.name.lower()
    return None, (f"its resolution tags say {page.get_resolution()[0]:g} pixels per {unit}, that is {screen} dpi, "
                  "a screen or print resolution and no pixel size: its pixel size is taken as unknown")


def open_tiff(path: str) -> tifffile.TiffFile:
    """``tifffile.TiffFile(path)`` (a URL: through fsspec, by byte ranges), its failures turned
    into :class:`SourceError`."""
    try:
        return tifffile.TiffFile(RemoteFile(path) if is_url(path) else path)
    except SourceError:
        raise
    except Exception as exc:  # tifffile raises many kinds (TiffFileError, IndexError...) on bad bytes
        raise SourceError(f"cannot open {path} as a TIFF: {root_cause_line(exc)}") from None


def check_tiff_file_complete(path: str) -> None:
    """Raise :class:`SourceError` when the TIFF at ``path`` is truncated (see
    :func:`check_tiff_complete`); a file tifffile cannot parse is left to GDAL to judge."""
    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # any parse failure: GDAL's own error, when it opens the file, is the one reported
        return
    with tif:
        check_tiff_complete(tif, path, structure=False)


def check_tiff_complete(tif: tifffile.TiffFile, path: str, structure: bool = True) -> None:
    """Raise :class:`SourceError` when image data of ``tif`` lie past the end of the file.

    A truncated TIFF (an interrupted copy or download) often opens fine and fails only on the
    tiles that are missing, deep inside a run; comparing the tile offsets with the file size
    catches it at open for the cost of reading the offset tables. A structure tifffile cannot
    parse (a damaged description, tile tables that disagree) is an error too with
    ``structure``; without, it is left for another reader (GDAL) to judge.
    """
    size = tif.filehandle.size
    try:
        pages = [page for series in tif.series for level in series.levels for page in level.pages]
    except Exception as exc:  # tifffile parses the series lazily: a damaged description fails here
        if not structure:
            return
        raise SourceError(f"cannot open {path}: its TIFF structure is damaged ({root_cause_line(exc)})") from None
    for page in pages:
        if page is None or not page.dataoffsets:
            continue
        if len(page.dataoffsets) != len(page.databytecounts):
            if not structure:
                continue
            raise SourceError(f"cannot open {path}: its TIFF structure is damaged (tile offsets and sizes disagree)")
        end = int(np.max(np.add(page.dataoffsets, page.databytecounts, dtype=np.int64)))
        if end > size:
            raise SourceError(f"{path} is truncated: its image data run to byte {end} but the file has {size} bytes")

