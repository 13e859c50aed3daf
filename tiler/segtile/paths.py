"""Paths no reader can use: files that give their bytes once, front to back.

GDAL, tifffile, OGR and torch read files at random offsets. A FIFO (named pipe), a socket or a
character device (a terminal, ``/dev/stdin``) cannot give that: GDAL and OGR wait on a FIFO for a
writer, deaf to Ctrl-C, and with one they consume what it writes. Every path a user names (an
image, a mask, labels, a model) is checked before a reader opens it.
"""

from __future__ import annotations

import os
import stat

_SEQUENTIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                     (stat.S_ISCHR, "a character device"))


def refuse_sequential(path: str | os.PathLike, what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``what`` (``"input"``, ``"model"``...) when ``path`` is a FIFO, a
    socket or a character device; regular files, folders, block devices and missing paths pass
    (the callers report missing ones in their own words)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    kind = next((name for is_kind, name in _SEQUENTIAL_KINDS if is_kind(mode)), None)
    if kind is not None:
        raise error(f"{what} {os.fspath(path)} is {kind}, not a regular file: segtile reads files at random "
                    "offsets; save the data to a file first")
