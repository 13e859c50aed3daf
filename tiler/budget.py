"""Memory budget: the sizes of batches, chunks and stripes that keep a job within a limit, whatever
its class count.

What a job holds grows with the number of classes C: each tile's weighted logits are C values per
pixel, a chunk being stitched sums C values per pixel, and the band of tiles that straddles a
chunk row spans the stripe's width. With 2 classes the defaults (batches of 4 tiles, chunks of
1024, stripes of 8192 px) hold tens of megabytes; with 150 (ADE20K) the same sizes would hold
gigabytes. So whatever the user leaves open is chosen from the limit (``--memory-limit``):

* batches: a quarter of the limit for the batches in flight (one per thread);
* chunks: an eighth for the chunks being stitched (one accumulator per thread), the largest of
  1024, 512, 256, 128 or 64 that fits;
* stripes: the rest for the band of tile results that straddles the chunk row being stitched:
  two rows of tiles (a chunk row meets the tiles of the row above it and of its own), each
  ``(width + tile) / stride`` tiles of ``tile²`` pixels (the tiles reaching into the stripe from
  its left count too: a third of the band for a 1024 px stripe of 512 px tiles); rounded down to
  whole chunks, at most 8192 px.

The price of narrower stripes is the tiles on their boundaries, run once per stripe (see
:mod:`segtile.plan`). Sizes the user gives are used as they are. The figures this was checked
against are in docs/performance.md.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from segtile.errors import SegtileError

DEFAULT_LIMIT = 1280 * 2**20
"""The engine's share; the interpreter, torch and the model come on top (about 400 MiB with torch's
CPU build): a 150-class model over 10000 x 10000 px peaks at about 1.7 GiB in all, a 2-class one
at about 0.75 GiB (docs/performance.md)."""
MAX_BATCH, MAX_CHUNK, MAX_STRIPE = 4, 1024, 8192
CHUNK_SIZES = (1024, 512, 256, 128, 64)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class BudgetError(SegtileError, ValueError):
    """A memory limit that cannot be read or is too small to run anything."""


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


def plan_memory(*, classes: int, tile_size: int, overlap: int, limit: int = DEFAULT_LIMIT,
                bytes_per_value: int = 4, batch_size: int | None = None, chunk_size: int | None = None,
                stripe_width: int | None = None, threads: int | None = None) -> MemoryPlan:
    """Fill in the sizes left ``None`` so the job holds about ``limit`` bytes at most.

    Args:
        classes: the model's class count.
        tile_size, overlap: the tiling (after fitting it to the image and the network).
        bytes_per_value: of the weighted logits held per tile (4, or 2 in a half precision run).
        threads: threads working at once (default: the CPU count).
    """
    if limit < 16 * 2**20:
        raise BudgetError(f"a memory limit of {limit / 2**20:.0f} MiB is too small: give at least 16M")
    threads = threads or os.cpu_count() or 1
    per_tile_pixel = classes * bytes_per_value + 4  # weighted logits and the weight
    tile_bytes = tile_size * tile_size * per_tile_pixel
    if batch_size is None:
        batch_size = max(1, min(MAX_BATCH, int(limit / 4 / threads // tile_bytes)))
    if chunk_size is None:
        per_chunk_pixel = classes * 4 + 4 + classes * 4  # the accumulator, the weights, one product
        fitting = [size for size in CHUNK_SIZES if threads * size * size * per_chunk_pixel <= limit / 8]
        chunk_size = fitting[0] if fitting else CHUNK_SIZES[-1]
    if stripe_width is None:
        stride = max(1, tile_size - overlap)
        # a stripe w px wide meets about (w + tile_size) / stride tiles per row: two rows are held
        fits = int(limit * 5 / 8 * stride / (2 * tile_bytes) - tile_size) // chunk_size * chunk_size
        stripe_width = min(MAX_STRIPE, max(chunk_size, fits))
    return MemoryPlan(batch_size, chunk_size, stripe_width)
