"""Memory budget: the sizes of batches, chunks and stripes that keep a job within a limit, whatever
its class count and its tiling; and the refusal, before any work, of jobs no sizes keep within it.

What a job holds grows with the number of classes C and with how much the tiles overlap: each
tile's weighted logits are C values per pixel, a chunk being stitched sums C values per pixel,
and the tile results that wait for the stitching span the stripe's width. With 2 classes the
defaults (batches of 4 tiles, chunks of 1024, stripes of 8192 px) hold tens of megabytes; with
150 (ADE20K), or with tiles that overlap by most of their width, the same sizes would hold
gigabytes. So whatever the user leaves open is chosen from the limit (``--memory-limit``):

* batches: at most 4 tiles, and a quarter of the limit for the batches in flight (one per thread);
* chunks: the largest of 1024, 512, 256, 128 or 64 whose accumulators (one per thread) take at
  most an eighth of the limit;
* stripes: the widest, in whole chunks and at most 8192 px, with which the whole job fits
  (:func:`engine_bytes`); when not even one chunk's width does, smaller chunks are tried, and
  then batches of one tile.

While a chunk is stitched the job holds (:func:`held_tiles`) the tile results that cross the
boundary between two chunk rows, ``tile / stride`` rows of them, each ``(width + tile) / stride``
tiles across the stripe (the tiles reaching into it from its left count too) plus the rest of a
batch; and the tiles the chunk itself needs, ``(chunk + tile) / stride`` each way. With the
default overlap that is about two rows and a dozen tiles; with a stride of an eighth of the tile,
eight rows and 64 times the tiles per chunk. When even the smallest sizes hold more than the
limit, the job is refused before any work, saying what it would need. Sizes the user gives are
used as they are, unless they hold more than the limit.

The plan costs memory too: the Dask graph, about :data:`TASK_BYTES` per task (a batch of tiles,
a chunk), and the scheduler's state for the tasks of the stripe it runs,
:data:`RUNNING_TASK_BYTES` each; both are counted with the rest when the image's size is known.
:func:`check_plan_size` counts the tasks of the fewest-task plan, without building anything, and
refuses jobs whose graph alone would take more than half the limit (chunks of a few pixels, a grid
of absurd size).

The price of narrower stripes is the tiles on their boundaries, run once per stripe (see
:mod:`segtile.tiling.plan`). The figures this was checked against are in docs/performance.md.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from segtile.errors import BudgetError
from segtile.tiling.grid import tiles_along
from segtile.tiling.plan import TilingOptions, count_tasks

DEFAULT_LIMIT = 1280 * 2**20
"""The engine's share; the interpreter, torch and the model come on top (about 400 MiB with torch's
CPU build): a 150-class model over 10000 x 10000 px peaks at about 1.7 GiB in all, a 2-class one
at about 0.75 GiB (docs/performance.md)."""
MAX_BATCH, MAX_CHUNK, MAX_STRIPE = 4, 1024, 8192
CHUNK_SIZES = (1024, 512, 256, 128, 64)
READ_CACHE = 64 * 2**20
"""The larger of GDAL's block cache as segtile bounds it for rasters (16 MB, :mod:`segtile.sources.raster`)
and, for slides, the cache of decoded tiles (:data:`segtile.sources.tile_cache.DECODED_TILE_BYTES`):
decoded blocks of the image, held whatever the plan."""
WRITE_QUEUE = 8 * 2**20
"""The chunks handed to Zarr and not yet written: eight 1024 px chunks of labels, or one chunk per
thread whatever its size (:class:`segtile.writers.blocks.ZarrWrites`; a thread's chunk of
probabilities is the product the plan counts for it, held while written as before)."""
TASK_BYTES = 2**10
"""Memory per task of the Dask graph, held for the whole job: its entries and the plan's objects
(measured: 0.4-0.8 KiB per task; docs/performance.md)."""
RUNNING_TASK_BYTES = 4 * 2**10
"""Memory per task of the scheduler's state while it runs them (measured: 3.6-4.5 KiB per task).
``segtile`` and the result's writers compute one stripe at a time, so this is counted for one
stripe's tasks; a Dask consumer computing the whole result at once (``result.labels.compute()``)
holds it for every task."""
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """``"1.5G"``, ``"800M"``, ``"2GiB"``, ``"1000000"`` -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise BudgetError(f"cannot read the memory size {text!r}: write e.g. 1.5G, 800M or 2GiB")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


