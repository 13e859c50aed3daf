"""The table of output kinds, and the checks of a set of outputs before any work.

Each kind of output is one row of :data:`OUTPUT_KINDS`: the extensions it answers to (for any
input, or for slides only: a slide's ``.zarr`` is OME-Zarr and its ``.geojson`` QuPath's), every
file it writes (so that a sidecar in the way counts as the output existing), whether it is a
folder, whether it writes probabilities, and its writer. Writers take arrays and metadata
(:class:`Layers`), never the lazy result object. Several outputs are written together from one
inference pass by :func:`segtile.store.staging.write_outputs`, through a scratch work store.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da

from segtile.checks import is_real
from segtile.errors import CreationOptionError, OutputError, WriterInputError
from segtile.georef import Georef
from segtile.models.card import ModelCard
from segtile.writers.atomic import check_output
from segtile.writers.blocks import Advance
from segtile.writers.geotiff import check_creation_options, probabilities_path_for, write_mask, write_probabilities
from segtile.writers.legend import legend_sidecars
from segtile.writers.ome_zarr import write_ome_zarr
from segtile.writers.qupath import DEFAULT_OBJECTS, check_object_type, write_qupath_geojson
from segtile.writers.vector import class_indices, polygon_placement, polygon_sidecars, write_polygons
from segtile.writers.zarr_store import check_zarr_format, write_zarr


@dataclass(frozen=True)
class Layers:
    """What writers take: the arrays of a segmentation and where they sit.

    Attributes:
        labels: dask array ``(H, W)`` of class indices, ``nodata`` where nothing was segmented.
        probabilities: dask array ``(classes, H, W)`` float, NaN where nothing was segmented;
            ``None`` when no output asks for them.
        georef: CRS and transform, or µm/px, or nothing.
        card: the model card (classes, colours).
        nodata: the label of pixels that were not segmented.
        column_groups: ranges of chunk columns best computed one after another (the engine's
            stripes, see :func:`segtile.store.workstore.WorkStore.fill`); empty: all at once.
    """

    labels: da.Array
    probabilities: da.Array | None
    georef: Georef
    card: ModelCard
    nodata: int
    column_groups: tuple[range, ...] = ()


@dataclass(frozen=True)
class WriteOptions:
    """How outputs are written: the options of the ``segtile`` command that concern writers.

    Attributes:
        probabilities: write the per-class probabilities too (outputs that can).
        simplify, min_area: of polygons and QuPath objects, in output units (level-0 pixels for slides).
        skip_classes: names of classes that make no polygon or QuPath object.
        qupath_objects: the QuPath object type of a slide's GeoJSON features.
        creation_options: GDAL creation options of GeoTIFF outputs (the COG driver's), over
            segtile's defaults, as ``(KEY, VALUE)`` pairs.
        zarr_format: the Zarr version of Zarr stores (``.zarr``): 3, or 2 for GDAL before 3.8.
    """

    probabilities: bool = False
    simplify: float | None = None
    min_area: float | None = None
    skip_classes: tuple[str, ...] = ()
    qupath_objects: str = DEFAULT_OBJECTS
    creation_options: tuple[tuple[str, str], ...] = ()
    zarr_format: int = 3

    def check(self, card: ModelCard) -> None:
        """Raise a :class:`~segtile.errors.SegtileError` for an option that cannot apply to ``card``'s
        output: a negative or non-numeric tolerance or area, an unknown class to skip, an unknown
        QuPath object type."""
        for name, value in (("simplify", self.simplify), ("min_area", self.min_area)):
            if value is not None and not (is_real(value) and 0 <= value < math.inf):
                raise WriterInputError(f"{name} must be a finite number >= 0 (in the output's units), got {value!r}")
        class_indices(card, self.skip_classes)
        check_object_type(self.qupath_objects)
        check_zarr_format(self.zarr_format)


@dataclass(frozen=True)
class OutputKind:
    """One kind of output.

    Attributes:
        name: what it is, for messages.
        suffixes: the extensions that select it (lower case; ``.ome.zarr`` counts as one).
        slide_suffixes: the extensions that select it for slides only (see ``Georef.is_slide``).
        files: every path an output at ``path`` may have, ``path`` first, whatever the options
            (one that exists counts as the output existing; ``--overwrite`` replaces or removes each).
        write: ``write(target, layers, options, advance)`` writes the output to ``target`` (a
            temporary path; the files beside it land beside ``target``), calling ``advance(1)``
            after each chunk.
        probabilities: it writes probabilities when ``options.probabilities`` (and at which
            precision: ``"float32"`` or ``"uint8"``); ``None``: never.
        directory: the output is a folder.
        separate_probabilities: the probabilities go to a file of their own, a second pass
            over the data.
        family: the ``Segmentation`` writer that makes it: ``to_geotiff``, ``to_zarr`` or ``to_vector``.
    """

    name: str
    family: str
    suffixes: tuple[str, ...]
    files: Callable[[Path], list[Path]]
    write: Callable[[Path, Layers, WriteOptions, Advance], None]
    slide_suffixes: tuple[str, ...] = ()
    probabilities: str | None = None
    directory: bool = False
    separate_probabilities: bool = False


def _mask_files(path: Path) -> list[Path]:
    """The mask, its legend, and its probabilities with theirs, asked for this time or not: an old
    probabilities file beside a new mask would not be its own."""
    probabilities = probabilities_path_for(path)
    return [path, *legend_sidecars(path), probabilities, *_raster_sidecars(probabilities)]


def _raster_sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + ".aux.xml")]


def _write_mask(target: Path, layers: Layers, options: WriteOptions, advance: Advance) -> None:
    creation = dict(options.creation_options)
    write_mask(target, layers.labels, layers.georef, layers.card, nodata=layers.nodata, atomic=False,
               progress=advance, creation_options=creation)
    if options.probabilities:
        write_probabilities(probabilities_path_for(target), layers.probabilities, layers.georef, layers.card,
                            atomic=False, progress=advance, creation_options=creation)


def _write_zarr(target: Path, layers: Layers, options: WriteOptions, advance: Advance) -> None:
    write_zarr(target, layers.labels, layers.georef, layers.card, nodata=layers.nodata, atomic=False,
               probabilities=layers.probabilities if options.probabilities else None, zarr_format=options.zarr_format)
    advance(math.prod(layers.labels.numblocks))


def _write_ome_zarr(target: Path, layers: Layers, options: WriteOptions, advance: Advance) -> None:
    write_ome_zarr(target, layers.labels, layers.georef, layers.card, nodata=layers.nodata, atomic=False,
                   probabilities=layers.probabilities if options.probabilities else None)
    advance(math.prod(layers.labels.numblocks))


def _write_polygons(target: Path, layers: Layers, options: WriteOptions, advance: Advance) -> None:
    write_polygons(target, layers.labels, layers.georef, layers.card, nodata=layers.nodata,
                   simplify=options.simplify, min_area=options.min_area, skip_classes=options.skip_classes,
                   atomic=False, progress=advance)


def _write_qupath(target: Path, layers: Layers, options: WriteOptions, advance: Advance) -> None:
    write_qupath_geojson(target, layers.labels, layers.georef, layers.card, nodata=layers.nodata,
                         objects=options.qupath_objects, skip_classes=options.skip_classes,
                         simplify=options.simplify, min_area=options.min_area, atomic=False, progress=advance)


def _path_alone(path: Path) -> list[Path]:
    return [path]


# The first row that matches wins: .ome.zarr before .zarr, a slide's .geojson before polygons.
OUTPUT_KINDS: tuple[OutputKind, ...] = (
    OutputKind("mask (Cloud-Optimised GeoTIFF)", "to_geotiff", (".tif", ".tiff"), _mask_files, _write_mask,
               probabilities="uint8", separate_probabilities=True),
    OutputKind("OME-Zarr", "to_zarr", (".ome.zarr",), _path_alone, _write_ome_zarr, slide_suffixes=(".zarr",),
               probabilities="float32", directory=True),
    OutputKind("Zarr store", "to_zarr", (".zarr",), _path_alone, _write_zarr, probabilities="float32",
               directory=True),
    OutputKind("QuPath GeoJSON", "to_vector", (), _path_alone, _write_qupath, slide_suffixes=(".geojson",)),
    OutputKind("polygons", "to_vector", (".gpkg", ".geojson", ".fgb", ".shp"),
               lambda path: [path, *polygon_sidecars(path)], _write_polygons),
)


def output_kind(path: str | os.PathLike, slide: bool = False) -> OutputKind:
    """The kind of output ``path`` names, by its extension, for a slide or not.

    Raises:
        OutputError: no kind has that extension.
    """
    name = Path(os.fspath(path).rstrip("/\\")).name.lower()
    for kind in OUTPUT_KINDS:
        if name.endswith(kind.suffixes + (kind.slide_suffixes if slide else ())):
            return kind
    known = ", ".join(dict.fromkeys(s for kind in OUTPUT_KINDS for s in kind.suffixes))
    raise OutputError(f"unknown output format for {path}: use one of {known}")


@dataclass(frozen=True)
class PlannedOutput:
    """An output checked before any work: its path, its kind and every file it will write."""

    path: Path
    kind: OutputKind
    files: list[Path] = field(default_factory=list)


def plan_outputs(paths: Sequence[str | os.PathLike], options: WriteOptions, *, overwrite: bool = False,
                 protected: Iterable[str | os.PathLike] = (), slide: bool = False) -> list[PlannedOutput]:
    """Check every output and every file it writes, before any work; ``slide``: the outputs are
    a slide's (their kinds follow, see :data:`OUTPUT_KINDS`).

    Raises:
        OutputError: an unknown extension; two outputs writing the same file; a folder that is
            missing or read-only; an output that would replace a ``protected`` path (the input)
            or a folder that is not the output's own kind.
        OutputError: probabilities, or QuPath detections, asked for without an output that holds them.
        OutputExistsError: a file exists and ``overwrite`` is false.
        CreationOptionError: a GeoTIFF creation option GDAL refuses (or one given without a GeoTIFF).
    """
    protected = list(protected)
    planned, seen = [], {}
    for path in paths:
        path = Path(path)
        kind = output_kind(path, slide)
        files = kind.files(path)
        for written in files:
            resolved = Path(os.path.abspath(written))
            if resolved in seen:
                raise OutputError(f"{written} would be written twice (by {seen[resolved]} and {path}): "
                                  "give these outputs different names")
            seen[resolved] = path
        check_output(path, overwrite, files=files[1:], directory=kind.directory, protected=protected)
        if kind.directory and overwrite and path.is_dir() and not _is_zarr_store(path):
            raise OutputError(f"{path} is a folder but not a Zarr store: segtile replaces only stores it "
                              "could have written")
        planned.append(PlannedOutput(path, kind, files))
    if options.probabilities and not any(p.kind.probabilities for p in planned):
        raise OutputError("probabilities are asked for, but none of the outputs holds them: add a GeoTIFF (.tif) "
                          "or Zarr (.zarr) output")
    if options.qupath_objects != DEFAULT_OBJECTS and not any(p.kind.write is _write_qupath for p in planned):
        raise OutputError(f"QuPath objects of type {options.qupath_objects!r} are asked for, but none of the outputs "
                          "is a slide's GeoJSON (QuPath's)")
    if options.creation_options:
        if not any(p.kind.write is _write_mask for p in planned):
            raise CreationOptionError("creation options apply to GeoTIFF outputs (.tif, .tiff), and none is asked for")
        check_creation_options(dict(options.creation_options))
    if options.zarr_format != 3:
        _check_zarr_format_applies(planned, options.zarr_format)
    return planned


def _is_zarr_store(path: Path) -> bool:
    """Whether the folder ``path`` is a Zarr group (v3: ``zarr.json``; v2: ``.zgroup``)."""
    return (path / "zarr.json").exists() or (path / ".zgroup").exists()


def _check_zarr_format_applies(planned: Sequence[PlannedOutput], zarr_format: int) -> None:
    """Raise :class:`OutputError` when a Zarr version is asked for without a Zarr store to take
    it, or with an OME-Zarr output (OME-Zarr 0.5 is Zarr v3)."""
    check_zarr_format(zarr_format)
    ome = [p.path.name for p in planned if p.kind.write is _write_ome_zarr]
    if ome:
        raise OutputError(f"{ome[0]} is OME-Zarr 0.5, which is Zarr v3 only: leave the Zarr format at 3 for it")
    if not any(p.kind.write is _write_zarr for p in planned):
        raise OutputError(f"a Zarr format ({zarr_format}) is asked for, but none of the outputs is a Zarr store "
                          "(.zarr)")


def placement_notes(planned: Sequence[PlannedOutput], georef: Georef, shape: tuple[int, int]) -> list[str]:
    """Check, before any work, that every polygon output can hold the regions of a grid of
    ``shape`` with ``georef`` where they are; return what the user should know (the share of
    the image they leave out, having no geographic coordinates).

    Raises:
        PlacementError: a polygon output that cannot hold them.
    """
    clipped, counted, share = [], [], 0.0
    for output in planned:
        if output.kind.write is not _write_polygons:
            continue
        placement = polygon_placement(output.path, georef, shape)
        if placement.left_out:
            share = placement.left_out
            (clipped if placement.clips else counted).append(output.path.name)
    if not share:
        return []
    effects = ([f"{', '.join(clipped)} hold{'s' if len(clipped) == 1 else ''} only the regions' parts that have"]
               if clipped else []) + ([f"area_m2 in {', '.join(counted)} counts only those parts"] if counted else [])
    return [f"{share:.1%} of the image has no geographic coordinates (longitude and latitude) in its CRS: "
            f"{'; '.join(effects)}"]


def probability_precision(kinds: Sequence[OutputKind], options: WriteOptions) -> str | None:
    """The precision the probabilities must be kept at for ``kinds``: ``"float32"`` when one of
    them keeps floats, ``"uint8"`` when they only write bytes, ``None`` when none writes them."""
    if not options.probabilities:
        return None
    wanted = {kind.probabilities for kind in kinds} - {None}
    if not wanted:
        return None
    return "float32" if "float32" in wanted else "uint8"
