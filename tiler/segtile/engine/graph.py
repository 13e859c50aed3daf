"""The Dask graph: read tiles -> batch -> predict -> weight -> stitch per output chunk.

Three kinds of task, all small and picklable:

* one ``batch`` task per group of ``batch_size`` tiles of a stripe (:mod:`segtile.tiling.plan`): reads
  the tiles (padding those that run past the image), runs the predictor and returns each tile's
  weighted logits, pixel-major ``(h, w, classes)`` as the network's channels-last output comes,
  and its weights, set to zero on invalid pixels and where the logits were not finite; tiles
  holding no valid pixel are never sent to the model;
* one ``chunk`` task per output chunk: sums the weighted logits of the tiles that overlap it into
  an accumulator its thread reuses from chunk to chunk, and computes from it only the
  *products* asked for: the labels (the argmax of the sums: dividing by the sum of weights,
  positive, cannot change it), the probabilities or the logits (the sums divided by the exact sum
  of the weights). The accumulator never leaves the task, so a 150-class model holds
  150 floats per pixel only for the chunk being stitched, and a labels-only job brings one byte
  per pixel out of it. Pixels with no weight (nodata, skipped tiles) are nodata in every product.
  When the model runs on a GPU of this process the tile results stay there, as tensors, and the
  chunk task sums and reduces them there (:func:`stitches_on_device`): only the products cross;
* two shared keys, the source and the model spec, so neither is copied into every task.

Each chunk task also takes a data-free marker of the completion of the chunk before it in its
stripe, so each stripe is stitched row by row (stripes are independent: computing part of the
result runs only the stripes it touches, down to the rows it asks for). On Dask's local
scheduler each batch waits behind the stitching too, and the stripes a computation asks for are
stitched one after another (:mod:`segtile.engine.order`): a slowed-down thread no longer lets
the others run ahead, whoever consumes the result. A ``dask.distributed`` scheduler
runs every ready batch it can, far ahead of the stitching: a graph built while a client is
current therefore makes each batch task wait for the marker of the last chunk of the row
``BATCH_LEAD_ROWS`` above its first tile. Dask frees a batch as soon as the chunks that need it
are done, so memory is bounded by the batches in flight, the band of batches one tile row high and one stripe wide
that straddles the current chunk row, and the chunks being stitched, whatever the image size;
:func:`segtile.tiling.budget.plan_memory` sizes stripes, chunks and batches to the class count so that
bound holds for 2 classes and for 150.

Chunks already computed by an interrupted run (``skip``) get no task at all: the chain of markers
passes over them, and nothing they alone needed is run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph
from rasterio.windows import Window, intersect, intersection

from segtile.engine.cluster import current_client, task_threads
from segtile.engine.events import TileCounts, report
from segtile.engine.heap import keep_large_arrays_off_the_heap, release_free_memory
from segtile.engine.interrupt import stop_if_asked
from segtile.engine.order import OrderedLayer, StripeOrder, done
from segtile.inference.devices import resolve_device
from segtile.inference.predictor import ModelSpec, get_predictor
from segtile.sources import Source
from segtile.tiling.blend import tile_weight
from segtile.tiling.grid import Tile
from segtile.tiling.plan import TilingOptions, batches_per_chunk, plan_stripes

PRODUCTS = ("labels", "probabilities", "logits")
BATCH_PREFIX = "segtile-batch-"
BATCH_LEAD_ROWS = 1
"""On a ``dask.distributed`` cluster, how many chunk rows a stripe's batches may run ahead of its
stitching (see the module docstring). One: at 30000 px, 1.8x the threaded run's memory per
worker with two, 1.5x with one, 0.85x with one and the stripes computed one after another
(``segtile.store.workstore.WorkStore.fill``) against 1.9x without either (docs/performance.md)."""


Array = np.ndarray | torch.Tensor  # a tile result: in host memory, or on the model's device


def label_dtype(num_classes: int) -> tuple[np.dtype, int]:
    """The label dtype and nodata value: uint8 / 255 up to 255 classes, else uint16 / 65535."""
    if num_classes <= 255:
        return np.dtype(np.uint8), 255
    return np.dtype(np.uint16), 65535


@dataclass(frozen=True)
class TileResult:
    """One tile's contribution over ``window`` (the tile's window clipped to the image):
    ``logits`` ``(h, w, classes)`` and ``weight`` ``(h, w)``, numpy arrays or, to be stitched on
    the model's device, tensors there. The logits carry their weight when ``weighted``; float16
    ones do not, and are weighted as they are summed (:func:`segtile.inference.predictor.for_stitching`)."""

    window: Window
    logits: Array
    weight: Array
    weighted: bool = True


def read_tile(source: Source, tile: Tile) -> tuple[np.ndarray, np.ndarray | None]:
    """The tile's pixels ``(bands, T, T)`` and validity ``(T, T)`` (``None``: all valid).

    Pixels that are not finite (NaN, infinite) are invalid, whatever the source says. A tile
    running past the image (see :mod:`segtile.tiling.grid`) is padded by reflection; the padding is
    marked invalid so it never counts.
    """
    window = tile.window
    inside = intersection(window, Window(0, 0, source.width, source.height))
    pixels, valid = source.read_with_valid(inside)
    if pixels.dtype.kind in "fc":
        finite = np.isfinite(pixels).all(axis=0)
        if not finite.all():
            valid = finite if valid is None else valid & finite
    pad = ((0, window.height - inside.height), (0, window.width - inside.width))
    if any(after for _, after in pad):
        pixels = np.pad(pixels, ((0, 0), *pad), mode="reflect" if min(pixels.shape[1:]) > 1 else "edge")
        if valid is None:
            valid = np.ones((inside.height, inside.width), dtype=bool)
        valid = np.pad(valid, pad, mode="constant", constant_values=False)
    return pixels, (None if valid is not None and valid.all() else valid)


def _seen(valid: np.ndarray | None, inside: Window) -> np.ndarray | None:
    """The pixels of a tile the network sees as they are (``None``: all): the image's valid
    pixels, and the padding past the image's edge where it reflects valid ones. ``valid`` is the
    tile's validity from :func:`read_tile`, ``inside`` the part of its window within the image.
    The padding counts for nothing in the blend (:func:`read_tile` marks it invalid), but zeroed
    it would be a band the network never saw in training, and the image's last rows are
    classified beside it."""
    if valid is None:
        return None
    inner = valid[:inside.height, :inside.width]
    if inner.all():
        return None
    pad = ((0, valid.shape[0] - inside.height), (0, valid.shape[1] - inside.width))
    return np.pad(inner, pad, mode="reflect" if min(inner.shape) > 1 else "edge")


def _masked_weight(tile: Tile, valid: np.ndarray | None, options: TilingOptions) -> np.ndarray:
    """The tile's blend weight, zero on invalid pixels; the shared cached array when all are valid."""
    weight = tile_weight(options.blend, options.tile_size, options.overlap, tile.edges)
    return weight if valid is None else weight * valid


