"""The order of the work: vertical stripes of output chunks, each with its own batches of tiles.

Stitching moves down the image one row of output chunks at a time. The tiles that straddle the
boundary between two chunk rows are needed by both, so their results stay in memory until the
lower row is stitched: a band of tile results as wide as the width stitched at once. Cutting the
image into vertical stripes of whole chunk columns, stitched one after another, bounds that width,
and with it the memory, whatever the image's width. The tiles that straddle the boundary between
two stripes are run once for each stripe: the price is about ``tile_size / stripe_width`` more
model calls (the tile columns that cross each boundary: one with the defaults, more when the
overlap is a large part of the tile). ``stripe_width=0`` stitches the whole width at once and
never runs a tile twice.

Pure functions, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from segtile.checks import is_integer
from segtile.errors import GridError
from segtile.tiling.augmentation import Augmentation
from segtile.tiling.blend import check_blend
from segtile.tiling.grid import Tile, aligned_tiling, check_tiling, tile_grid, tiles_along

CHUNK_TASKS = 4
"""Graph entries per output chunk: its stitch, the marker of its completion, and one per product
asked for (labels, probabilities: the usual pair)."""
BATCH_TASKS = 2
"""Graph entries per batch of tiles: its task and the marker that it ran, which orders the batches
(:mod:`segtile.engine.order`)."""


@dataclass(frozen=True)
class TilingOptions:
    """How the image is cut, in which order it is processed, and how it is put back together."""

    tile_size: int = 512
    overlap: int = 64
    blend: str = "gaussian"
    batch_size: int = 4
    chunk_size: int = 1024
    stripe_width: int = 8192
    alignment: int = 1
    tile_extra: int = 1
    device: str = "auto"
    precision: str = "fp32"
    augmentation: Augmentation = Augmentation()
    stitch_on_device: bool | None = None

    def validate(self) -> None:
        """Raise :class:`~segtile.tiling.grid.GridError` for sizes that are not whole and positive."""
        check_tiling(self.tile_size, self.overlap)
        check_blend(self.blend)
        for name in ("batch_size", "chunk_size", "alignment"):
            value = getattr(self, name)
            if not is_integer(value) or value < 1:
                raise GridError(f"{name.replace('_', ' ')} must be a positive integer, got {value}")
        if not is_integer(self.stripe_width) or self.stripe_width < 0:
            raise GridError(f"stripe width must be 0 (whole width) or a positive integer, got {self.stripe_width}")
        if self.stitch_on_device not in (None, True, False):
            raise GridError(f"stitch_on_device must be True, False or None (automatic), got {self.stitch_on_device!r}")


def fit_to_image(options: TilingOptions, height: int, width: int) -> TilingOptions:
    """``options`` with tiles of the size the network's ``alignment`` wants (see
    :func:`segtile.tiling.grid.aligned_tiling`), no larger than needed to cover the image's longer side
    (a tile of 100000 px on a small image would allocate gigabytes for one padded tile), and an
    overlap below the tile."""
    alignment, extra = options.alignment, options.tile_extra
    largest = -(-(max(height, width) - extra) // alignment) * alignment + extra
    tile_size = min(options.tile_size, largest)
    tile_size, overlap = aligned_tiling(tile_size, min(options.overlap, tile_size - 1), alignment, extra)
    return replace(options, tile_size=tile_size, overlap=overlap)


@dataclass(frozen=True)
class Stripe:
    """A vertical stripe of the output: its chunk columns and the batches of tiles overlapping it.

    Attributes:
        chunk_columns: indices of the output chunk columns the stripe is made of.
        batches: the tiles that overlap the stripe, row-major, in groups of ``batch_size``.
    """

    chunk_columns: range
    batches: list[list[Tile]]


def stripe_chunk_columns(width: int, chunk_size: int, stripe_width: int) -> list[range]:
    """The chunk columns of each stripe: ``stripe_width`` rounded down to whole chunks (at least
    one); ``stripe_width=0`` gives a single stripe over the whole width."""
    columns = -(-width // chunk_size)
    per_stripe = columns if stripe_width == 0 else max(1, stripe_width // chunk_size)
    return [range(start, min(start + per_stripe, columns)) for start in range(0, columns, per_stripe)]


def plan_stripes(height: int, width: int, options: TilingOptions) -> list[Stripe]:
    """The stripes of a ``height`` x ``width`` image, left to right, with their batches."""
    tiles = tile_grid(height, width, options.tile_size, options.overlap, options.alignment)
    stripes = []
    for chunk_columns in stripe_chunk_columns(width, options.chunk_size, options.stripe_width):
        left = chunk_columns.start * options.chunk_size
        right = min(chunk_columns.stop * options.chunk_size, width)
        inside = [tile for tile in tiles
                  if tile.window.col_off < right and tile.window.col_off + tile.window.width > left]
        batches = [inside[i:i + options.batch_size] for i in range(0, len(inside), options.batch_size)]
        stripes.append(Stripe(chunk_columns, batches))
    return stripes


def batches_per_chunk(batches: list[list[Tile]], height: int, width: int,
                      chunk_size: int) -> dict[tuple[int, int], list[int]]:
    """For each output chunk ``(row, column)``, the sorted indices of the batches whose tiles
    overlap it."""
    needed: dict[tuple[int, int], set[int]] = {}
    for b, batch in enumerate(batches):
        for tile in batch:
            window = tile.window
            last_row = min(window.row_off + window.height, height) - 1
            last_col = min(window.col_off + window.width, width) - 1
            for i in range(window.row_off // chunk_size, last_row // chunk_size + 1):
                for j in range(window.col_off // chunk_size, last_col // chunk_size + 1):
                    needed.setdefault((i, j), set()).add(b)
    return {chunk: sorted(found) for chunk, found in needed.items()}


def tile_runs(height: int, width: int, options: TilingOptions, skip: frozenset[tuple[int, int]] = frozenset()) -> int:
    """How many tiles the plan reads (tiles on a stripe boundary count once per stripe), leaving
    out those only the chunks ``(row, column)`` in ``skip`` need."""
    total = 0
    for stripe in plan_stripes(height, width, options):
        if not skip:
            total += sum(len(batch) for batch in stripe.batches)
            continue
        needed = batches_per_chunk(stripe.batches, height, width, options.chunk_size)
        used = {b for chunk, batches in needed.items() if chunk not in skip for b in batches}
        total += sum(len(stripe.batches[b]) for b in used)
    return total


def count_tasks(height: int, width: int, options: TilingOptions) -> int:
    """About how many tasks the graph of a ``height`` x ``width`` image has (:mod:`segtile.engine.graph`:
    :data:`BATCH_TASKS` per batch of ``batch_size`` tile runs, tiles on a stripe boundary once per
    stripe; and :data:`CHUNK_TASKS` per output chunk), counted without building anything, for a grid
    of any size. An upper bound: it counts every tile column a stripe boundary may cross."""
    rows = tiles_along(height, options.tile_size, options.overlap, options.alignment)
    columns = tiles_along(width, options.tile_size, options.overlap, options.alignment)
    chunk_columns = -(-width // options.chunk_size)
    per_stripe = chunk_columns if options.stripe_width == 0 else max(1, options.stripe_width // options.chunk_size)
    stripes = -(-chunk_columns // per_stripe)
    # tile columns over a stripe boundary: tile / stride, and the last column, shifted inward
    crossing = -(-options.tile_size // (options.tile_size - options.overlap)) + 1
    runs = rows * min(columns * stripes, columns + (stripes - 1) * crossing)
    batches = -(-runs // options.batch_size) + stripes
    return BATCH_TASKS * batches + CHUNK_TASKS * -(-height // options.chunk_size) * chunk_columns
