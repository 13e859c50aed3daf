"""The Dask graph: read tiles -> batch -> predict -> weight -> stitch per output chunk.

Three kinds of task, all small and picklable:

* one ``batch`` task per group of ``batch_size`` tiles: reads the tiles (padding images smaller
  than a tile), runs the predictor and returns each tile's weighted logits and weights, with the
  weight set to zero on invalid (nodata) pixels and for tiles that hold no valid pixel at all
  (those are never sent to the model);
* one ``stitch`` task per output chunk: sums the weighted logits of the tiles that overlap it and
  divides by the exact sum of their weights (NaN where that sum is zero: nodata);
* two shared keys, the source and the model spec, so neither is copied into every task.

Memory is bounded by the batches in flight plus the chunks being stitched: Dask frees a batch as
soon as the chunks that need it are done, whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.windows import Window, intersect, intersection

from tiler.blend import check_blend, tile_weight
from tiler.grid import Tile, check_tiling, tile_grid
from tiler.memory import release_free_memory
from tiler.predictor import ModelSpec, get_predictor
from tiler.sources import Source

BATCH_PREFIX = "segtile-batch-"


@dataclass(frozen=True)
class TilingOptions:
    """How the image is cut and put back together."""

    tile_size: int = 512
    overlap: int = 64
    blend: str = "gaussian"
    batch_size: int = 4
    chunk_size: int = 1024
    level: int = 0
    device: str = "auto"
    precision: str = "fp32"

    def validate(self) -> None:
        check_tiling(self.tile_size, self.overlap)
        check_blend(self.blend)
        for name in ("batch_size", "chunk_size"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name.replace('_', ' ')} must be a positive integer, got {value}")


@dataclass(frozen=True)
class TileResult:
    """One tile's contribution: ``weighted`` logits ``(classes, h, w)`` and ``weight`` ``(h, w)``
    over ``window``, the tile's window clipped to the image."""

    window: Window
    weighted: np.ndarray
    weight: np.ndarray


def read_tile(source: Source, tile: Tile, level: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile's pixels ``(bands, T, T)`` and validity ``(T, T)``.

    A tile running past the image (only when the image is smaller than a tile) is padded by
    reflection; the padding is marked invalid so it never counts.
    """
    height, width = source.level_shapes[level]
    window = tile.window
    inside = intersection(window, Window(0, 0, width, height))
    pixels = source.read(inside, level)
    valid = source.read_valid(inside, level)
    if valid is None:
        valid = np.ones(pixels.shape[1:], dtype=bool)
    pad = ((0, window.height - inside.height), (0, window.width - inside.width))
    if any(after for _, after in pad):
        pixels = np.pad(pixels, ((0, 0), *pad), mode="reflect" if min(pixels.shape[1:]) > 1 else "edge")
        valid = np.pad(valid, pad, mode="constant", constant_values=False)
    return pixels, valid


def _masked_weight(tile: Tile, valid: np.ndarray, options: TilingOptions) -> np.ndarray:
    """The tile's blend weight, zero on invalid pixels; the shared cached array when all are valid."""
    weight = tile_weight(options.blend, options.tile_size, options.overlap, tile.edges)
    return weight if valid.all() else weight * valid


def run_batch(source: Source, spec: ModelSpec, tiles: list[Tile], options: TilingOptions) -> list[TileResult]:
    """Read ``tiles``, predict those holding valid pixels, weight them; one task of the graph."""
    height, width = source.level_shapes[options.level]
    reads = [read_tile(source, tile, options.level) for tile in tiles]
    weights = [_masked_weight(tile, valid, options) for tile, (_, valid) in zip(tiles, reads)]
    keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
    if not keep:
        return []
    pixels = np.stack([reads[i][0] for i in keep])
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.float32)
    kept_weights = np.stack([weights[i] for i in keep])
    weighted = get_predictor(spec, options.device, options.precision)(pixels, kept_weights)
    results = []
    for row, i in enumerate(keep):
        inside = intersection(tiles[i].window, Window(0, 0, width, height))
        h, w = inside.height, inside.width
        results.append(TileResult(inside, weighted[row, :, :h, :w], weights[i][:h, :w]))
    return results


