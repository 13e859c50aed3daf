"""Small files that survive a crash or a power cut: written whole or not at all, and on the disk
before the call returns.

The work store's records (``run.json``, a chunk's marker) and the journal of a commit of outputs
decide what a later run trusts or undoes, so each is written to a temporary name beside its
final one, flushed to the disk (``fsync``), renamed over the final name in one atomic step, and
the folder is flushed too, so that the rename itself is on the disk. A crash leaves either the
old file or the new one, never half of one; only the hidden temporary (``.NAME.tmp``) may stay.
"""

from __future__ import annotations

import os
from pathlib import Path


def temporary_name(path: Path) -> Path:
    """Where :func:`write_durably` writes ``path`` before renaming it: ``.NAME.tmp`` beside it."""
    return path.with_name(f".{path.name}.tmp")


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (see the module docstring)."""
    temporary = temporary_name(path)
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (the files created, renamed or removed in it) to the disk.
    Where a folder cannot be opened (Windows), its file system orders that itself."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
