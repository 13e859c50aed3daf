"""Cloud-Optimised GeoTIFFs: the class mask and the per-class probabilities.

GDAL's COG driver writes only by copying a whole source dataset (it orders tiles and overviews
for HTTP range reads). So the chunks are first streamed into a tiled, compressed staging GeoTIFF
beside the output (``da.store``, one chunk at a time), which the COG driver then copies, building
the overviews: mode for the mask (a class, never a blend of classes), average for probabilities.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetWriter
from rasterio.rpc import RPC
from rasterio.windows import Window

from segtile.errors import CreationOptionError, WriterInputError, one_line
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import destination
from segtile.writers.blocks import Advance, Key, as_labels, as_probabilities, store_chunks
from segtile.writers.legend import colour_table, legend_sidecars, write_legend_sidecars

BLOCK_SIZE = 512
COG_OPTIONS = {"BLOCKSIZE": str(BLOCK_SIZE), "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
               "COMPRESS": "DEFLATE", "PREDICTOR": "YES"}  # DEFLATE: every GDAL and QGIS reads it
"""The COG driver's creation options segtile writes with; the user's (``--co``) override them."""
INTEGER_OPTIONS = ("BLOCKSIZE", "LEVEL", "QUALITY", "OVERVIEW_COUNT", "OVERVIEW_QUALITY", "NBITS", "ZOOM_LEVEL")
"""Options GDAL reads as integers: checked here, since GDAL reads a bad one as 0 and may abort
the whole process (``BLOCKSIZE=abc``)."""
PROBABILITY_SCALE = 255  # uint8 probabilities: stored value = round(p * 255)
MICRONS_PER_CENTIMETRE = 1e4


def probabilities_path_for(mask_path: str | PathLike) -> Path:
    """The probabilities' file beside a mask: ``mask.tif`` -> ``mask.probabilities.tif``."""
    mask_path = Path(mask_path)
    return mask_path.with_name(f"{mask_path.stem}.probabilities{mask_path.suffix}")


def check_creation_options(options: Mapping[str, str]) -> None:
    """Raise :class:`CreationOptionError` unless GDAL's COG driver takes every one of ``options``
    (``{"COMPRESS": "ZSTD"}``...): integers are checked here, the rest by GDAL's own validation,
    on a copy of a tiny image in memory, before any real work."""
    options = _upper_keys(options)
    for key, value in options.items():
        if key in INTEGER_OPTIONS and not (value.isdigit() and int(value) > 0):
            raise CreationOptionError(f"creation option {key}={value}: expected a positive integer")
    block = options.get("BLOCKSIZE")
    if block is not None and int(block) % 16:
        raise CreationOptionError(f"creation option BLOCKSIZE={block}: tiles must be a multiple of 16 pixels")
    name = f"/vsimem/segtile-check-{uuid.uuid4().hex}"
    with _gdal_complaints() as complaints, warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(f"{name}.tif", "w", driver="GTiff", width=16, height=16, count=1,
                               dtype="uint8") as image:
                image.write(np.zeros((1, 16, 16), np.uint8))
            rasterio.shutil.copy(f"{name}.tif", f"{name}.cog.tif", driver="COG", **cog_options(options, "MODE"))
        except RasterioError as exc:
            complaints.append(one_line(exc))
        finally:
            for suffix in (".tif", ".cog.tif"):
                if rasterio.shutil.exists(f"{name}{suffix}"):
                    rasterio.shutil.delete(f"{name}{suffix}")
    if complaints:
        given = " ".join(f"{key}={value}" for key, value in options.items())
        raise CreationOptionError(f"GDAL's COG driver refuses the creation options {given}: {complaints[0]}")


def cog_options(options: Mapping[str, str] | None, overview_resampling: str) -> dict[str, str]:
    """The COG driver's creation options: segtile's, then ``options`` over them (keys in any case)."""
    return {**COG_OPTIONS, "OVERVIEW_RESAMPLING": overview_resampling, **_upper_keys(options or {})}


def _upper_keys(options: Mapping[str, object]) -> dict[str, str]:
    """``options`` as GDAL names them: keys upper-cased, values as text."""
    return {key.upper(): str(value) for key, value in options.items()}


