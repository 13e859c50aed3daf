"""Outputs that appear complete or not at all.

Each output is written inside a hidden folder beside its final path (``.NAME.tmp-XXXX/NAME``),
under its final name, so whatever a writer puts beside it (a Shapefile's ``.shx``/``.dbf``/``.prj``,
a GeoTIFF's ``.qml`` style) travels with it. Committing moves every file of that folder onto the
final folder with ``os.replace`` (a rename on the same file system), after moving any old output of
the same name aside; on failure the old outputs are put back. An :class:`OutputSet` commits several
outputs together: when any writer fails, none of them is left behind. :func:`check_output`
runs the same checks on a path before any work is done.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Iterator

from segtile.errors import SegtileError

_REPLACED = ".replaced"  # inside a temporary folder: the old outputs moved aside while committing


class OutputError(SegtileError, ValueError):
    """An output cannot be written there (missing or read-only folder, named twice...)."""


class OutputExistsError(OutputError):
    """The output exists and overwriting was not asked for."""


class OutputSet:
    """Several outputs written under temporary names and committed together.

    >>> with OutputSet(overwrite=False) as outputs:        # doctest: +SKIP
    ...     mask_tmp = outputs.add("mask.tif")
    ...     polygons_tmp = outputs.add("regions.gpkg")
    ...     write_mask(mask_tmp, ..., atomic=False)
    ...     write_polygons(polygons_tmp, ..., atomic=False)
    # both appear here, or (on any exception, KeyboardInterrupt included) neither does

    Write each output to the path :meth:`add` returns, never to the final path.
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._folders: dict[Path, Path] = {}  # final path -> its temporary folder

    def add(self, path: str | PathLike) -> Path:
        """Check that ``path`` can be written and return the temporary path to write it to.

        Raises:
            OutputExistsError: ``path`` exists and ``overwrite`` is false.
            OutputError: the folder of ``path`` is missing or not writable, or ``path`` was added
                already.
        """
        final = Path(os.path.abspath(path))
        check_output(path, self.overwrite)
        if final in self._folders:
            raise OutputError(f"output named twice: {path}")
        folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        self._folders[final] = folder
        return folder / final.name

    def commit(self) -> None:
        """Move every output onto its final path; restore the old outputs if that fails."""
        undo: list[tuple[Path, Path]] = []  # renames done, (from, to)
        try:
            for final, folder in self._folders.items():
                if not os.path.lexists(folder / final.name):
                    raise OutputError(f"nothing was written to {final}")
                if os.path.lexists(final) and not self.overwrite:
                    raise OutputExistsError(f"output exists: {final} (use --overwrite)")
            for final, folder in self._folders.items():
                members = sorted(name for name in os.listdir(folder) if name != _REPLACED)
                for name in members:
                    if os.path.lexists(final.parent / name):
                        (folder / _REPLACED).mkdir(exist_ok=True)
                        _rename(final.parent / name, folder / _REPLACED / name, undo)
                for name in members:
                    _rename(folder / name, final.parent / name, undo)
        except BaseException:
            for source, target in reversed(undo):
                os.replace(target, source)
            raise
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove every temporary folder (and with it the old outputs a commit replaced)."""
        for folder in self._folders.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._folders.clear()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


@contextmanager
def atomic_output(path: str | PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; it becomes ``path`` only if the block succeeds.

    Works for files and for folders (a ``.zarr`` store). See :class:`OutputSet` for the errors.
    """
    with OutputSet(overwrite) as outputs:
        yield outputs.add(path)


@contextmanager
def destination(path: str | PathLike, overwrite: bool, atomic: bool) -> Iterator[Path]:
    """Where a writer writes: a temporary path committed on success when ``atomic``, else
    ``path`` itself (the caller manages it, e.g. a path from :meth:`OutputSet.add`)."""
    if atomic:
        with atomic_output(path, overwrite) as target:
            yield target
    else:
        yield Path(path)


def check_output(path: str | PathLike, overwrite: bool = False) -> None:
    """Check, before any work, that ``path`` can be written: its folder exists and is writable,
    and ``path`` does not exist unless ``overwrite``.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is false.
        OutputError: the folder of ``path`` is missing or not writable.
    """
    final = Path(os.path.abspath(path))
    folder = final.parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    if os.path.lexists(final) and not overwrite:
        raise OutputExistsError(f"output exists: {path} (use --overwrite)")


def _rename(source: Path, target: Path, undo: list[tuple[Path, Path]]) -> None:
    os.replace(source, target)
    undo.append((source, target))
