"""The items of a run over many inputs: the inputs expanded (folders, globs, ``@lists``), the
output templates filled for each (``{stem}``...), all checked before any work; and whether an
item is finished (every output in place)."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from string import Formatter
from urllib.parse import urlsplit

from segtile.errors import BatchError
from segtile.sources import Source, open_mosaic, open_source
from segtile.sources.files import is_remote
from segtile.store.identity import work_folder
from segtile.store.workstore import is_work_store
from segtile.writers.atomic import recover_leftovers
from segtile.writers.geotiff import check_creation_options, probabilities_path_for
from segtile.writers.outputs import WriteOptions, output_kind

IMAGE_SUFFIXES = frozenset({
    # GDAL rasters (rasterio.drivers.raster_driver_extensions(), less the sidecars and vector formats it lists)
    ".tif", ".tiff", ".vrt", ".jp2", ".j2k", ".img", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".nc",
    ".ntf", ".hgt", ".asc", ".bil", ".dem", ".mrf", ".ecw", ".sid", ".rst", ".sdat", ".ers", ".kea",
    # whole-slide images (tifffile, OpenSlide)
    ".svs", ".ndpi", ".scn", ".bif", ".qptiff", ".mrxs", ".vms", ".vmu", ".svslide",
})
"""Extensions of the files a folder input contributes (compared in lower case)."""
PLACEHOLDERS = {
    "stem": "the input's name without its extension (slide.svs -> slide; scene.ome.tif -> scene)",
    "name": "the input's name with its extension",
    "parent": "the name of the folder holding the input",
    "index": "the input's position in the expanded list, from 1 ({index:03d} pads it)",
}
"""The placeholders an output template may hold, and what each becomes."""
DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")  # removed whole from a {stem}
GLOB_CHARACTERS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One input of a cohort and the outputs it writes (templates filled); or a mosaic of
    ``parts``, the inputs read as one image (``input`` then names them all, ``;``-separated)."""

    input: str
    outputs: tuple[str, ...]
    index: int
    parts: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[str, ...]:
        """The inputs the item reads: no output may replace them, and its work store is theirs."""
        return self.parts or (self.input,)

    def open(self) -> Source:
        """The item's image: its input, or the mosaic of its parts."""
        return open_mosaic(self.parts) if self.parts else open_source(self.input)



# --- inputs -------------------------------------------------------------------------------------


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Every input ``inputs`` name, in order, each once: folders, globs and ``@lists`` expanded
    (see the module docstring), remote inputs untouched.

    Raises:
        BatchError: a list file that cannot be read, a glob or a folder that yields no image.
    """
    expanded: list[str] = []
    for given in inputs:
        expanded += _expand_one(os.fspath(given))
    return list(dict.fromkeys(expanded))


def names_many(inputs: Sequence[str | os.PathLike]) -> bool:
    """Whether ``inputs`` make a cohort whatever they expand to: several, or a folder, a glob or
    a list (a run over one plain input keeps the behaviour of a single run)."""
    if len(inputs) != 1:
        return True
    given = os.fspath(inputs[0])
    return given.startswith("@") or _is_glob(given) or _is_folder_of_images(given)


def _expand_one(given: str) -> list[str]:
    if is_remote(given):
        return [given]
    if given.startswith("@"):
        return [path for line in _list_lines(given[1:]) for path in _expand_one(line)]
    if _is_glob(given):
        matches = sorted(path for path in glob.glob(given, recursive=True) if _is_image_file(Path(path)))
        if not matches:
            raise BatchError(f"no image matches {given} (images: {_suffix_names()})")
        return matches
    if _is_folder_of_images(given):
        found = sorted(str(path) for path in Path(given).iterdir() if _is_image_file(path))
        if not found:
            raise BatchError(f"the folder {given} holds no image segtile reads (by extension: {_suffix_names()})")
        return found
    return [given]


def _list_lines(path: str) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchError(f"cannot read the list of inputs @{path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _is_glob(given: str) -> bool:
    return not os.path.exists(given) and bool(GLOB_CHARACTERS & set(given))


def _is_folder_of_images(given: str) -> bool:
    """A folder to list, not one GDAL reads as one image (a Zarr store)."""
    path = Path(given)
    return path.is_dir() and not path.name.lower().endswith(".zarr")


def _is_image_file(path: Path) -> bool:
    return (not path.name.startswith(".") and path.is_file()
            and any(path.name.lower().endswith(suffix) for suffix in IMAGE_SUFFIXES))


def _suffix_names() -> str:
    return " ".join(sorted(IMAGE_SUFFIXES))


# --- outputs ------------------------------------------------------------------------------------


def check_templates(outputs: Sequence[str | os.PathLike], many: bool) -> None:
    """Raise :class:`BatchError` when an output names an unknown placeholder, or (``many``)
    holds none: several inputs would all write the same file."""
    for output in outputs:
        fields = _fields(os.fspath(output))
        if many and not fields:
            raise BatchError(f"with several inputs each output needs a placeholder, e.g. {{stem}}_mask.tif, "
                             f"not {output} (placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")


def _fields(template: str) -> list[str]:
    try:
        fields = [name for _, name, _, _ in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise BatchError(f"output {template}: {exc} (write a brace as {{{{ or }}}})") from None
    for name in fields:
        if name not in PLACEHOLDERS:
            raise BatchError(f"output {template}: unknown placeholder {{{name}}} "
                             f"(placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)})")
    return fields


def fill_template(template: str, input_path: str, index: int) -> str:
    """``template`` with its placeholders filled for ``input_path``, the ``index``-th (from 1);
    a URL's name and folder are those of its path."""
    if is_remote(input_path):
        path: PurePath = PurePosixPath(urlsplit(input_path).path if "://" in input_path else input_path)
        parent = path.parent.name
    else:
        path = Path(input_path)
        parent = Path(os.path.abspath(input_path)).parent.name
    name = path.name
    double = next((suffix for suffix in DOUBLE_SUFFIXES if name.lower().endswith(suffix)), None)
    stem = name[: -len(double)] if double else path.stem
    try:
        return template.format(stem=stem, name=name, parent=parent, index=index)
    except (ValueError, TypeError) as exc:
        raise BatchError(f"output {template}: {exc}") from None