@contextmanager
def _gdal_complaints() -> Iterator[list[str]]:
    """The warnings GDAL emits inside the block (rasterio logs them), without the error class."""
    complaints: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            complaints.append(message.split(" in ", 1)[1] if message.startswith("CPLE_") else message)

    logger, handler = logging.getLogger("rasterio._env"), Collect(logging.WARNING)
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever the application set its loggers to
    logger.addHandler(handler)
    try:
        yield complaints
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def write_mask(path: str | PathLike, labels: Any, georef: Georef, card: ModelCard, *,
               nodata: int = 255, overwrite: bool = False, progress: Advance | None = None,
               atomic: bool = True, creation_options: Mapping[str, str] | None = None) -> Path:
    """Write a class mask as a Cloud-Optimised GeoTIFF with its legend; return ``path``.

    One band of the labels' type (uint8, or uint16 beyond 255 classes) on the georeference's
    grid: its CRS and transform (a transform without CRS kept as it is), or its ground control
    points with their CRS, and its RPCs (none of them when there is none; a slide's µm per pixel
    as the TIFF resolution tags, so microscopy readers and segtile read it back as a slide),
    ``nodata`` set, tiles of 512, DEFLATE with predictor, overviews by mode, the card's colours
    as a colour table (``nodata`` transparent). Class names go in the band's ``CLASS_NAMES`` tag (JSON), the card in the
    ``SEGTILE_CARD`` tag; beside the mask, ``NAME.qml`` (QGIS style) and ``NAME.tif.aux.xml``
    (GDAL category names).

    Args:
        labels: dask (or numpy) array ``(H, W)`` of class indices, ``nodata`` where invalid.
        progress: called with 1 after each chunk is written.
        atomic: write under a temporary name and rename at the end; ``False`` writes ``path``
            directly (the caller already holds a temporary path, see ``OutputSet``).
        creation_options: GDAL COG creation options over segtile's (:data:`COG_OPTIONS`), e.g.
            ``{"COMPRESS": "ZSTD"}``; check them first with :func:`check_creation_options`.
    """
    labels = as_labels(labels, card, nodata)

    def fill(stage: DatasetWriter) -> None:
        stage.write_colormap(1, colour_table(card, nodata))
        stage.set_band_description(1, "class")
        stage.update_tags(1, CLASS_NAMES=json.dumps(list(card.classes)))
        store_chunks(labels, lambda key, chunk: stage.write(chunk, 1, window=_window(key)),
                     progress=progress)

    with destination(path, overwrite, atomic, files=legend_sidecars(Path(path))) as target:
        profile = _profile(labels.shape, 1, labels.dtype, georef, nodata=nodata)
        _write_cog(target, profile, georef, card, fill, cog_options(creation_options, "MODE"))
        write_legend_sidecars(target, card)
    return Path(path)


def write_probabilities(path: str | PathLike, probabilities: Any, georef: Georef, card: ModelCard, *,
                        overwrite: bool = False, dtype: str = "uint8", progress: Advance | None = None,
                        atomic: bool = True, creation_options: Mapping[str, str] | None = None) -> Path:
    """Write per-class probabilities as a Cloud-Optimised GeoTIFF, one band per class; return ``path``.

    Band ``i + 1`` holds class ``i`` and is described by its name. ``dtype="uint8"`` stores
    ``round(p * 255)`` with a scale of 1/255 in the band metadata (GDAL and QGIS unscale to
    0–1), and marks pixels without a probability (NaN: nodata input, skipped tiles) in the
    dataset's mask band; ``dtype="float32"`` stores ``p`` itself with NaN as nodata. Same grid,
    tiling and compression as :func:`write_mask` (and its ``creation_options``); overviews by average.
    """
    if dtype not in ("uint8", "float32"):
        raise WriterInputError(f"probabilities dtype must be 'uint8' or 'float32', got {dtype!r}")
    probabilities = as_probabilities(probabilities, card)
    probabilities = probabilities.rechunk({0: -1})  # all classes of a pixel in one chunk
    classes = probabilities.shape[0]
    as_uint8 = dtype == "uint8"

    def write_chunk(stage: DatasetWriter, key: Key, chunk: np.ndarray) -> None:
        window = _window(key[1:])
        if as_uint8:
            stage.write(np.round(np.nan_to_num(np.clip(chunk, 0, 1)) * PROBABILITY_SCALE).astype(np.uint8),
                        window=window)
            stage.write_mask(np.where(np.isnan(chunk).any(axis=0), 0, 255).astype(np.uint8), window=window)
        else:
            stage.write(chunk.astype(np.float32), window=window)

    def fill(stage: DatasetWriter) -> None:
        stage.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (classes - 1)
        for band, name in enumerate(card.classes, start=1):
            stage.set_band_description(band, name)
            stage.update_tags(band, CLASS_ID=str(band - 1), CLASS_NAME=name)
        if as_uint8:
            stage.scales = [1 / PROBABILITY_SCALE] * classes
        store_chunks(probabilities, lambda key, chunk: write_chunk(stage, key, chunk), progress=progress)

    with destination(path, overwrite, atomic) as target:
        profile = _profile(probabilities.shape[1:], classes, np.dtype(dtype), georef,
                           nodata=None if as_uint8 else float("nan"), photometric="MINISBLACK")
        _write_cog(target, profile, georef, card, fill, cog_options(creation_options, "AVERAGE"))
    return Path(path)


