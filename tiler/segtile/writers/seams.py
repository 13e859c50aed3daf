"""Polygons of a mask computed chunk by chunk, joined across chunk seams.

Each chunk is polygonised on its own (``rasterio.features.shapes``, 4-connectivity) in global
pixel coordinates: x = column, y = row, pixel corners on integers, so shared edges match exactly.
A polygon that does not reach an interior side of its chunk is a whole region and final at once.
One that does is a *piece*: for every interior side it reaches, the stretches of that side it
covers are recorded as integer intervals. When the chunks on both sides of a seam are known, the
seam is *closed*: two pieces of the same class whose intervals overlap by a positive length (a
shared pixel edge, not a corner) belong to one region and are joined (union-find). A region is
complete when every seam any of its pieces touches is closed; its pieces are then unioned with
shapely into one polygon (holes kept) and released. Only pieces waiting for a seam are held.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate
from typing import Iterator, NamedTuple

import numpy as np
import rasterio.features
import shapely
from affine import Affine

Region = tuple[shapely.Polygon, int]  # a polygon in global pixel coordinates, its class
SeamKey = tuple[str, int, int]  # ("v", i, j): left side of chunk (i, j); ("h", i, j): its top side
Interval = tuple[int, int, int, int]  # start, end along the seam, class, piece id


class ChunkPolygons(NamedTuple):
    """The polygons of one chunk (object array, global pixel coordinates) and their classes."""

    polygons: np.ndarray
    class_ids: np.ndarray


class _Side(NamedTuple):
    """An interior side of a chunk: the seam it lies on, which side of the seam the chunk is
    (0: left / top, 1: right / bottom), the seam's line, and where a polygon reaching the side
    has one of its bounds: the column of ``shapely.bounds`` and its value."""

    key: SeamKey
    side: int
    line: shapely.LineString
    bound: int
    at: float


def polygonise_chunk(chunk: np.ndarray, row0: int, col0: int, nodata: int) -> ChunkPolygons:
    """The 4-connected regions of one chunk as polygons in global pixel coordinates; ``nodata``
    pixels make none."""
    # rasterio warns that an identity transform (the chunk at the origin) means "not
    # georeferenced"; polygonising one column to the right and shifting back is exact.
    shapes = rasterio.features.shapes(
        chunk, mask=chunk != nodata, connectivity=4, transform=Affine.translation(col0 + 1, row0),
    )
    coords: list[tuple[float, float]] = []
    ring_sizes: list[int] = []
    rings_per_polygon: list[int] = []
    class_ids: list[int] = []
    for geometry, value in shapes:
        for ring in geometry["coordinates"]:
            coords.extend(ring)
            ring_sizes.append(len(ring))
        rings_per_polygon.append(len(geometry["coordinates"]))
        class_ids.append(int(value))
    if not class_ids:
        return ChunkPolygons(np.empty(0, dtype=object), np.empty(0, dtype=np.int64))
    rings = shapely.linearrings(
        np.asarray(coords) - (1.0, 0.0), indices=np.repeat(np.arange(len(ring_sizes)), ring_sizes)
    )
    polygons = shapely.polygons(rings, indices=np.repeat(np.arange(len(class_ids)), rings_per_polygon))
    return ChunkPolygons(polygons, np.asarray(class_ids, dtype=np.int64))


@dataclass
class _Piece:
    polygon: shapely.Polygon
    class_id: int


class SeamMerger:
    """Collects the polygons of every chunk of a chunked mask; yields each region once whole.

    Args:
        chunks: the dask chunk sizes of the mask, ``(row sizes, column sizes)``.
    """

    def __init__(self, chunks: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self._row_edges = [0, *accumulate(chunks[0])]
        self._col_edges = [0, *accumulate(chunks[1])]
        self._pieces: dict[int, _Piece] = {}
        self._parent: dict[int, int] = {}
        self._members: dict[int, list[int]] = {}  # root -> pieces of its region
        self._open_seams: dict[int, int] = {}  # root -> open seams its pieces touch (counted per piece)
        self._seams: dict[SeamKey, list[list[Interval] | None]] = {}  # [first side, second side]
        self._next_id = 0

    def add_chunk(self, row0: int, col0: int, found: ChunkPolygons) -> list[Region]:
        """Take the polygons of the chunk starting at (``row0``, ``col0``); return the regions
        now complete (possibly from earlier chunks)."""
        i = bisect_right(self._row_edges, row0) - 1
        j = bisect_right(self._col_edges, col0) - 1
        polygons, class_ids = found
        bounds = shapely.bounds(polygons).reshape(-1, 4)
        sides = list(self._interior_sides(i, j))
        reaching = [np.flatnonzero(bounds[:, side.bound] == side.at) for side in sides]
        seams_touched = np.zeros(len(polygons), dtype=np.int64)
        for indices in reaching:
            seams_touched[indices] += 1
        piece_of = {k: self._new_piece(polygons[k], int(class_ids[k]), int(seams_touched[k]))
                    for k in np.flatnonzero(seams_touched).tolist()}
        finished = [(polygons[k], int(class_ids[k])) for k in np.flatnonzero(seams_touched == 0).tolist()]
        for side, indices in zip(sides, reaching):
            owners, starts, ends = _stretches(polygons[indices], side)
            intervals = [(start, end, int(class_ids[k]), piece_of[k])
                         for k, start, end in zip(indices[owners].tolist(), starts, ends)]
            sides_of_seam = self._seams.setdefault(side.key, [None, None])
            sides_of_seam[side.side] = intervals
            if sides_of_seam[1 - side.side] is not None:
                finished.extend(self._close(side.key))
        return finished

    def remaining(self) -> int:
        """How many pieces still wait for a seam (0 once every chunk was added)."""
        return len(self._pieces)

    def _interior_sides(self, i: int, j: int) -> Iterator[_Side]:
        """The sides of chunk (i, j) shared with another chunk."""
        top, bottom = self._row_edges[i], self._row_edges[i + 1]
        left, right = self._col_edges[j], self._col_edges[j + 1]
        if j > 0:
            yield _Side(("v", i, j), 1, shapely.LineString([(left, top), (left, bottom)]), 0, left)
        if j + 2 < len(self._col_edges):
            yield _Side(("v", i, j + 1), 0, shapely.LineString([(right, top), (right, bottom)]), 2, right)
        if i > 0:
            yield _Side(("h", i, j), 1, shapely.LineString([(left, top), (right, top)]), 1, top)
        if i + 2 < len(self._row_edges):
            yield _Side(("h", i + 1, j), 0, shapely.LineString([(left, bottom), (right, bottom)]), 3, bottom)

    def _new_piece(self, polygon: shapely.Polygon, class_id: int, open_seams: int) -> int:
        piece = self._next_id
        self._next_id += 1
        self._pieces[piece] = _Piece(polygon, class_id)
        self._parent[piece] = piece
        self._members[piece] = [piece]
        self._open_seams[piece] = open_seams
        return piece

    def _close(self, key: SeamKey) -> list[Region]:
        """Join the pieces across a seam whose two sides are known; release completed regions."""
        first, second = self._seams.pop(key)
        for a, b in _overlapping_pairs(first, second):
            self._union(a, b)
        touching = {piece for *_, piece in first} | {piece for *_, piece in second}
        roots = set()
        for piece in touching:
            root = self._find(piece)
            self._open_seams[root] -= 1
            roots.add(root)
        return [self._release(root) for root in roots if self._open_seams[root] == 0]

    def _find(self, piece: int) -> int:
        root = piece
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[piece] != root:  # path compression
            self._parent[piece], piece = root, self._parent[piece]
        return root

    def _union(self, a: int, b: int) -> None:
        a, b = self._find(a), self._find(b)
        if a == b:
            return
        if len(self._members[a]) < len(self._members[b]):
            a, b = b, a
        self._parent[b] = a
        self._members[a].extend(self._members.pop(b))
        self._open_seams[a] += self._open_seams.pop(b)

    def _release(self, root: int) -> Region:
        members = self._members.pop(root)
        del self._open_seams[root]
        pieces = [self._pieces.pop(piece) for piece in members]
        for piece in members:
            del self._parent[piece]
        polygons = [piece.polygon for piece in pieces]
        polygon = polygons[0] if len(polygons) == 1 else shapely.union_all(polygons)
        return polygon, pieces[0].class_id


def _stretches(polygons: np.ndarray, side: _Side) -> tuple[np.ndarray, list[int], list[int]]:
    """Where the boundaries of ``polygons`` run along ``side``: for each stretch of positive
    length (single touching points are left out), the index of its polygon in ``polygons`` and
    its integer interval along the side."""
    cuts = shapely.intersection(shapely.boundary(polygons), side.line)
    parts, owners = shapely.get_parts(cuts, return_index=True)
    lines = (shapely.get_type_id(parts) == 1) & (shapely.length(parts) > 0)
    extents = shapely.bounds(parts[lines]).reshape(-1, 4)
    along = 1 if side.key[0] == "v" else 0  # a vertical seam runs along y
    starts = np.rint(extents[:, along]).astype(np.int64).tolist()
    ends = np.rint(extents[:, along + 2]).astype(np.int64).tolist()
    return owners[lines], starts, ends


def _overlapping_pairs(first: list[Interval], second: list[Interval]) -> Iterator[tuple[int, int]]:
    """Pieces of the same class, one on each side of a seam, sharing a stretch of positive length."""
    first, second = sorted(first), sorted(second)
    a = b = 0
    while a < len(first) and b < len(second):
        start_a, end_a, class_a, piece_a = first[a]
        start_b, end_b, class_b, piece_b = second[b]
        if max(start_a, start_b) < min(end_a, end_b) and class_a == class_b:
            yield piece_a, piece_b
        if end_a <= end_b:
            a += 1
        else:
            b += 1