@dataclass(frozen=True)
class MemoryPlan:
    """Sizes for a job: tiles per batch, output chunk side, stripe width (see the module docstring)."""

    batch_size: int
    chunk_size: int
    stripe_width: int


def tile_result_bytes(classes: int, tile_size: int, bytes_per_value: int = 4) -> int:
    """The bytes of one tile's result: its weighted logits and its weights."""
    return tile_size * tile_size * (classes * bytes_per_value + 4)


def held_tiles(tile_size: int, overlap: int, chunk_size: int, width: int, batch_size: int) -> float:
    """How many tile results a stripe ``width`` px wide holds while one of its chunks is stitched
    (see the module docstring): the rows crossing a chunk row's boundary, and the chunk's tiles."""
    stride = tile_size - overlap
    crossing_rows = tile_size / stride
    per_row = (width + tile_size) / stride + batch_size - 1
    per_chunk_side = (chunk_size + tile_size) / stride
    return crossing_rows * per_row + per_chunk_side ** 2


def engine_bytes(plan: MemoryPlan, *, classes: int, tile_size: int, overlap: int, threads: int,
                 shape: tuple[int, int] | None = None, alignment: int = 1, bytes_per_value: int = 4,
                 bands: int = 3) -> float:
    """What a job of ``plan`` holds at most, about, when one thread stitches a chunk: the tile
    results waiting for the stitching (the chunk's among them), a batch in flight on each other
    thread, the buffers each thread keeps (a batch's ``bands`` in two layouts and its weights; a
    chunk accumulator: the sums, the weights and a product), GDAL's block cache
    (:data:`READ_CACHE`) and the chunks on their way into a Zarr store (:data:`WRITE_QUEUE`); on an
    image of ``shape`` ``(height, width)``, never more tiles or chunk pixels than it has
    (``None``: an image larger than any stripe)."""
    height, width = shape or (math.inf, math.inf)
    stripe = min(plan.stripe_width or (width if shape else MAX_STRIPE), width)  # 0: the whole width
    tiles = math.inf if shape is None else (tiles_along(height, tile_size, overlap, alignment)
                                           * tiles_along(width, tile_size, overlap, alignment))
    held = min(held_tiles(tile_size, overlap, plan.chunk_size, stripe, plan.batch_size), tiles)
    tile = tile_result_bytes(classes, tile_size, bytes_per_value)
    batches = (threads - 1) * min(plan.batch_size, tiles) * tile
    chunks = threads * min(plan.chunk_size, height) * min(plan.chunk_size, width) * (classes * 8 + 4)
    inputs = threads * plan.batch_size * tile_size * tile_size * (bands * 8 + 4)
    return batches + chunks + inputs + held * tile + READ_CACHE + WRITE_QUEUE


