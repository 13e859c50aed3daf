"""Outputs that appear complete or not at all, and never over something they should not replace.

Each output is written inside a hidden folder beside its final path (``.NAME.tmp-XXXX/NAME``),
under its final name, so whatever a writer puts beside it (a Shapefile's ``.shx``/``.dbf``/``.prj``,
a GeoTIFF's ``.qml`` style) travels with it. Committing moves every file of that folder onto the
final folder. Without ``overwrite`` each move is one atomic rename that fails if the target exists
(``renameat2(RENAME_NOREPLACE)``, or a hard link / an exclusive ``mkdir`` where that call is
missing), so two runs racing for the same output can never both win: there is no gap between a
check and a replace. With ``overwrite`` every file an output of its kind may have beside it (its
sidecars, written this time or not: an old ``.prj`` or probabilities file is never left over) is
first moved aside into the temporary folder's ``.replaced/``, and put back if the commit fails.
An :class:`OutputSet` commits several outputs together: when any writer fails, none of them is
left behind. :func:`check_output` runs the same checks on a path before any work is done,
sidecar files included.

A commit is made recoverable, whatever cuts it short (an error, a second Ctrl-C, SIGKILL, a power
cut): before the first move, each temporary folder gets a journal (``.segtile-commit``) of the
moves planned, written durably, and the old files stay in ``.replaced/`` until the final folders
are whole again. Each temporary folder also holds an owner file (``.segtile-owner``, see
:mod:`segtile.writers.owner`), locked while its process runs. :func:`recover_leftovers`, which the next
run for the same output calls before anything else, cleans what a run that died left: a folder
without journal (killed while writing) is removed; a commit that had moved every file is
finished (the replaced files removed); one cut short before is undone (the new files taken back,
the old ones put back). Only folders whose owner is dead and was on this host are touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import Iterator

from segtile.errors import LeftoverWarning, OutputError, OutputExistsError, root_cause_line
from segtile.writers.durable import fsync_folder, temporary_name, write_durably
from segtile.writers.owner import Claim, Held, Owner

_REPLACED = ".replaced"  # inside a temporary folder: the old files moved aside while committing
_OWNER = ".segtile-owner"  # inside a temporary folder: the process writing into it
_JOURNAL = ".segtile-commit"  # inside a temporary folder: the moves of its commit
_BOOKKEEPING = {_REPLACED, _OWNER, _JOURNAL, temporary_name(Path(_OWNER)).name, temporary_name(Path(_JOURNAL)).name}
_UNDO_TRIES = 3  # an undo cut short by another Ctrl-C is run again: each of its steps can be
FULL_DISK_BYTES = 16 * 2**20  # a write that failed with less free than this failed for want of room


@dataclass
class _Pending:
    """An output being written: its temporary folder, held by this process, and the names of
    every file an output of its kind may have in its folder (its own name first)."""

    folder: Path
    claim: Claim
    names: tuple[str, ...]


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
        self._pending: dict[Path, _Pending] = {}  # final path -> its temporary folder
        self._directories: set[Path] = set()

    def add(self, path: str | PathLike, *, files: Iterable[str | PathLike] = (), directory: bool = False,
            protected: Iterable[str | PathLike] = ()) -> Path:
        """Check that ``path`` (and the ``files`` its writer may put beside it) can be written;
        return the temporary path to write it to. What a dead run left for ``path`` is cleaned
        up first (:func:`recover_leftovers`; each note a :class:`LeftoverWarning`).

        Args:
            files: every other file an output of this kind may have beside ``path`` (sidecars),
                whatever the writer writes this time: each counts as the output existing, and
                ``overwrite`` replaces or removes each.
            directory: ``path`` is a folder (a Zarr store); only then may an existing folder be
                replaced, with ``overwrite``.
            protected: paths never to replace, even with ``overwrite`` (the input image).

        Raises:
            OutputExistsError: a file exists and ``overwrite`` is false.
            OutputError: the folder is missing or not writable, ``path`` was added already, or
                an output would replace a protected path or a folder.
        """
        final = Path(os.path.abspath(path))
        for note in recover_leftovers(final):
            warnings.warn(note, LeftoverWarning, stacklevel=2)
        files = [Path(os.path.abspath(f)) for f in files]
        check_output(path, self.overwrite, files=files, directory=directory, protected=protected)
        if final in self._pending:
            raise OutputError(f"output named twice: {path}")
        try:
            folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {write_failure(exc, final.parent)}") from exc
        try:
            claim = Claim.create(folder / _OWNER)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise OutputError(f"cannot write {final}: {write_failure(exc, final.parent)}") from exc
        names = (final.name, *(f.name for f in files if f.parent == final.parent))
        self._pending[final] = _Pending(folder, claim, names)
        if directory:
            self._directories.add(final)
        return folder / final.name

    def commit(self) -> None:
        """Move every output onto its final path (see the module docstring); undo every move if
        one fails, and keep what cannot be undone for the next run to put back."""
        try:
            moves = self._planned_moves()
            _write_journals(moves, committed=False)
        except BaseException:
            self.discard()
            raise
        try:
            for move in moves:
                move.apply()
            for target in {move.target for move in moves}:
                fsync_folder(target)
        except BaseException as error:
            self._undo(moves, error)
            raise
        try:
            _write_journals(moves, committed=True)
        except OutputError:  # no room left even for that: every output is in place all the same
            pass
        self.discard()

    def _planned_moves(self) -> list[_Moves]:
        """Each output's moves: what was written, and (with ``overwrite``) every file of its kind
        in the way. Raises before any move when an output was not written or a folder is in the way."""
        moves = []
        folders = [str(pending.folder) for pending in self._pending.values()]
        for final, pending in self._pending.items():
            if not os.path.lexists(pending.folder / final.name):
                raise OutputError(f"nothing was written to {final}")
            written = tuple(sorted(name for name in os.listdir(pending.folder) if name not in _BOOKKEEPING))
            aside: tuple[str, ...] = ()
            if self.overwrite:
                aside = tuple(name for name in dict.fromkeys([*pending.names, *written])
                              if os.path.lexists(final.parent / name))
                for name in aside:
                    self._check_replaceable(final.parent / name, final)
            moves.append(_Moves(pending.folder, final.parent, written, aside, tuple(folders)))
        return moves

    def _check_replaceable(self, existing: Path, final: Path) -> None:
        """A folder that appeared where a file output goes is never replaced."""
        if existing.is_dir() and not existing.is_symlink() and not (existing == final and final in self._directories):
            raise OutputError(f"{existing} is a folder: segtile replaces files, never folders it did not write")

    def _undo(self, moves: list[_Moves], error: BaseException) -> None:
        """Undo every move of a commit that failed with ``error``; when something cannot be put
        back, keep the temporary folders (and their journals) and say so on ``error``."""
        failures = [failure for move in moves for failure in _undone(move).failures]
        if not failures:
            self.discard()
            return
        for pending in self._pending.values():
            pending.claim.release()
        self._pending.clear()
        error.add_note(f"the outputs could not all be put back as they were ({'; '.join(failures)}): "
                       "the next segtile run for these outputs does it")

    def discard(self) -> None:
        """Remove every temporary folder (and with it the old outputs a commit replaced)."""
        for pending in self._pending.values():
            _remove_held(pending.folder, pending.claim)
        self._pending.clear()

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


@dataclass(frozen=True)
class _Moves:
    """One temporary folder's part of a commit, as its journal records it.

    Attributes:
        folder: the temporary folder.
        target: the final folder.
        moved_in: the files written, moved from ``folder`` onto ``target``.
        moved_aside: the files in their way at ``target``, moved into ``folder/.replaced``.
        commit: every temporary folder of the commit (the outputs committed together).
    """

    folder: Path
    target: Path
    moved_in: tuple[str, ...]
    moved_aside: tuple[str, ...]
    commit: tuple[str, ...]

    def apply(self) -> None:
        """Move the old files aside, then the new ones in (each rename fails if its name is taken)."""
        for name in self.moved_aside:
            (self.folder / _REPLACED).mkdir(exist_ok=True)
            os.replace(self.target / name, self.folder / _REPLACED / name)
        for name in self.moved_in:
            try:
                rename_no_replace(self.folder / name, self.target / name)
            except FileExistsError:
                raise OutputExistsError(
                    f"output exists: {self.target / name} (created by someone else meanwhile; use --overwrite; "
                    "Python: overwrite=True)") from None

    def undo(self) -> _Undone:
        """Take back the new files that were moved in and put back the old ones, whatever part of
        :meth:`apply` ran: a new file missing from ``folder`` was moved in, an old one still in
        ``.replaced`` was not put back. Every step is tried, whichever fails."""
        undone = _Undone()
        for name in self.moved_in:
            if not os.path.lexists(self.folder / name) and os.path.lexists(self.target / name):
                undone.move(self.target / name, self.folder / name, undone.removed)
        for name in self.moved_aside:
            if os.path.lexists(self.folder / _REPLACED / name):
                undone.move(self.folder / _REPLACED / name, self.target / name, undone.restored)
        return undone

    def to_json(self, committed: bool) -> bytes:
        return json.dumps({"segtile": "commit", "commit": list(self.commit), "committed": committed,
                           "target": str(self.target), "in": list(self.moved_in),
                           "aside": list(self.moved_aside)}).encode()

    @classmethod
    def read(cls, folder: Path) -> tuple[_Moves, bool] | None:
        """The moves the journal in ``folder`` records, and whether their commit was complete;
        ``None`` without a readable journal (the commit had not begun)."""
        try:
            record = json.loads((folder / _JOURNAL).read_text(encoding="utf-8"))
            moves = cls(folder, Path(record["target"]), tuple(record["in"]), tuple(record["aside"]),
                         tuple(record["commit"]))
            return moves, bool(record["committed"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


@dataclass
class _Undone:
    """What undoing a commit put back, took back, and could not (one line each)."""

    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def move(self, source: Path, target: Path, done: list[str]) -> None:
        """Rename ``source`` to ``target`` (never over a file), recording it in ``done`` or,
        when it fails, in :attr:`failures`."""
        try:
            rename_no_replace(source, target)
        except OSError as exc:
            self.failures.append(f"{target}: {exc.strerror or exc} (the file is kept in {source})")
        else:
            done.append(source.name)


def _undone(move: _Moves) -> _Undone:
    """``move`` undone, even when another Ctrl-C lands meanwhile: the undo is run again."""
    for _ in range(_UNDO_TRIES):
        try:
            return move.undo()
        except KeyboardInterrupt:
            continue
    return _Undone(failures=[f"undoing the commit in {move.target} was interrupted"])


def _write_journals(moves: list[_Moves], committed: bool) -> None:
    for move in moves:
        try:
            write_durably(move.folder / _JOURNAL, move.to_json(committed))
        except OSError as exc:
            raise OutputError(f"cannot put the outputs in place in {move.target}: "
                              f"{write_failure(exc, move.target)}") from exc


def _remove_held(folder: Path, claim: Claim) -> None:
    """Remove the temporary ``folder`` this process holds: its owner file last, so that one cut
    short is still known as this run's."""
    names = sorted(set(os.listdir(folder)) - {claim.path.name}, key=lambda name: name == _JOURNAL)
    for name in names:  # the journal last but for the owner: a commit is known while anything is left
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    claim.release(remove=True)
    with suppress(OSError):
        folder.rmdir()


