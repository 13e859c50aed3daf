"""The lazy result of :func:`segtile.segment`: logits, probabilities, labels and their writers."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from os import PathLike
from pathlib import Path
from typing import ContextManager

import dask.array as da
from rasterio.crs import CRS

from segtile.engine.graph import build_products, label_dtype, run_token
from segtile.engine.progress import Progress, TileTally, tile_progress
from segtile.errors import OutputError
from segtile.georef import Georef
from segtile.inference.predictor import ModelSpec
from segtile.models import ModelCard
from segtile.preview import Preview, preview
from segtile.sources import Source
from segtile.store.persist import Stored, persist
from segtile.store.staging import write_outputs
from segtile.tiling.plan import TilingOptions, stripe_chunk_columns, tile_runs
from segtile.writers.outputs import Layers, WriteOptions, output_kind


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A segmentation that is computed only when written or ``.compute()``-d.

    Attributes:
        source: the image on the grid the model runs on.
        spec: the model.
        georef: where the result sits (CRS and transform, or µm/px, or nothing).
        card: the model card (class names, colours...).
        options: the tiling the result is built with.
        inputs: the files read (no output may replace them).
        notes: what the user should know about how the job runs (e.g. the grid chosen).
        stored: where :meth:`persist` keeps the computed arrays; ``None`` for a lazy result.
    """

    source: Source
    spec: ModelSpec
    georef: Georef
    card: ModelCard
    options: TilingOptions
    inputs: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    stored: Stored | None = None

    def __repr__(self) -> str:
        return describe(self)

    @property
    def crs(self):
        return self.georef.crs

    @property
    def transform(self):
        return self.georef.transform

    @property
    def shape(self) -> tuple[int, int]:
        return self.source.height, self.source.width

    @property
    def nodata(self) -> int:
        """The label value of pixels that were not segmented (nodata input, skipped tiles)."""
        return label_dtype(self.card.num_classes)[1]

    @property
    def token(self) -> str:
        """The name of this result's tasks (its batch tasks report their tiles under it)."""
        return run_token(self.source, self.spec, self.options)

    def products(self, *names: str, skip: frozenset[tuple[int, int]] = frozenset()) -> dict[str, da.Array]:
        """Several of ``labels``, ``probabilities`` and ``logits`` from one pass: computed together
        (one ``dask.compute``, one ``da.store``), each chunk is stitched once. Chunks in ``skip``
        are left out (they were computed before; see :mod:`segtile.engine.graph`). A persisted result
        reads them from its store."""
        if self.stored is not None:
            return self.stored.products(names)
        return build_products(self.source, self.spec, self.options, names, skip)

    @cached_property
    def logits(self) -> da.Array:
        """Dask array ``(classes, H, W)`` float32: the stitched logits (the log of the averaged
        probabilities with test-time augmentation), NaN on nodata pixels."""
        return self.products("logits")["logits"]

    @cached_property
    def probabilities(self) -> da.Array:
        """Dask array ``(classes, H, W)`` float32: softmax of the logits, NaN on nodata."""
        return self.products("probabilities")["probabilities"]

    @cached_property
    def labels(self) -> da.Array:
        """Dask array ``(H, W)`` of class indices (uint8, or uint16 beyond 255 classes)."""
        return self.products("labels")["labels"]

    def progress(self, enabled: bool = True, progress: Progress | None = None, tally: TileTally | None = None,
                 skip: frozenset[tuple[int, int]] = frozenset()) -> ContextManager[TileTally]:
        """A context manager showing a tile progress bar (stderr) for this result's work done
        inside it, on the local scheduler or a ``dask.distributed`` cluster::

            with result.progress():
                result.to_geotiff("mask.tif")

        It yields the tally of tiles read and run (``tally``, when given, is the one filled).
        ``progress`` shows the tiles as one stage of a larger run instead of a bar of their own;
        the chunks in ``skip`` are left out of the total (done by an earlier run)."""
        progress = progress or Progress("bar" if enabled else "none", [("inference", 1.0)])
        return tile_progress(self.token, self.tile_count(skip), progress, tally)

    @property
    def column_groups(self) -> tuple[range, ...]:
        """The chunk columns of each stripe of the engine (:mod:`segtile.tiling.plan`): computing them one
        stripe after another bounds the memory on any scheduler; none for a persisted result."""
        if self.stored is not None:
            return ()
        width, options = self.shape[1], self.options
        return tuple(stripe_chunk_columns(width, options.chunk_size, options.stripe_width))

    def tile_count(self, skip: frozenset[tuple[int, int]] = frozenset()) -> int:
        """How many tiles computing the result reads (stripe boundaries count twice), leaving
        out the chunks in ``skip``; none for a persisted result."""
        return 0 if self.stored is not None else tile_runs(*self.shape, self.options, skip)

    def preview(self, max_size: int = 1024, over_image: bool = True, alpha: float = 0.5) -> Preview:
        """A quick look: the model run on the image resampled to about ``max_size`` pixels on its
        longer side (from the coarsest pyramid level fine enough), its labels in the card's
        colours over the image. Seconds for a gigapixel image, and it shows as a picture with a
        legend in Jupyter; ``.array`` is the RGB array, ``.save(path)`` writes a PNG.

        The model then sees the image at another scale than it was trained at: the preview is a
        look, not a result (see :mod:`segtile.preview`)."""
        return preview(self, max_size=max_size, over_image=over_image, alpha=alpha)

    def persist(self, path: str | PathLike | None = None, probabilities: bool = False) -> Segmentation:
        """Compute the labels (and the probabilities) once, into a work store at ``path`` (a new
        folder) or in a temporary folder, and return a result that reads them from there: its
        ``.labels``, ``.probabilities`` and writers never run the model again. Its ``.logits``
        are not kept. A temporary store is removed by :meth:`close` (or leaving a ``with``
        block), or when neither the result nor an array taken from it is in use any more;
        a store at ``path`` is kept (see :mod:`segtile.store.persist`).

        Wrap it in :meth:`progress` for a progress bar. To write several outputs in one pass
        without keeping anything, :meth:`write` does the same inside."""
        return replace(self, stored=persist(self, path, probabilities))

    def close(self) -> None:
        """Remove a persisted result's temporary store now; nothing for a lazy result."""
        if self.stored is not None:
            self.stored.close()

    def __enter__(self) -> Segmentation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_zarr(self, path: str | PathLike, *, probabilities: bool = False, overwrite: bool = False,
                zarr_format: int = 3) -> None:
        """Write labels (and probabilities) with their georeference and card to a Zarr store, v3
        or (``zarr_format=2``) v2 for GDAL before 3.8 (OME-Zarr, always v3, for slides and
        ``.ome.zarr`` paths)."""
        self._check_writer(path, "to_zarr")
        self.write(path, probabilities=probabilities, overwrite=overwrite, zarr_format=zarr_format)

    def to_geotiff(self, path: str | PathLike, *, probabilities: bool = False, overwrite: bool = False,
                   creation_options: Mapping[str, str] | None = None) -> None:
        """Write the mask as a Cloud-Optimised GeoTIFF on the source's grid (and, on request, the
        probabilities as a second GeoTIFF beside it, see ``probabilities_path_for``), with GDAL
        ``creation_options`` of the COG driver over segtile's (e.g. ``{"COMPRESS": "ZSTD"}``)."""
        self._check_writer(path, "to_geotiff")
        self.write(path, probabilities=probabilities, overwrite=overwrite, creation_options=creation_options)

    def to_vector(self, path: str | PathLike, *, simplify: float | None = None, min_area: float | None = None,
                  skip_classes: Sequence[str] = (), overwrite: bool = False) -> None:
        """Write one polygon per connected region per class (GeoPackage, GeoJSON, FlatGeobuf,
        Shapefile, by extension; a slide's GeoJSON is QuPath's), but for the ``skip_classes``."""
        self._check_writer(path, "to_vector")
        self.write(path, simplify=simplify, min_area=min_area, skip_classes=skip_classes, overwrite=overwrite)

    def _check_writer(self, path: str | PathLike, method: str) -> None:
        """Raise :class:`~segtile.writers.atomic.OutputError` unless ``path``'s extension names an
        output that the writer ``method`` makes (``to_vector("mask.tif")`` would write a mask)."""
        kind = output_kind(path, self.georef.is_slide)
        if kind.family != method:
            raise OutputError(f"{method}() cannot write {Path(path).name}: its extension names the {kind.name} "
                              f"format; use {kind.family}(), or write() to choose by extension")

    def layers(self, probabilities: bool = False) -> Layers:
        """The arrays and metadata writers take (the probabilities only when asked for: then both
        come from one pass)."""
        arrays = self.products("labels", "probabilities") if probabilities else {"labels": self.labels}
        return Layers(arrays["labels"], arrays.get("probabilities"), self.georef, self.card, self.nodata,
                      self.column_groups)

    def write(self, *paths: str | PathLike, probabilities: bool = False, simplify: float | None = None,
              min_area: float | None = None, skip_classes: Sequence[str] = (), qupath_objects: str = "annotation",
              creation_options: Mapping[str, str] | None = None, zarr_format: int = 3, overwrite: bool = False,
              progress: Progress | None = None,
              computing: Callable[[], ContextManager] = nullcontext, stage: bool | None = None) -> list[Path]:
        """Write several outputs from one inference pass; each format follows its extension.

        ``result.write("mask.tif", "regions.gpkg")`` runs the model once: the labels are
        computed into a scratch store beside the first output, each output is written from it,
        and the store is removed (:meth:`persist` keeps such a store, for writers called one
        after another). Either every output appears, complete, or none does: all are written
        under temporary names and renamed only when the last one is done. No output may replace
        the input. ``creation_options`` are GDAL's for GeoTIFF outputs (the COG driver's, e.g.
        ``{"COMPRESS": "ZSTD"}``), checked before any work; ``zarr_format`` the version of Zarr
        stores (3, or 2 for GDAL before 3.8). ``progress``, ``computing`` and
        ``stage`` are those of :func:`segtile.store.staging.write_outputs` (a persisted result
        is never staged again). Returns the paths written.
        """
        options = WriteOptions(probabilities=probabilities, simplify=simplify, min_area=min_area,
                               skip_classes=tuple(skip_classes), qupath_objects=qupath_objects,
                               creation_options=tuple((creation_options or {}).items()), zarr_format=zarr_format)
        return write_outputs(self.layers(probabilities), [str(p) for p in paths], options, overwrite=overwrite,
                             protected=self.inputs, progress=progress, computing=computing,
                             stage=False if self.stored is not None else stage)