def plan_memory(*, classes: int, tile_size: int, overlap: int, threads: int, limit: int = DEFAULT_LIMIT,
                bytes_per_value: int = 4, batch_size: int | None = None, chunk_size: int | None = None,
                stripe_width: int | None = None, shape: tuple[int, int] | None = None,
                alignment: int = 1, bands: int = 3) -> MemoryPlan:
    """Fill in the sizes left ``None`` so the job holds about ``limit`` bytes at most.

    Args:
        classes: the model's class count.
        tile_size, overlap, alignment: the tiling (after fitting it to the image and the network).
        threads: tasks running at once in a process (:func:`segtile.engine.cluster.task_threads`).
        bytes_per_value: of the weighted logits held per tile (4, or 2 in a half precision run).
        shape: the image's ``(height, width)`` (``None``: larger than any stripe).
        bands: the bands the model reads.

    Raises:
        BudgetError: a limit under 16 MiB, or a job that holds more than ``limit`` with the sizes
            given, or with any sizes.
    """
    if limit < 16 * 2**20:
        raise BudgetError(f"a memory limit of {limit / 2**20:.0f} MiB is too small: give at least 16M")
    job = {"classes": classes, "tile_size": tile_size, "overlap": overlap, "threads": threads, "shape": shape,
           "alignment": alignment, "bytes_per_value": bytes_per_value, "bands": bands}
    width = None if shape is None else shape[1]
    least = None  # (bytes, plan): the plan that holds least, for the refusal
    for batch in _batch_sizes(batch_size, threads, limit, tile_result_bytes(classes, tile_size, bytes_per_value)):
        for chunk in _chunk_sizes(chunk_size, classes, threads, limit):
            for stripe in ([stripe_width] if stripe_width is not None else _stripe_widths(chunk, width)):
                plan = MemoryPlan(batch, chunk, stripe)
                needed = engine_bytes(plan, **job) + _graph_bytes(plan, shape, tile_size, overlap, alignment)
                if needed <= limit:
                    return plan
                least = min(least or (needed, plan), (needed, plan), key=lambda pair: pair[0])
    given = [flag for flag, value in (("--batch-size", batch_size), ("--chunk-size", chunk_size),
                                      ("--stripe-width", stripe_width)) if value is not None]
    raise BudgetError(_over_limit(*least, limit, classes, tile_size, overlap, threads, given))


SMALL_CHUNK = 128
"""Chunks this small or smaller, chosen by the plan, get a note (:func:`small_chunks_note`): a
sixty-fourth of the pixels of the largest, so many more tasks and a slower job."""


def small_chunks_note(plan: MemoryPlan, *, classes: int, threads: int, limit: int) -> str | None:
    """A note when the plan shrank the chunks to :data:`SMALL_CHUNK` px or less, naming why (the
    classes, the threads each holding a chunk, the limit) and the limit that would give chunks
    of 512 px; ``None`` otherwise. Never silent: many-class jobs on many threads get such chunks."""
    if plan.chunk_size > SMALL_CHUNK:
        return None
    wanted = 512
    needed = 8 * threads * wanted * wanted * _chunk_pixel_bytes(classes)
    return (f"the memory plan stitches chunks of {plan.chunk_size} px (not {MAX_CHUNK}): {classes} classes on "
            f"{threads} threads, each holding a chunk, within a memory limit of {_size(limit)}; so many small chunks "
            f"run slower: give --memory-limit {_mebibytes(max(needed, limit))} or more for chunks of {wanted} px, "
            "or fewer threads (DASK_NUM_WORKERS; Python: dask.config.set(num_workers=...))")


def _chunk_pixel_bytes(classes: int) -> int:
    """The bytes a thread's chunk holds per pixel: the accumulator, the weights, one product."""
    return classes * 4 + 4 + classes * 4


def _graph_bytes(plan: MemoryPlan, shape: tuple[int, int] | None, tile_size: int, overlap: int,
                 alignment: int) -> float:
    """The plan's own memory on an image of ``shape``: the graph of all its tasks, and the
    scheduler's state for one stripe's (nothing counted without a shape)."""
    if shape is None:
        return 0
    height, width = shape
    options = TilingOptions(tile_size=tile_size, overlap=overlap, batch_size=plan.batch_size,
                            chunk_size=plan.chunk_size, stripe_width=plan.stripe_width, alignment=alignment)
    stripe = replace(options, stripe_width=0)
    return (count_tasks(height, width, options) * TASK_BYTES
            + count_tasks(height, min(plan.stripe_width or width, width), stripe) * RUNNING_TASK_BYTES)


