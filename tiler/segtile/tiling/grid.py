"""The tile plan: which windows of the image the model sees. Pure functions, no I/O.

Tiles are ``tile_size`` square with ``overlap`` pixels shared between neighbours. Along each axis
the last tile is shifted inward so that it ends exactly on the image edge and stays full size;
only an image shorter than a tile gets a single tile that runs past its end (the engine pads it by
reflection and crops the result back).

Some networks give logits that line up from one tile to the next only on a lattice: PSPNet
upsamples its stride-8 features with ``align_corners=True``, which is exact only for inputs of
``8k + 1`` pixels whose first pixel sits on a feature (a 512 tile stretches 64 features over 511
pixels, and neighbouring tiles disagree by up to 7 px). For such a network (``alignment`` A > 1)
tiles are ``kA + 1`` pixels wide and start at multiples of A, so every tile's features fall on the
same image pixels; the last tile then starts at the first multiple of A from which it reaches the
edge, and runs past it by fewer than A pixels (padded, as above).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

from rasterio.windows import Window

from segtile.checks import is_integer
from segtile.errors import GridError

MAX_RUNS_PER_AXIS = 8
"""The most tiles a pixel may lie in along one axis (64 in all): a stride of at least an eighth of
the tile. Beyond that the overlap multiplies the work (a stride of 8 px on 256 px tiles runs every
pixel 1024 times) and the memory for nothing a blend of 64 tiles does not already give."""


def check_tiling(tile_size: int, overlap: int) -> None:
    """Raise :class:`GridError` unless ``tile_size >= 1`` and ``0 <= overlap < tile_size``."""
    if not is_integer(tile_size) or tile_size < 1:
        raise GridError(f"tile size must be a positive integer, got {tile_size}")
    if not is_integer(overlap) or overlap < 0:
        raise GridError(f"overlap must be a non-negative integer, got {overlap}")
    if overlap >= tile_size:
        raise GridError(f"overlap ({overlap}) must be smaller than the tile size ({tile_size})")


def check_stride(tile_size: int, overlap: int) -> None:
    """Raise :class:`GridError` unless tiles of ``tile_size`` overlapping by ``overlap`` (valid for
    :func:`check_tiling`) step by at least ``tile_size / MAX_RUNS_PER_AXIS``: an overlap asked for
    must not multiply the work (see :data:`MAX_RUNS_PER_AXIS`)."""
    stride = tile_size - overlap
    if stride * MAX_RUNS_PER_AXIS < tile_size:
        most = tile_size - -(-tile_size // MAX_RUNS_PER_AXIS)
        raise GridError(f"an overlap of {overlap} px on tiles of {tile_size} px leaves a stride of {stride} px: every "
                        f"pixel would be run about {round((tile_size / stride) ** 2)} times; give an overlap of at "
                        f"most {most} px (a stride of an eighth of the tile)")


def aligned_tiling(tile_size: int, overlap: int, alignment: int, extra: int = 1) -> tuple[int, int]:
    """The tile size and overlap closest to those asked for that suit a network of ``alignment``:
    tiles of ``kA + extra`` pixels (the next such size up, ``k >= 1``: a stride of A must fit in
    the tile, even on an image of one pixel; ``extra`` 1 for PSPNet, 0 for a patch classifier's
    whole patches) and a stride that is a multiple of A (the overlap grows to the next such stride
    down). ``alignment=1`` changes nothing."""
    check_tiling(tile_size, overlap)
    if alignment == 1:
        return tile_size, overlap
    tile = max(-(-(tile_size - extra) // alignment), 1) * alignment + extra
    stride = max(alignment, (tile - overlap) // alignment * alignment)
    return tile, tile - stride


def tile_starts(length: int, tile_size: int, overlap: int, alignment: int = 1) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    Steps by ``tile_size - overlap``; the last start is ``length - tile_size`` so the last tile
    ends on the edge (rounded up to a multiple of ``alignment``: the tile then runs past the
    edge by fewer than ``alignment`` pixels). Returns ``[0]`` when the axis is not longer than a
    tile.
    """
    check_tiling(tile_size, overlap)
    if length < 1:
        raise GridError(f"image axis length must be positive, got {length}")
    last = -(-(length - tile_size) // alignment) * alignment
    if last <= 0:
        return [0]
    stride = tile_size - overlap
    starts = list(range(0, last, stride))
    starts.append(last)
    return starts


def tiles_along(length: int, tile_size: int, overlap: int, alignment: int = 1) -> int:
    """How many tiles :func:`tile_starts` places along an axis of ``length`` pixels, counted
    without listing them (a grid of any size)."""
    last = -(-(length - tile_size) // alignment) * alignment
    return 1 if last <= 0 else -(-last // (tile_size - overlap)) + 1


@dataclass(frozen=True)
class Tile:
    """One tile of the plan.

    Attributes:
        index: position in the plan (row-major).
        window: the tile's window on the image; it may extend past the image's right or bottom
            edge only when the image is smaller than a tile along that axis, or by fewer than
            ``alignment`` pixels.
        edges: ``(top, bottom, left, right)``: whether each side of the tile lies on (or past)
            the image border (blend weights stay full there).
    """

    index: int
    window: Window
    edges: tuple[bool, bool, bool, bool]


def tile_grid(height: int, width: int, tile_size: int, overlap: int, alignment: int = 1) -> list[Tile]:
    """All tiles covering a ``height`` x ``width`` image, in row-major order (see
    :func:`tile_starts` for ``alignment``)."""
    rows = tile_starts(height, tile_size, overlap, alignment)
    cols = tile_starts(width, tile_size, overlap, alignment)
    tiles = []
    for index, (row, col) in enumerate(product(rows, cols)):
        edges = (
            row == 0,
            row + tile_size >= height,
            col == 0,
            col + tile_size >= width,
        )
        tiles.append(Tile(index, Window(col, row, tile_size, tile_size), edges))
    return tiles