MAX_NAMED_CLASSES = 6  # a repr names this many classes, then "…"


def describe(result: Segmentation) -> str:
    """One line for ``repr``: size, classes, where it sits, tiling, lazy or persisted, e.g.
    ``<Segmentation 791×718 px, 3 classes (water, land, cloud), EPSG:32618 at 300 m, tiles 193/25, lazy>``."""
    height, width = result.shape
    card = result.card
    names = ", ".join(card.classes[:MAX_NAMED_CLASSES]) + (", …" if card.num_classes > MAX_NAMED_CLASSES else "")
    parts = [f"{width}×{height} px", f"{card.num_classes} class{'es' if card.num_classes != 1 else ''} ({names})"]
    place = _place(result.georef)
    if place:
        parts.append(place)
    parts.append(f"tiles {result.options.tile_size}/{result.options.overlap}")
    parts.append("lazy" if result.stored is None else f"persisted in {result.stored.folder}")
    return f"<Segmentation {', '.join(parts)}>"


def _place(georef: Georef) -> str | None:
    """The CRS (its EPSG code, else its name) and pixel size, the µm per pixel of a slide, or
    the ground control points (and their CRS) or RPCs that place the image."""
    size = georef.pixel_size()
    if georef.placement == "gcps":
        return f"{len(georef.gcps)} GCPs" + (f" in {_crs_name(georef.gcp_crs)}" if georef.gcp_crs else "")
    if georef.placement == "rpcs":
        return "RPCs"
    if georef.crs is None:
        return None if size is None else f"{_short(size[0])} µm/px"
    name = _crs_name(georef.crs)
    return name if size is None else f"{name} at {_short(size[0])} m"


def _crs_name(crs: CRS) -> str:
    """A CRS's EPSG code, else its name."""
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else _wkt_name(crs.to_wkt())


def _wkt_name(wkt: str) -> str:
    """The name a WKT gives its CRS (``PROJCS["NAD83 / UTM zone 18N", …`` -> the quoted part)."""
    match = re.match(r'\s*\w+\["([^"]*)"', wkt)
    return match.group(1) if match else "a custom CRS"


def _short(value: float) -> str:
    """``value`` to three significant digits, without exponent: 300.04 -> 300, 0.4990 -> 0.499."""
    return f"{float(f'{value:.3g}'):g}"
