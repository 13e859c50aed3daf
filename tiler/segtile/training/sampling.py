"""Training and validation windows drawn lazily from images of any size.

Each image is cut into square **blocks** of the tile size. Blocks that may hold labels (all of a
label raster's; for polygons, those a polygon touches) are the candidates; a share of them
(``val_fraction``), drawn at random once from the seed, is held out for validation. Training
windows are random ``tile_size`` squares that overlap a training block and touch no validation
block, so no pixel of a validation window is ever seen in training. Validation windows are the
held-out blocks themselves (at most :data:`MAX_VAL_WINDOWS`, a fixed random subset beyond).

Pixels are read exactly as the tiler reads a tile (:func:`segtile.engine.graph.read_tile`: windowed
reads, non-finite pixels invalid, padding past the image edge marked invalid), and labels
through a :class:`~segtile.sources.labels.LabelSource`. Nothing holds a whole image.

The windows of step ``s`` are drawn from a generator seeded with ``(seed, s)``, so a run resumed
at step ``s`` draws what the uninterrupted run would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from segtile.engine.graph import read_tile
from segtile.errors import SamplingError
from segtile.sources import Source
from segtile.sources.labels import IGNORE, LabelSource, cell_window, cells
from segtile.tiling.grid import Tile

MAX_VAL_WINDOWS = 256
"""Validation windows scored after each epoch, at most (a fixed random subset of the held-out blocks)."""

PLACEMENT_TRIES = 8
"""Random placements tried around a training block before falling back to the block itself."""

LABELLED_TRIES = 10
"""Windows drawn for one sample until one holds a labelled pixel (the last one is kept anyway)."""

_WHOLE_TILE_EDGES = (True, True, True, True)


@dataclass(frozen=True)
class Sample:
    """One window: raw pixels ``(bands, t, t)`` float32, validity ``(t, t)``, labels ``(t, t)`` uint8
    (255 where unlabelled, invalid or padded)."""

    pixels: np.ndarray
    valid: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Block:
    """Block ``(row, col)`` (in blocks) of image ``image``."""

    image: int
    row: int
    col: int


class TrainingData:
    """Images with their labels, split into training and validation blocks.

    Args:
        images: the opened images (the same band count each).
        labels: one label source per image, on its grid.
        tile_size: side of the windows (and of the blocks).
        val_fraction: share of the candidate blocks held out for validation (0: none).
        seed: draws the split (and, with the step, every training window).

    Raises:
        SamplingError: no block may hold labels, or too few to hold some out.
    """

    def __init__(self, images: Sequence[Source], labels: Sequence[LabelSource], tile_size: int,
                 val_fraction: float, seed: int) -> None:
        self.images, self.labels = list(images), list(labels)
        self.tile_size, self.seed = tile_size, seed
        candidates = [Block(i, r, c) for i, source in enumerate(self.labels)
                      for r, c in zip(*np.nonzero(source.coverage(tile_size)))]
        if not candidates:
            raise SamplingError("the labels cover no part of the images: nothing to train on")
        held_out = _held_out_count(len(candidates), val_fraction)
        order = np.random.default_rng([seed, 0xB10C]).permutation(len(candidates))
        self.val_blocks = [candidates[i] for i in sorted(order[:held_out])]
        self.train_blocks = [candidates[i] for i in sorted(order[held_out:])]
        self._held_out = [np.zeros(cells(source.shape, tile_size), dtype=bool) for source in self.labels]
        for block in self.val_blocks:
            self._held_out[block.image][block.row, block.col] = True

    @property
    def bands(self) -> int:
        return self.images[0].count

    def train_sample(self, rng: np.random.Generator, side: int | None = None) -> Sample:
        """A random training window of ``side`` pixels (default: the tile size), holding a labelled
        pixel unless :data:`LABELLED_TRIES` windows in a row held none."""
        side = side or self.tile_size
        for _ in range(LABELLED_TRIES):
            block = self.train_blocks[rng.integers(len(self.train_blocks))]
            sample = self.read(block.image, self._place(block, rng, side))
            if (sample.labels != IGNORE).any():
                break
        return sample

    def val_windows(self) -> list[tuple[int, Window]]:
        """The validation windows ``(image, window)``: held-out blocks, at most :data:`MAX_VAL_WINDOWS`."""
        blocks = self.val_blocks
        if len(blocks) > MAX_VAL_WINDOWS:
            chosen = np.random.default_rng([self.seed, 0x7A1]).choice(len(blocks), MAX_VAL_WINDOWS, replace=False)
            blocks = [blocks[i] for i in sorted(chosen)]
        return [(block.image, self._block_window(block)) for block in blocks]

    def statistics_windows(self, count: int) -> list[tuple[int, Window]]:
        """At most ``count`` training blocks' windows ``(image, window)``, drawn at random (for
        the band statistics of the normalisation)."""
        rng = np.random.default_rng([self.seed, 0x57A7])
        chosen = rng.choice(len(self.train_blocks), min(count, len(self.train_blocks)), replace=False)
        return [(self.train_blocks[i].image, self._block_window(self.train_blocks[i])) for i in sorted(chosen)]

    def read(self, image: int, window: Window) -> Sample:
        """Pixels and labels of ``window`` (square; it may run past the image's
        right or bottom edge, which is padded as the tiler pads it and left unlabelled)."""
        pixels, valid = read_tile(self.images[image], Tile(0, window, _WHOLE_TILE_EDGES))
        if valid is None:  # every pixel valid
            valid = np.ones(pixels.shape[1:], dtype=bool)
        height, width = self.labels[image].shape
        inside = Window(window.col_off, window.row_off,
                        min(window.width, width - window.col_off), min(window.height, height - window.row_off))
        labels = np.full((window.height, window.width), IGNORE, dtype=np.uint8)
        labels[:inside.height, :inside.width] = self.labels[image].read(inside)
        labels[~valid] = IGNORE
        return Sample(pixels.astype(np.float32, copy=False), valid, labels)

    def _block_window(self, block: Block) -> Window:
        """The block's own window, full tile size (running past the image's edge if it must)."""
        start = cell_window((block.row, block.col), self.tile_size, self.labels[block.image].shape)
        return Window(start.col_off, start.row_off, self.tile_size, self.tile_size)

    def _place(self, block: Block, rng: np.random.Generator, side: int) -> Window:
        """A window of ``side`` pixels overlapping ``block``, inside the image when the image is
        larger than it, touching no held-out block; when no random placement found in
        :data:`PLACEMENT_TRIES` tries does, the block's own window (of ``side`` pixels from its
        corner when ``side`` is smaller than a tile, else of a tile: no larger window is sure to
        keep clear of the held-out blocks)."""
        t = self.tile_size
        height, width = self.labels[block.image].shape
        held_out = self._held_out[block.image]
        for _ in range(PLACEMENT_TRIES):
            row = _offset(block.row, t, side, height, rng)
            col = _offset(block.col, t, side, width, rng)
            touched = held_out[row // t:(min(row + side, height) - 1) // t + 1,
                               col // t:(min(col + side, width) - 1) // t + 1]
            if not touched.any():
                return Window(col, row, side, side)
        corner = self._block_window(block)
        return Window(corner.col_off, corner.row_off, min(side, t), min(side, t))


def _offset(cell: int, tile: int, side: int, length: int, rng: np.random.Generator) -> int:
    """A random start of a ``side``-long window overlapping cell ``cell`` (``tile`` long) of an
    axis of ``length`` pixels, inside the axis when it is longer than the window (else 0)."""
    if length <= side:
        return 0
    low = max(0, cell * tile - side + 1)
    high = min(length - side, cell * tile + tile - 1)
    return int(rng.integers(low, high + 1))


def _held_out_count(candidates: int, val_fraction: float) -> int:
    if val_fraction <= 0:
        return 0
    count = max(1, round(candidates * val_fraction))
    if count >= candidates:
        raise SamplingError(
            f"the labels cover {candidates} block(s) of the tile size: too few to hold out "
            f"{val_fraction:g} of them for validation (lower --val-fraction or --tile-size)"
        )
    return count