def plan_items(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike],
               many: bool | None = None, options: WriteOptions = WriteOptions()) -> list[Item]:
    """The items of a run over ``inputs`` (expanded) writing ``outputs`` (templates), checked
    before any work. ``many``: whether the run is a cohort (by default: :func:`names_many`).
    A file the run writes is never one of its inputs (a folder holding the masks of an earlier run).

    Raises:
        BatchError: see :func:`expand_inputs` and :func:`check_templates`; two inputs that would
            write the same output.
        OutputError: an output's extension names no format segtile writes.
        CreationOptionError: a GeoTIFF creation option GDAL refuses.
    """
    many = names_many(inputs) if many is None else many
    templates = [os.fspath(output) for output in outputs]
    check_templates(templates, many)
    _check_alike_for_all(templates, options)
    expanded = expand_inputs(inputs)
    written = {_absolute(fill_template(t, path, i)) for i, path in enumerate(expanded, 1) for t in templates}
    if len(expanded) > 1:
        expanded = [path for path in expanded if _absolute(path) not in written]
    items = [Item(path, tuple(fill_template(t, path, i) for t in templates), i) for i, path in enumerate(expanded, 1)]
    _check_distinct(items)
    return items


def plan_mosaic(inputs: Sequence[str | os.PathLike], outputs: Sequence[str | os.PathLike],
                options: WriteOptions = WriteOptions()) -> Item:
    """The one item of a run reading every input of ``inputs`` (expanded) as one mosaic
    (:func:`segtile.sources.open_mosaic`, the last input on top), writing ``outputs``.

    Raises:
        BatchError: see :func:`expand_inputs`; an output with a placeholder (a mosaic is one image).
    """
    for output in outputs:
        if _fields(os.fspath(output)):
            raise BatchError(f"a mosaic is one image: its outputs take no placeholder, not {os.fspath(output)}")
    paths = [os.fspath(output) for output in outputs]
    _check_alike_for_all(paths, options)
    parts = tuple(expand_inputs(inputs))
    return Item(";".join(parts), tuple(paths), 1, parts)


def _check_alike_for_all(outputs: Sequence[str], options: WriteOptions) -> None:
    """Raise what every item would refuse alike, before the first: an output's unknown extension
    (:class:`OutputError`), a GeoTIFF creation option GDAL refuses (:class:`CreationOptionError`)."""
    for output in outputs:
        output_kind(output, slide=True)
    if options.creation_options:
        check_creation_options(dict(options.creation_options))


def _check_distinct(items: Sequence[Item]) -> None:
    writers: dict[str, str] = {}
    for item in items:
        for output in item.outputs:
            key = _absolute(output)
            if key in writers and writers[key] != item.input:
                raise BatchError(f"{writers[key]} and {item.input} would both write {output}: add a placeholder "
                                 "that tells them apart (e.g. {parent}/{stem} or {index})")
            writers[key] = item.input


def _absolute(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def finished(item: Item, probabilities: bool = False, say: Callable[[str], None] = lambda line: None) -> bool:
    """Whether every output of ``item`` is in place, complete (outputs appear only when
    complete: what an interrupted commit left is finished or undone first, each note on that
    given to ``say``), and no work store of an interrupted run is left beside them."""
    for output in item.outputs:
        for note in recover_leftovers(output):
            say(f"note: {note}")
    for output in item.outputs:
        needed = [Path(output)]
        if probabilities and output_kind(output).separate_probabilities:
            needed.append(probabilities_path_for(output))
        if not all(os.path.lexists(path) for path in needed):
            return False
    return not is_work_store(work_folder(Path(item.outputs[0])))