def recover_leftovers(path: str | PathLike) -> list[str]:
    """Clean up what runs that died left for the output ``path``: its ``.NAME.tmp-*`` folders
    whose owner is dead and was on this host (see the module docstring). Returns one note per
    folder cleaned up (or left alone for a reason worth telling)."""
    final = Path(os.path.abspath(path))
    prefix = f".{final.name}.tmp-"
    try:
        names = sorted(os.listdir(final.parent))
    except OSError:  # a missing folder: check_output says so
        return []
    notes = []
    for name in names:
        folder = final.parent / name
        if name.startswith(prefix) and folder.is_dir() and not folder.is_symlink():
            notes += _recover(folder)
    return notes


def _recover(folder: Path) -> list[str]:
    """Clean up the temporary ``folder`` if the run that made it died (see :func:`recover_leftovers`)."""
    owner_files = [path for path in (folder / _OWNER, temporary_name(folder / _OWNER)) if os.path.lexists(path)]
    if not owner_files:  # (one being made is locked and recorded before it is renamed)
        return [f"{folder} is the unfinished output of a segtile run that names no owner (an older segtile's, "
                "or one starting now): left alone; delete it if no segtile run is writing it"]
    try:
        claim = Claim.take(owner_files[0], record=False)
    except (Held, OSError):  # its run goes on (or the folder is not ours to change)
        return []
    owner = claim.previous
    if owner is None or not owner.on_this_host:
        claim.release()
        return [f"{folder} is the unfinished output of a segtile run on {owner.host if owner else 'an unknown host'}: "
                "left alone; delete it if that run has ended"]
    journal = _Moves.read(folder)
    if journal is None:
        _remove_held(folder, claim)
        return [f"removed {folder.name}, the unfinished output of a segtile run that died ({owner})"]
    return [_recover_commit(journal[0], claim, owner)]