def _valid_count(valid: np.ndarray | None, size: int) -> int:
    return size if valid is None else int(np.count_nonzero(valid))


def run_batch(source: Source, spec: ModelSpec, tiles: list[Tile], options: TilingOptions,
              progress_topic: str, on_device: bool = False, *_after: None) -> list[TileResult]:
    """Read ``tiles``, predict those holding valid pixels, weight them; one task of the graph.
    The tile counts are then reported under ``progress_topic`` (:mod:`segtile.engine.events`).
    ``on_device`` keeps the results on the model's device (tensors) for :func:`stitch_chunk` to
    sum there. ``_after`` are the markers the batch waits for (:mod:`segtile.engine.order`; their data is
    nothing)."""
    stop_if_asked()
    keep_large_arrays_off_the_heap()  # once per process, wherever the batches run
    reads = [read_tile(source, tile) for tile in tiles]
    weights = [_masked_weight(tile, valid, options) for tile, (_, valid) in zip(tiles, reads)]
    counts = [_valid_count(valid, options.tile_size ** 2) for _, valid in reads]
    keep = [i for i, count in enumerate(counts) if count]
    results, valid, nonfinite = [], 0, 0
    if keep:
        # stacked into this thread's buffers: the predictor copies both before it returns
        pixels = np.stack([reads[i][0] for i in keep], out=_pixels_buffer(len(keep), reads[keep[0]][0]))
        if pixels.dtype != np.uint8:
            pixels = pixels.astype(np.float32)
        predictor = get_predictor(spec, options.device, options.precision, options.augmentation)
        size = options.tile_size
        image = Window(0, 0, source.width, source.height)
        insides = {i: intersection(tiles[i].window, image) for i in keep}
        seen = [_seen(reads[i][1], insides[i]) for i in keep]
        all_seen = all(mask is None for mask in seen)
        stacked_seen = None if all_seen else np.stack(
            [np.ones((size, size), dtype=bool) if mask is None else mask for mask in seen])
        stacked_weights = np.stack([weights[i] for i in keep], out=_scratch("weights", (len(keep), size, size)))
        predicted = predictor(pixels, stacked_weights, all_seen, on_device, stacked_seen)
        valid, nonfinite = sum(counts), predicted.nonfinite
        for row, i in enumerate(keep):
            inside = insides[i]
            h, w = inside.height, inside.width
            weight = weights[i] if predicted.weights is None else predicted.weights[row]
            results.append(TileResult(inside, predicted.logits[row, :h, :w], weight[:h, :w], predicted.weighted))
    report(progress_topic, TileCounts(read=len(tiles), run=len(keep), valid=valid, nonfinite=nonfinite))
    return results