def _batch_sizes(given: int | None, threads: int, limit: int, tile: int) -> list[int]:
    """The batch sizes to try: the one given, else the largest (up to :data:`MAX_BATCH`) whose
    batches in flight take at most a quarter of ``limit``, and then 1."""
    if given is not None:
        return [given]
    fitting = max(1, min(MAX_BATCH, int(limit / 4 / threads // tile)))
    return [fitting, 1] if fitting > 1 else [1]


def _chunk_sizes(given: int | None, classes: int, threads: int, limit: int) -> list[int]:
    """The chunk sides to try, largest first: the one given, else those of :data:`CHUNK_SIZES`
    from the largest whose accumulators take at most an eighth of ``limit``."""
    if given is not None:
        return [given]
    fitting = [size for size in CHUNK_SIZES if threads * size * size * _chunk_pixel_bytes(classes) <= limit / 8]
    return fitting or [CHUNK_SIZES[-1]]


def _stripe_widths(chunk: int, width: int | None) -> list[int]:
    """Stripe widths to try with chunks of ``chunk`` px, widest first: whole chunks, from
    :data:`MAX_STRIPE` (or the image's width, rounded up to whole chunks) down to one chunk."""
    widest = max(chunk, MAX_STRIPE // chunk * chunk)
    if width is not None:
        widest = min(widest, math.ceil(width / chunk) * chunk)
    return list(range(widest, 0, -chunk))


def _over_limit(needed: float, plan: MemoryPlan, limit: int, classes: int, tile_size: int, overlap: int,
                threads: int, given: list[str]) -> str:
    """The one-line refusal of a job whose ``plan`` holding least holds ``needed`` bytes, more
    than ``limit`` (see :func:`plan_memory`)."""
    holds = f"hold about {_size(needed)}, more than the memory limit of {_size(limit)}"
    if given:
        named = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        return (f"{named} as given {holds} with {classes} classes and tiles of {tile_size} px: "
                f"leave them out to have them sized to the limit, or give --memory-limit {_mebibytes(needed)}")
    return (f"tiles of {tile_size} px overlapping by {overlap} px with {classes} classes on {threads} thread(s) "
            f"{holds} whatever the sizes (at least, with batches of {plan.batch_size}, "
            f"chunks of {plan.chunk_size} px and stripes of "
            f"{plan.stripe_width} px: the tile results crossing a chunk row, those of the chunk being stitched, and "
            f"the plan's tasks): give --memory-limit {_mebibytes(needed)} or more, smaller tiles (--tile-size), a "
            "smaller --overlap or fewer threads (DASK_NUM_WORKERS)")


def check_plan_size(height: int, width: int, options: TilingOptions, limit: int) -> None:
    """Raise :class:`BudgetError` when the plan of ``options`` on a ``height`` x ``width`` grid has
    more tasks than half of ``limit`` holds at :data:`TASK_BYTES` each; counted, not built. Give
    it the sizes with the fewest tasks the job may have (:func:`fewest_tasks`), before
    :func:`plan_memory`: its refusal then names the cause, not a plan too large."""
    tasks = count_tasks(height, width, options)
    if tasks * TASK_BYTES <= limit / 2:
        return
    raise BudgetError(f"the job would make {tasks:.3g} tasks (a grid of {width} x {height} px, output chunks of "
                      f"{options.chunk_size} px, tiles of {options.tile_size} px overlapping by {options.overlap}): "
                      f"about {_size(tasks * TASK_BYTES)} for its plan alone, more than half the memory limit of "
                      f"{_size(limit)}; choose a coarser grid (--resolution, --mpp, --level), a larger --chunk-size "
                      "or a larger --memory-limit")


def fewest_tasks(options: TilingOptions, *, batch_size: int | None, chunk_size: int | None,
                 stripe_width: int | None) -> TilingOptions:
    """``options`` with the sizes that give the fewest tasks: those given, the largest for the others."""
    return replace(options, batch_size=batch_size or MAX_BATCH, chunk_size=chunk_size or MAX_CHUNK,
                   stripe_width=MAX_STRIPE if stripe_width is None else stripe_width)


def _size(size: float) -> str:
    return f"{size / 2**30:.3g} GiB" if size >= 2**30 else f"{size / 2**20:.3g} MiB"


def _mebibytes(size: float) -> str:
    """``size`` rounded up to whole MiB, as ``--memory-limit`` takes it (``"1935M"``)."""
    return f"{math.ceil(size / 2**20)}M"
