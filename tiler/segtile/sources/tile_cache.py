"""Decoded slide tiles, kept for the next window that needs them: shared by the threads of a
process and bounded in bytes.

The windows segtile reads overlap (a 512 px tile at a stride of 448 px), and a slide's own tiles
(often 256 px) do not line up with them: each stored tile lies under up to four windows, so
without a cache it is decoded up to four times. The windows are read row by row across a
stripe, so keeping the most recently used decoded tiles (a few tile rows of a stripe) decodes
nearly every tile once. Reading them through tifffile's Zarr store cost more than the decoding
itself (about 10 ms of Zarr's machinery per window, ten times the decoding of its tiles: see
docs/performance.md), so :class:`TiledPage` reads the tiles of a level stored the way slides
store them (one tiled page, samples interleaved: SVS, NDPI, pyramidal TIFF) straight from the
file with tifffile's own decoder, and keeps them in :data:`DECODED_TILES`, the process's one
:class:`DecodedTiles`, under the file (path, device, inode, size, modification time), the level
and the tile: every thread's own TiffFile shares them, and a file rewritten in place is never
read from the cache.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import tifffile

from segtile.sources.remote import is_url, remote_info

DECODED_TILE_BYTES = 64 * 2**20
"""The decoded tiles a process keeps: the share of the memory budget counted as
:data:`segtile.tiling.budget.READ_CACHE` (the same as GDAL's block cache for rasters). Enough for
three rows of 256 px RGB tiles across an 8192 px stripe (18 MiB) several times over."""


class DecodedTiles:
    """A least-recently-used map of decoded tiles (read-only arrays) that never holds more than
    ``capacity`` bytes of them; safe to use from many threads."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._tiles: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The bytes of the tiles held now."""
        return self._bytes

    def get(self, key: Hashable) -> np.ndarray | None:
        """The tile under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: Hashable, tile: np.ndarray) -> None:
        """Keep ``tile`` under ``key``, dropping the least recently used tiles to stay within
        the capacity; a tile larger than the whole capacity is not kept."""
        if tile.nbytes > self.capacity:
            return
        with self._lock:
            old = self._tiles.pop(key, None)
            self._bytes -= 0 if old is None else old.nbytes
            while self._tiles and self._bytes + tile.nbytes > self.capacity:
                self._bytes -= self._tiles.popitem(last=False)[1].nbytes
            self._tiles[key] = tile
            self._bytes += tile.nbytes

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._bytes = 0


DECODED_TILES = DecodedTiles(DECODED_TILE_BYTES)


def file_identity(path: str) -> tuple:
    """What tells one file's contents from another's at ``path``: the path, its device and
    inode, its size and its modification time; for a URL, what its server says of it (size,
    ETag, Last-Modified: :func:`segtile.sources.remote.remote_info`)."""
    if is_url(path):
        return path, *sorted(remote_info(path).items())
    stat = os.stat(path)
    return path, stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


class TiledPage:
    """One pyramid level stored as one tiled page, samples interleaved, read window by window
    from its decoded tiles, kept in ``tiles`` under ``(file, level, tile index)``.

    ``page`` belongs to one thread's TiffFile (its file handle is not shared); ``file`` is the
    file's :func:`file_identity`. Tiles missing from the file (sparse, or cut off as some
    scanners leave them) read as 0, as tifffile reads them."""

    def __init__(self, page: tifffile.TiffPage, file: tuple, level: int, tiles: DecodedTiles = DECODED_TILES) -> None:
        self._page = page
        self._prefix = (file, level)
        self._tiles = tiles
        self._tile_shape = (page.tilelength, page.tilewidth, page.shaped[-1])  # as decoded
        self._across = -(-page.imagewidth // page.tilewidth)
        self._decode_args = {"_fullsize": True}
        if page.jpegtables is not None:
            self._decode_args["jpegtables"] = page.jpegtables
        if page.jpegheader is not None:
            self._decode_args["jpegheader"] = page.jpegheader

    @staticmethod
    def fits(page: object) -> bool:
        """Whether ``page`` is laid out as :class:`TiledPage` reads it: tiled, one plane, 2-D tiles."""
        return isinstance(page, tifffile.TiffPage) and page.is_tiled and page.shaped[:2] == (1, 1)

    def read(self, rows: slice, cols: slice, samples: list[int]) -> np.ndarray:
        """The 0-based ``samples`` over ``rows`` and ``cols`` (within the page): ``(len(samples), h, w)``,
        copied once from the tiles under them.

        The window keeps the tiles' layout, samples interleaved (the array is a view of
        ``(h, w, samples)`` memory): each tile's rows are copied whole, and a channels-last network
        takes the pixels in that order (:class:`segtile.inference.predictor.Predictor`), so no one
        reorders them into planes and back (a strided copy costing as much as a third of the
        decoding: docs/performance.md)."""
        tile_h, tile_w, count = self._tile_shape
        every = samples == list(range(count))
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, len(samples)), dtype=self._page.dtype)
        for tile_row in range(rows.start // tile_h, (rows.stop - 1) // tile_h + 1):
            top, bottom = max(rows.start, tile_row * tile_h), min(rows.stop, (tile_row + 1) * tile_h)
            for tile_col in range(cols.start // tile_w, (cols.stop - 1) // tile_w + 1):
                left, right = max(cols.start, tile_col * tile_w), min(cols.stop, (tile_col + 1) * tile_w)
                tile = self._tile(tile_row * self._across + tile_col)
                part = tile[top - tile_row * tile_h:bottom - tile_row * tile_h,
                            left - tile_col * tile_w:right - tile_col * tile_w]
                out[top - rows.start:bottom - rows.start, left - cols.start:right - cols.start] = (
                    part if every else part[..., samples])
        return out.transpose(2, 0, 1)

    def _tile(self, index: int) -> np.ndarray:
        """Tile ``index`` decoded, from the cache or from the file (then kept)."""
        key = (*self._prefix, index)
        tile = self._tiles.get(key)
        if tile is None:
            tile = self._decoded(index)
            self._tiles.put(key, tile)
        return tile

    def _decoded(self, index: int) -> np.ndarray:
        """Tile ``index`` ``(h, w, samples)``, as decoded."""
        page = self._page
        offsets, counts = page.dataoffsets, page.databytecounts
        if index >= len(offsets) or not offsets[index] or not counts[index]:
            tile = np.zeros(self._tile_shape, dtype=page.dtype)
        else:
            handle = page.parent.filehandle
            handle.seek(offsets[index])
            data = handle.read(counts[index])
            tile = page.decode(data, index, **self._decode_args)[0].reshape(self._tile_shape)
        tile.flags.writeable = False
        return tile
