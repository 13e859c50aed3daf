"""The Dask graph: read tiles -> batch -> predict -> weight -> stitch per output chunk.

Three kinds of task, all small and picklable:

* one ``batch`` task per group of ``batch_size`` tiles of a stripe (``tiler/plan.py``): reads
  the tiles (padding images smaller than a tile), runs the predictor and returns each tile's
  weighted logits and weights, with the weight set to zero on invalid (nodata) pixels and for
  tiles that hold no valid pixel at all (those are never sent to the model);
* one ``stitch`` task per output chunk: sums the weighted logits of the tiles that overlap it and
  divides by the exact sum of their weights (NaN where that sum is zero: nodata);
* two shared keys, the source and the model spec, so neither is copied into every task.

Each stitch also takes a data-free marker of the completion of the chunk before it in its stripe,
so each stripe is stitched row by row (stripes are independent: computing part of the result
runs only the stripes it touches, down to the rows it asks for). Dask frees a batch as soon as
the chunks that need it are done, so memory is bounded by the batches in flight, the band of
batches one chunk row high and one stripe wide that straddles the current chunk row, and the
chunks being stitched, whatever the image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.windows import Window, intersect, intersection

from segtile.blend import tile_weight
from segtile.events import TileCounts, report
from segtile.grid import Tile
from segtile.memory import keep_large_arrays_off_the_heap, release_free_memory
from segtile.plan import TilingOptions, batches_per_chunk, plan_stripes
from segtile.predictor import ModelSpec, get_predictor
from segtile.sources import Source

BATCH_PREFIX, LOGITS_PREFIX = "segtile-batch-", "segtile-logits-"


def batch_name(logits: da.Array) -> str:
    """The name of the batch tasks behind ``logits`` (from :func:`build_logits`): the keys of
    those tasks start with it, and it is the topic their tile counts are sent under on a cluster."""
    return BATCH_PREFIX + logits.name.removeprefix(LOGITS_PREFIX)


@dataclass(frozen=True)
class TileResult:
    """One tile's contribution: ``weighted`` logits ``(classes, h, w)`` and ``weight`` ``(h, w)``
    over ``window``, the tile's window clipped to the image."""

    window: Window
    weighted: np.ndarray
    weight: np.ndarray


def read_tile(source: Source, tile: Tile) -> tuple[np.ndarray, np.ndarray]:
    """The tile's pixels ``(bands, T, T)`` and validity ``(T, T)``.

    Pixels that are not finite (NaN, infinite) are invalid, whatever the source says. A tile
    running past the image (see :mod:`segtile.grid`) is padded by reflection; the padding is
    marked invalid so it never counts.
    """
    window = tile.window
    inside = intersection(window, Window(0, 0, source.width, source.height))
    pixels, valid = source.read_with_valid(inside)
    if valid is None:
        valid = np.ones(pixels.shape[1:], dtype=bool)
    if pixels.dtype.kind in "fc":
        valid = valid & np.isfinite(pixels).all(axis=0)
    pad = ((0, window.height - inside.height), (0, window.width - inside.width))
    if any(after for _, after in pad):
        pixels = np.pad(pixels, ((0, 0), *pad), mode="reflect" if min(pixels.shape[1:]) > 1 else "edge")
        valid = np.pad(valid, pad, mode="constant", constant_values=False)
    return pixels, valid


def _masked_weight(tile: Tile, valid: np.ndarray, options: TilingOptions) -> np.ndarray:
    """The tile's blend weight, zero on invalid pixels; the shared cached array when all are valid."""
    weight = tile_weight(options.blend, options.tile_size, options.overlap, tile.edges)
    return weight if valid.all() else weight * valid


def run_batch(source: Source, spec: ModelSpec, tiles: list[Tile], options: TilingOptions,
              progress_topic: str) -> list[TileResult]:
    """Read ``tiles``, predict those holding valid pixels, weight them; one task of the graph.
    The tile counts are then reported under ``progress_topic`` (:mod:`segtile.events`)."""
    keep_large_arrays_off_the_heap()  # once per process, wherever the batches run
    reads = [read_tile(source, tile) for tile in tiles]
    weights = [_masked_weight(tile, valid, options) for tile, (_, valid) in zip(tiles, reads)]
    keep = [i for i, (_, valid) in enumerate(reads) if valid.any()]
    results, valid, nonfinite = [], 0, 0
    if keep:
        pixels = np.stack([reads[i][0] for i in keep])
        if pixels.dtype != np.uint8:
            pixels = pixels.astype(np.float32)
        predicted = get_predictor(spec, options.device, options.precision)(pixels, np.stack([weights[i] for i in keep]))
        valid, nonfinite = predicted.valid, predicted.nonfinite
        for row, i in enumerate(keep):
            inside = intersection(tiles[i].window, Window(0, 0, source.width, source.height))
            h, w = inside.height, inside.width
            weight = weights[i] if predicted.weights is None else predicted.weights[row]
            results.append(TileResult(inside, predicted.weighted[row, :, :h, :w], weight[:h, :w]))
    report(progress_topic, TileCounts(read=len(tiles), run=len(keep), valid=valid, nonfinite=nonfinite))
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


def build_logits(source: Source, spec: ModelSpec, options: TilingOptions) -> da.Array:
    """The lazy logits ``(classes, H, W)`` float32 of ``source`` (its level 0: the grid the
    model runs on)."""
    options.validate()
    height, width = source.height, source.width
    num_classes = spec.card.num_classes
    size = options.chunk_size

    token = tokenize(source, spec.token, options)
    source_key, spec_key = f"segtile-source-{token}", f"segtile-model-{token}"
    batch_tasks, logits_name = f"{BATCH_PREFIX}{token}", f"{LOGITS_PREFIX}{token}"
    done_name = f"segtile-done-{token}"
    graph: dict = {source_key: source, spec_key: spec}
    row_chunks, col_chunks = _chunks(height, size), _chunks(width, size)
    for s, stripe in enumerate(plan_stripes(height, width, options)):
        for b, batch in enumerate(stripe.batches):
            graph[(batch_tasks, s, b)] = (run_batch, source_key, spec_key, batch, options, batch_tasks)
        needed = batches_per_chunk(stripe.batches, height, width, size)
        previous = None  # one chain per stripe: a chunk needs only the stripe above it, not others
        for i, chunk_h in enumerate(row_chunks):
            for j in stripe.chunk_columns:
                chunk = Window(j * size, i * size, col_chunks[j], chunk_h)
                deps = [(batch_tasks, s, b) for b in needed.get((i, j), ())]
                graph[(logits_name, 0, i, j)] = (stitch_chunk, chunk, num_classes, previous, *deps)
                previous = (done_name, i, j)
                graph[previous] = (_done, (logits_name, 0, i, j))

    hlg = HighLevelGraph.from_collections(logits_name, graph, dependencies=())
    chunks = ((num_classes,), row_chunks, col_chunks)
    return da.Array(hlg, logits_name, chunks, dtype=np.float32)