def _done(_: object) -> None:
    """A marker that a chunk is stitched: carries the order of the chunks, not their data."""
    return None


def stitch_chunk(chunk: Window, num_classes: int, _previous: None, *batches: list[TileResult]) -> np.ndarray:
    """Logits ``(classes, h, w)`` of ``chunk``: sum of weighted logits / sum of weights.

    Pixels with no weight (nodata, skipped tiles) are NaN.
    """
    total = np.zeros((num_classes, chunk.height, chunk.width), dtype=np.float32)
    weight = np.zeros((chunk.height, chunk.width), dtype=np.float32)
    for results in batches:
        for result in results:
            if not intersect(result.window, chunk):
                continue
            common = intersection(result.window, chunk)
            src = _relative_slices(common, result.window)
            dst = _relative_slices(common, chunk)
            total[(slice(None), *dst)] += result.weighted[(slice(None), *src)]
            weight[dst] += result.weight[src]
    with np.errstate(invalid="ignore", divide="ignore"):
        total /= weight
    total[:, weight == 0] = np.nan
    release_free_memory()
    return total


def _relative_slices(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Row and column slices of ``inner`` in the array that covers ``outer``."""
    row = inner.row_off - outer.row_off
    col = inner.col_off - outer.col_off
    return slice(row, row + inner.height), slice(col, col + inner.width)


def _chunks(length: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, length - start) for start in range(0, length, size))


def _batches_per_chunk(
    batches: list[list[Tile]], height: int, width: int, chunk_size: int
) -> dict[tuple[int, int], set[int]]:
    """For each output chunk ``(i, j)``, the indices of the batches whose tiles overlap it."""
    needed: dict[tuple[int, int], set[int]] = {}
    for b, batch in enumerate(batches):
        for tile in batch:
            w = tile.window
            last_row = min(w.row_off + w.height, height) - 1
            last_col = min(w.col_off + w.width, width) - 1
            for i in range(w.row_off // chunk_size, last_row // chunk_size + 1):
                for j in range(w.col_off // chunk_size, last_col // chunk_size + 1):
                    needed.setdefault((i, j), set()).add(b)
    return needed


def build_logits(source: Source, spec: ModelSpec, options: TilingOptions) -> da.Array:
    """The lazy logits ``(classes, H, W)`` float32 of ``source`` at ``options.level``."""
    options.validate()
    height, width = source.level_shapes[options.level]
    num_classes = spec.card.num_classes
    tiles = tile_grid(height, width, options.tile_size, options.overlap)
    batches = [tiles[i:i + options.batch_size] for i in range(0, len(tiles), options.batch_size)]

    token = tokenize(source, spec.token, options)
    source_key, spec_key = f"segtile-source-{token}", f"segtile-model-{token}"
    batch_name, logits_name = f"{BATCH_PREFIX}{token}", f"segtile-logits-{token}"
    graph: dict = {source_key: source, spec_key: spec}
    for b, batch in enumerate(batches):
        graph[(batch_name, b)] = (run_batch, source_key, spec_key, batch, options)

    row_chunks, col_chunks = _chunks(height, options.chunk_size), _chunks(width, options.chunk_size)
    needed = _batches_per_chunk(batches, height, width, options.chunk_size)
    done_name, previous = f"segtile-done-{token}", None
    for i, chunk_h in enumerate(row_chunks):
        for j, chunk_w in enumerate(col_chunks):
            chunk = Window(j * options.chunk_size, i * options.chunk_size, chunk_w, chunk_h)
            deps = [(batch_name, b) for b in sorted(needed.get((i, j), ()))]
            graph[(logits_name, 0, i, j)] = (stitch_chunk, chunk, num_classes, previous, *deps)
            previous = (done_name, i, j)
            graph[previous] = (_done, (logits_name, 0, i, j))

    hlg = HighLevelGraph.from_collections(logits_name, graph, dependencies=())
    chunks = ((num_classes,), row_chunks, col_chunks)
    return da.Array(hlg, logits_name, chunks, dtype=np.float32)