_SCRATCH = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: np.dtype = np.float32) -> np.ndarray:
    """An array of ``shape`` and ``dtype``, this thread's buffer ``name`` reused from one task to
    the next (a fresh multi-MB array each time would cost a page fault per 4 KiB of it). Its
    contents are the previous task's: only for arrays no result keeps a view of."""
    size = int(np.prod(shape))
    buffer = getattr(_SCRATCH, name, None)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = np.empty(size, dtype=dtype)
        setattr(_SCRATCH, name, buffer)
    return buffer[:size].reshape(shape)


def _pixels_buffer(count: int, like: np.ndarray) -> np.ndarray:
    """This thread's buffer for ``count`` tiles shaped ``(bands, T, T)`` like ``like``, and laid out
    like it: bands innermost when its are (a slide's windows, interleaved as stored), so that
    stacking copies whole rows and a channels-last network takes the batch as it is."""
    bands, height, width = like.shape
    if bands > 1 and like.strides[0] == like.itemsize:
        return _scratch("pixels", (count, height, width, bands), like.dtype).transpose(0, 3, 1, 2)
    return _scratch("pixels", (count, *like.shape), like.dtype)


def _zeroed(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """This thread's float32 buffer ``name`` (see :func:`_scratch`), zeroed."""
    array = _scratch(name, shape)
    array.fill(0.0)
    return array


def stitch_chunk(chunk: Window, num_classes: int, products: tuple[str, ...], _previous: None,
                 *batches: list[TileResult]) -> dict[str, np.ndarray]:
    """The ``products`` of ``chunk`` from the tiles of ``batches`` (see the module docstring):
    ``labels`` ``(h, w)``, ``probabilities`` and ``logits`` ``(classes, h, w)`` float32. Tile
    results kept on the model's device are summed there (:func:`_stitch_on_device`)."""
    stop_if_asked()
    results = [result for results in batches for result in results if intersect(result.window, chunk)]
    if results and isinstance(results[0].logits, torch.Tensor):
        return _stitch_on_device(chunk, num_classes, products, results)
    total = _zeroed("total", (chunk.height, chunk.width, num_classes))
    weight = _zeroed("weight", (chunk.height, chunk.width))
    _accumulate(total, weight, chunk, results)
    empty = weight == 0
    out = {}
    if "labels" in products:
        dtype, nodata = label_dtype(num_classes)
        labels = argmax_last(total, dtype)
        labels[empty] = nodata
        out["labels"] = labels
    if "probabilities" in products or "logits" in products:
        with np.errstate(invalid="ignore", divide="ignore"):
            total /= weight[..., None]
        total[empty] = np.nan
        # copies, in (classes, h, w) order: the accumulator is this thread's, for the next chunk
        if "logits" in products:
            out["logits"] = np.moveaxis(total, -1, 0).copy()
        if "probabilities" in products:
            out["probabilities"] = np.moveaxis(softmax_last(total), -1, 0).copy()
    release_free_memory()
    return out


def _accumulate(total: Array, weight: Array, chunk: Window, results: list[TileResult]) -> None:
    """Sum the weighted logits and the weights of ``results`` over ``chunk`` into ``total``
    ``(h, w, classes)`` and ``weight`` ``(h, w)``: numpy arrays, or tensors on the results' device."""
    for result in results:
        common = intersection(result.window, chunk)
        src = _relative_slices(common, result.window)
        dst = _relative_slices(common, chunk)
        if result.weighted:
            total[dst] += result.logits[src]
        else:  # float16 logits, weighted here in float32 without a temporary
            _tensor(total[dst]).addcmul_(_tensor(result.logits[src]), _tensor(result.weight[src]).unsqueeze(-1))
        weight[dst] += result.weight[src]


def _tensor(array: Array) -> torch.Tensor:
    """``array`` as a tensor sharing its memory (a numpy view stays a view)."""
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(array)


def _stitch_on_device(chunk: Window, num_classes: int, products: tuple[str, ...],
                      results: list[TileResult]) -> dict[str, np.ndarray]:
    """:func:`stitch_chunk` for results kept on the model's device: summed, divided and reduced
    there, so only the products cross to the host (one byte per pixel for labels-only, against
    2 or 4 bytes per class per tile pixel for the tile results). Ties go to the first class, as on
    the host."""
    device = results[0].logits.device
    with torch.inference_mode():
        total = torch.zeros((chunk.height, chunk.width, num_classes), dtype=torch.float32, device=device)
        weight = torch.zeros((chunk.height, chunk.width), dtype=torch.float32, device=device)
        _accumulate(total, weight, chunk, results)
        empty = weight == 0
        out = {}
        if "labels" in products:
            dtype, nodata = label_dtype(num_classes)
            labels = torch.argmax(total, dim=-1).masked_fill_(empty, nodata)
            labels = labels.to(torch.uint8 if dtype == np.uint8 else torch.int32)
            out["labels"] = labels.cpu().numpy().astype(dtype, copy=False)
        if "probabilities" in products or "logits" in products:
            total /= weight.unsqueeze(-1)
            total[empty] = torch.nan
            if "logits" in products:
                out["logits"] = total.permute(2, 0, 1).contiguous().cpu().numpy()
            if "probabilities" in products:
                out["probabilities"] = torch.softmax(total, dim=-1).permute(2, 0, 1).contiguous().cpu().numpy()
    return out


SMALL_CLASS_COUNT = 16  # up to this many classes, comparing slices beats np.argmax on the last axis


def argmax_last(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Index of the largest value along the last axis (the first one on ties, as
    ``np.argmax``), as ``dtype``. For a few classes, class by class over whole slices: numpy's
    argmax along a short last axis loops per pixel, several times slower."""
    classes = values.shape[-1]
    if classes > SMALL_CLASS_COUNT:
        return np.argmax(values, axis=-1).astype(dtype)
    if classes == 2:
        return np.greater(values[..., 1], values[..., 0]).astype(dtype)
    best = values[..., 0].copy()
    index = np.zeros(values.shape[:-1], dtype=dtype)
    for c in range(1, classes):
        better = values[..., c] > best
        index[better] = c
        np.maximum(best, values[..., c], out=best)
    return index


def softmax_last(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in place; NaN (nodata) stays NaN."""
    logits -= np.max(logits, axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= np.sum(logits, axis=-1, keepdims=True)
    return logits


def _relative_slices(inner: Window, outer: Window) -> tuple[slice, slice]:
    """Row and column slices of ``inner`` in the array that covers ``outer``."""
    row = inner.row_off - outer.row_off
    col = inner.col_off - outer.col_off
    return slice(row, row + inner.height), slice(col, col + inner.width)


def _chunks(length: int, size: int) -> tuple[int, ...]:
    return tuple(min(size, length - start) for start in range(0, length, size))


def _already_done(product: str, i: int, j: int) -> None:
    raise RuntimeError(f"chunk ({i}, {j}) of the {product} was computed by an earlier run and is not recomputed")


def stitches_on_device(options: TilingOptions) -> bool:
    """Whether the tile results stay on the model's device and are stitched there: as
    ``options.stitch_on_device`` says, or (``None``) when the model runs on a CUDA device of
    this process. A graph built for a ``dask.distributed`` cluster never does (its results cross
    processes): :func:`build_products` asks only without one."""
    if options.stitch_on_device is not None:
        return options.stitch_on_device
    return resolve_device(options.device).type == "cuda"


def run_token(source: Source, spec: ModelSpec, options: TilingOptions) -> str:
    """The token naming a job's tasks: the topic its batch tasks report their tiles under."""
    return tokenize(source, spec.token, options)


def build_products(source: Source, spec: ModelSpec, options: TilingOptions, products: tuple[str, ...],
                   skip: frozenset[tuple[int, int]] = frozenset()) -> dict[str, da.Array]:
    """The lazy ``products`` of ``source`` (its level 0: the grid the model runs on): ``labels``
    ``(H, W)``, ``probabilities`` and ``logits`` ``(classes, H, W)`` float32, chunked by
    ``options.chunk_size``, all from one chunk task per chunk (computing several together
    stitches once). Chunks ``(row, column)`` in ``skip`` have no task (see the module docstring)."""
    options.validate()
    unknown = set(products) - set(PRODUCTS)
    if unknown or not products:
        raise ValueError(f"products must be among {', '.join(PRODUCTS)}, got {products}")
    height, width = source.height, source.width
    num_classes = spec.card.num_classes
    size = options.chunk_size
    token = run_token(source, spec, options)
    lead = BATCH_LEAD_ROWS if current_client() is not None else None
    on_device = lead is None and stitches_on_device(options)
    products_token = tokenize(token, products, sorted(skip), lead, on_device)
    source_key, spec_key = f"segtile-source-{token}", f"segtile-model-{token}"
    batch_tasks, chunk_tasks = f"{BATCH_PREFIX}{token}", f"segtile-chunk-{products_token}"
    done_name, ran_name = f"segtile-done-{products_token}", f"segtile-ran-{products_token}"
    names = {product: f"segtile-{product}-{products_token}" for product in products}
    graph: dict = {source_key: source, spec_key: spec}
    row_chunks, col_chunks = _chunks(height, size), _chunks(width, size)
    stripes: list[StripeOrder] = []
    for s, stripe in enumerate(plan_stripes(height, width, options)):
        needed = batches_per_chunk(stripe.batches, height, width, size)
        previous = None  # one chain per stripe: a chunk needs only the stripe above it, not others
        stitched_through: list[tuple | None] = []  # the last marker of the chain once row i is done
        chain: list[tuple[tuple[int, int], tuple]] = []  # the stripe's chunks and markers, in stitching order
        for i, chunk_h in enumerate(row_chunks):
            for j in stripe.chunk_columns:
                for product, name in names.items():
                    key = (name, i, j) if product == "labels" else (name, 0, i, j)
                    if (i, j) in skip:
                        graph[key] = (_already_done, product, i, j)
                    else:
                        graph[key] = (dict.__getitem__, (chunk_tasks, i, j), product)
                if (i, j) in skip:
                    continue
                chunk = Window(j * size, i * size, col_chunks[j], chunk_h)
                deps = [(batch_tasks, s, b) for b in needed.get((i, j), ())]
                graph[(chunk_tasks, i, j)] = (stitch_chunk, chunk, num_classes, tuple(products), previous, *deps)
                previous = (done_name, i, j)
                graph[previous] = (done, (chunk_tasks, i, j))
                chain.append(((i, j), previous))
            stitched_through.append(previous)
        for b, batch in enumerate(stripe.batches):
            row = -1 if lead is None else batch[0].window.row_off // size - lead
            after = stitched_through[row] if row >= 0 else None
            graph[(batch_tasks, s, b)] = (run_batch, source_key, spec_key, batch, options, batch_tasks, on_device,
                                          *([after] if after else []))
            if lead is None:
                graph[(ran_name, s, b)] = (done, (batch_tasks, s, b))
        stripes.append(StripeOrder([(batch_tasks, s, b) for b in range(len(stripe.batches))], chain, needed))
    layer = graph if lead is not None else OrderedLayer(graph, stripes, names.values(), ran_name, lead=task_threads())
    arrays = {}
    for product, name in names.items():
        hlg = HighLevelGraph.from_collections(name, layer, dependencies=())
        if product == "labels":
            arrays[product] = da.Array(hlg, name, (row_chunks, col_chunks), dtype=label_dtype(num_classes)[0])
        else:
            arrays[product] = da.Array(hlg, name, ((num_classes,), row_chunks, col_chunks), dtype=np.float32)
    return arrays