def _recover_commit(moves: _Moves, claim: Claim, owner: Owner) -> str:
    """Finish or undo the commit ``moves`` belongs to, cut short when its run died (``claim``
    holds ``moves.folder``); every folder of that commit is handled together."""
    held = {moves.folder: claim}
    for other in map(Path, moves.commit):
        if other not in held and other.is_dir():
            try:
                held[other] = Claim.take(other / _OWNER, record=False)
            except (Held, OSError):  # another run is recovering it now
                for taken in held.values():
                    taken.release()
                return f"{moves.folder} is being recovered by another run: left alone"
    journals = [journal for journal in map(_Moves.read, held) if journal is not None]
    if any(committed for _, committed in journals):
        for folder, taken in held.items():
            _remove_held(folder, taken)
        return (f"finished what a segtile run killed while putting its outputs in place ({owner}) left: its "
                "outputs were all in place; removed the files they replaced")
    undone = [_undone(journal) for journal, _ in journals]
    failures = [failure for one in undone for failure in one.failures]
    if failures:
        for taken in held.values():
            taken.release()
        return (f"a segtile run killed while putting its outputs in place ({owner}) left them half replaced, and "
                f"not all could be put back: {'; '.join(failures)}")
    for folder, taken in held.items():
        _remove_held(folder, taken)
    removed = [name for one in undone for name in one.removed]
    restored = [name for one in undone for name in one.restored]
    if not removed and not restored:
        return f"removed the unfinished outputs of a segtile run that died before putting them in place ({owner})"
    what = "; ".join(part for part in (f"took back its new {', '.join(removed)}" if removed else "",
                                       f"put back the previous {', '.join(restored)}" if restored else "") if part)
    return f"undid the half-done commit of a segtile run killed while putting its outputs in place ({owner}): {what}"


def write_failure(exc: BaseException, folder: str | PathLike | None = None) -> str:
    """What went wrong writing a file, in one line: the operating system's words (``File too
    large``, ``No space left on device``) when they are in the chain of causes, else the
    innermost library message; and, when the disk of ``folder`` is full, that it is (libtiff
    says only "Write error at scanline 2560")."""
    cause: BaseException | None = exc
    while cause is not None:
        if type(cause) in (OSError, *OSError.__subclasses__()) and cause.strerror:
            break
        cause = cause.__cause__
    if cause is not None and cause.errno != errno.ENOSPC:
        return cause.strerror
    if folder is not None and (cause is not None or disk_full(folder)):
        return f"the disk holding {os.path.abspath(folder)} is full (No space left on device)"
    return cause.strerror if cause is not None else root_cause_line(exc)


def disk_full(folder: str | PathLike) -> bool:
    """Whether the disk holding ``folder`` has (almost) no room left for a file."""
    try:
        disk = os.statvfs(folder)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return disk.f_bavail * disk.f_frsize < FULL_DISK_BYTES


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
