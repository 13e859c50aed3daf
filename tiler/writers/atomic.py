"""Outputs that appear complete or not at all, and never over something they should not replace.

Each output is written inside a hidden folder beside its final path (``.NAME.tmp-XXXX/NAME``),
under its final name, so whatever a writer puts beside it (a Shapefile's ``.shx``/``.dbf``/``.prj``,
a GeoTIFF's ``.qml`` style) travels with it. Committing moves every file of that folder onto the
final folder. Without ``overwrite`` each move is one atomic rename that fails if the target exists
(``renameat2(RENAME_NOREPLACE)``, or a hard link / an exclusive ``mkdir`` where that call is
missing), so two runs racing for the same output can never both win: there is no gap between a
check and a replace. With ``overwrite`` any old file of the same name is first moved aside and
put back if the commit fails. An :class:`OutputSet` commits several outputs together: when any
writer fails, none of them is left behind. :func:`check_output` runs the same checks on a path
before any work is done, sidecar files included.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
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
    ...     mask_tmp = outputs.add("mask.tif", files=["mask.tif", "mask.qml", "mask.tif.aux.xml"])
    ...     polygons_tmp = outputs.add("regions.gpkg")
    ...     write_mask(mask_tmp, ..., atomic=False)
    ...     write_polygons(polygons_tmp, ..., atomic=False)
    # both appear here, or (on any exception, KeyboardInterrupt included) neither does

    Write each output to the path :meth:`add` returns, never to the final path.
    """

    def __init__(self, overwrite: bool = False) -> None:
        self.overwrite = overwrite
        self._folders: dict[Path, Path] = {}  # final path -> its temporary folder
        self._directories: set[Path] = set()

    def add(self, path: str | PathLike, *, files: Iterable[str | PathLike] = (), directory: bool = False,
            protected: Iterable[str | PathLike] = ()) -> Path:
        """Check that ``path`` (and the ``files`` its writer will put beside it) can be written;
        return the temporary path to write it to.

        Args:
            files: every other file the writer makes beside ``path`` (sidecars): each counts as
                the output existing.
            directory: ``path`` is a folder (a Zarr store); only then may an existing folder be
                replaced, with ``overwrite``.
            protected: paths never to replace, even with ``overwrite`` (the input image).

        Raises:
            OutputExistsError: a file exists and ``overwrite`` is false.
            OutputError: the folder is missing or not writable, ``path`` was added already, or
                an output would replace a protected path or a folder.
        """
        final = Path(os.path.abspath(path))
        check_output(path, self.overwrite, files=files, directory=directory, protected=protected)
        if final in self._folders:
            raise OutputError(f"output named twice: {path}")
        folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        self._folders[final] = folder
        if directory:
            self._directories.add(final)
        return folder / final.name

    def commit(self) -> None:
        """Move every output onto its final path; restore the old outputs if that fails."""
        undo: list[tuple[Path, Path]] = []  # renames done, (from, to)
        try:
            for final, folder in self._folders.items():
                if not os.path.lexists(folder / final.name):
                    raise OutputError(f"nothing was written to {final}")
            for final, folder in self._folders.items():
                members = sorted(name for name in os.listdir(folder) if name != _REPLACED)
                if self.overwrite:
                    for name in members:
                        if os.path.lexists(final.parent / name):
                            self._check_replaceable(final.parent / name, final)
                            (folder / _REPLACED).mkdir(exist_ok=True)
                            _rename(final.parent / name, folder / _REPLACED / name, undo)
                for name in members:
                    _rename(folder / name, final.parent / name, undo, replace=False)
        except BaseException:
            for source, target in reversed(undo):
                os.replace(target, source)
            raise
        finally:
            self.discard()

    def _check_replaceable(self, existing: Path, final: Path) -> None:
        """A folder that appeared where a file output goes is never replaced."""
        if existing.is_dir() and not existing.is_symlink() and not (existing == final and final in self._directories):
            raise OutputError(f"{existing} is a folder: segtile replaces files, never folders it did not write")

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
def atomic_output(path: str | PathLike, overwrite: bool = False, *, files: Iterable[str | PathLike] = (),
                  directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` to; it becomes ``path`` only if the block succeeds.

    Works for files and for folders (a ``.zarr`` store, with ``directory``). See
    :meth:`OutputSet.add` for the arguments and errors.
    """
    with OutputSet(overwrite) as outputs:
        yield outputs.add(path, files=files, directory=directory)


@contextmanager
def destination(path: str | PathLike, overwrite: bool, atomic: bool, *, files: Iterable[str | PathLike] = (),
                directory: bool = False) -> Iterator[Path]:
    """Where a writer writes: a temporary path committed on success when ``atomic``, else
    ``path`` itself (the caller manages it, e.g. a path from :meth:`OutputSet.add`)."""
    if atomic:
        with atomic_output(path, overwrite, files=files, directory=directory) as target:
            yield target
    else:
        yield Path(path)


def check_output(path: str | PathLike, overwrite: bool = False, *, files: Iterable[str | PathLike] = (),
                 directory: bool = False, protected: Iterable[str | PathLike] = ()) -> None:
    """Check, before any work, that ``path`` and its sidecar ``files`` can be written.

    Raises:
        OutputExistsError: one of them exists and ``overwrite`` is false.
        OutputError: the folder of ``path`` is missing or not writable; one of them is (or holds,
            or lies inside) a ``protected`` path; or an existing folder stands where a file goes
            (``overwrite`` replaces files, and folders only where ``directory`` says the output is one).
    """
    final = Path(os.path.abspath(path))
    folder = final.parent
    if not folder.is_dir():
        raise OutputError(f"output folder does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder is not writable: {folder}")
    guarded = [Path(os.path.realpath(p)) for p in protected]
    for written in [final, *(Path(os.path.abspath(f)) for f in files)]:
        real = Path(os.path.realpath(written))
        for keep in guarded:
            if real == keep or keep.is_relative_to(real) or real.is_relative_to(keep):
                raise OutputError(f"output {written} would replace the input {keep}: choose another name")
        if not os.path.lexists(written):
            continue
        if not overwrite:
            what = "output exists" if written == final else f"{written.name} exists (written with {final.name})"
            raise OutputExistsError(f"{what}: {written} (use --overwrite; Python: overwrite=True)")
        if written.is_dir() and not written.is_symlink() and not (directory and written == final):
            raise OutputError(f"{written} is a folder: segtile replaces files, never folders it did not write")


def _rename(source: Path, target: Path, undo: list[tuple[Path, Path]], replace: bool = True) -> None:
    """Rename ``source`` to ``target`` (failing if ``target`` exists unless ``replace``); record it."""
    if replace:
        os.replace(source, target)
    else:
        try:
            rename_no_replace(source, target)
        except FileExistsError:
            raise OutputExistsError(
                f"output exists: {target} (created by someone else meanwhile; use --overwrite; "
                "Python: overwrite=True)") from None
    undo.append((source, target))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def _load_renameat2():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28 (macOS, musl...): the fallback serves
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_RENAMEAT2 = _load_renameat2()


def rename_no_replace(source: str | PathLike, target: str | PathLike) -> None:
    """Rename ``source`` (a file or a folder) to ``target`` in one atomic step that fails with
    ``FileExistsError`` when ``target`` exists, whoever created it and whenever."""
    source, target = os.fspath(source), os.fspath(target)
    if _RENAMEAT2 is not None:
        if _RENAMEAT2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(code, os.strerror(code), target)
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the file system does support it
            raise OSError(code, os.strerror(code), target)
    if os.path.isdir(source) and not os.path.islink(source):
        os.mkdir(target)  # claims the name atomically (FileExistsError otherwise)...
        os.replace(source, target)  # ...and a folder may replace the empty folder it claimed
    else:
        os.link(source, target)  # FileExistsError when the name is taken
        os.unlink(source)