def _profile(shape: tuple[int, int], count: int, dtype: np.dtype, georef: Georef,
             nodata: float | None, **options: str) -> dict[str, Any]:
    """Creation options of the staging GeoTIFF: the grid, the type, tiling, fast compression."""
    height, width = shape
    return {
        "driver": "GTiff", "width": width, "height": height, "count": count, "dtype": dtype.name,
        **({"crs": georef.crs, "transform": georef.transform} if _writes_transform(georef) else {}), "nodata": nodata,
        "tiled": True, "blockxsize": BLOCK_SIZE, "blockysize": BLOCK_SIZE, "interleave": "band",
        "compress": "DEFLATE", "zlevel": 1, "bigtiff": "IF_SAFER", **options,
    }


def _writes_transform(georef: Georef) -> bool:
    """Whether the mask holds the georeference's transform (and its CRS, if any): a raster's,
    with or without a CRS (a world file's alone); not a slide's, whose transform only leads to
    its level-0 pixels (a geotransform would make readers take it for a map), and never a CRS
    without a transform (a CRS over pixel coordinates)."""
    return georef.transform is not None and not georef.is_slide


def _write_control_points(stage: DatasetWriter, georef: Georef) -> None:
    """The ground control points (with their CRS) and the RPCs of ``georef``, as GDAL writes
    them in a GeoTIFF (tie points and GeoKeys; the RPC tag), so gdalwarp and QGIS place the mask
    as they place the input."""
    if georef.gcps:
        stage.gcps = (list(georef.gcps), georef.gcp_crs)
    if georef.rpcs is not None:
        stage.update_tags(ns="RPC", **_rpc_metadata(georef.rpcs))
        if georef.crs is not None and not _writes_transform(georef):
            stage.crs = georef.crs  # the CRS an RPC image declares (WGS 84), as the input holds it


def _rpc_metadata(rpcs: RPC) -> dict[str, str]:
    """``rpcs`` as GDAL's RPC metadata domain holds them. rasterio's ``RPC.to_gdal`` (1.4) leaves
    out an error field that is 0 (``ERR_RAND = 0.0``), which GDAL then writes as -1, unknown."""
    fields = {**rpcs.to_gdal(), "ERR_BIAS": rpcs.err_bias, "ERR_RAND": rpcs.err_rand}
    def text(value: Any) -> str:  # numpy's repr (np.float64(97.0)) is no number to GDAL
        if isinstance(value, str):  # coefficients, already as GDAL lists them
            return value
        if isinstance(value, (list, tuple)):
            return " ".join(repr(float(v)) for v in value)
        return repr(float(value))

    return {key: text(value) for key, value in fields.items() if value is not None}


def _dataset_tags(georef: Georef, card: ModelCard) -> dict[str, str]:
    """Dataset metadata: the model card (JSON) and, for slides, the microns per pixel, also as
    the TIFF resolution tags (pixels per centimetre) every microscopy reader takes the scale from
    (GDAL writes ``TIFFTAG_*`` items as those tags)."""
    tags = {"SEGTILE_CARD": json.dumps(card.to_dict())}
    microns = georef.microns_per_pixel()
    if microns is not None:
        tags["SEGTILE_MPP"] = repr(georef.mpp)
        tags["TIFFTAG_XRESOLUTION"] = repr(MICRONS_PER_CENTIMETRE / microns[0])
        tags["TIFFTAG_YRESOLUTION"] = repr(MICRONS_PER_CENTIMETRE / microns[1])
        tags["TIFFTAG_RESOLUTIONUNIT"] = "3"  # centimetre
    return tags


def _write_cog(target: Path, profile: dict[str, Any], georef: Georef, card: ModelCard,
               fill: Callable[[DatasetWriter], None], options: dict[str, str]) -> None:
    """Create the staging GeoTIFF, georeference and tag it, let ``fill`` write its bands, copy
    it to ``target`` as a COG with the creation ``options``."""
    with tempfile.TemporaryDirectory(prefix=".segtile-stage-", dir=target.parent) as folder:
        stage_path = Path(folder) / "stage.tif"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain arrays, slides
            with rasterio.open(stage_path, "w", **profile) as stage:
                _write_control_points(stage, georef)
                stage.update_tags(**_dataset_tags(georef, card))
                fill(stage)
            rasterio.shutil.copy(stage_path, target, driver="COG", **options)


def _window(key: Key) -> Window:
    """The window of a chunk from its ``(rows, cols)`` slices."""
    rows, cols = key
    return Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
