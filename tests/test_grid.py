"""The tile plan: full coverage, full-size tiles, no duplicates, bounded steps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from segtile.tiling.grid import GridError, aligned_tiling, check_stride, check_tiling, tile_grid, tile_starts
from segtile.tiling.plan import TilingOptions, fit_to_image


@st.composite
def layouts(draw):
    tile = draw(st.integers(1, 64))
    overlap = draw(st.integers(0, tile - 1))
    height = draw(st.integers(1, 300))
    width = draw(st.integers(1, 300))
    return height, width, tile, overlap


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_tiles_cover_every_pixel_once_or_more(layout):
    height, width, tile, overlap = layout
    covered = np.zeros((height, width), dtype=int)
    for t in tile_grid(height, width, tile, overlap):
        w = t.window
        covered[w.row_off:w.row_off + w.height, w.col_off:w.col_off + w.width] += 1
    assert covered.min() >= 1


@settings(max_examples=200, deadline=None)
@given(layouts())
def test_tiles_are_full_size_inside_the_image_and_unique(layout):
    height, width, tile, overlap = layout
    tiles = tile_grid(height, width, tile, overlap)
    windows = [(t.window.row_off, t.window.col_off) for t in tiles]
    assert len(set(windows)) == len(windows)
    for t in tiles:
        assert (t.window.height, t.window.width) == (tile, tile)
        assert t.window.row_off >= 0 and t.window.col_off >= 0
        # A tile runs past the image only along an axis shorter than a tile.
        assert t.window.row_off + tile <= height or (height < tile and t.window.row_off == 0)
        assert t.window.col_off + tile <= width or (width < tile and t.window.col_off == 0)
    assert [t.index for t in tiles] == list(range(len(tiles)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 500), st.integers(1, 64), st.data())
def test_neighbouring_tiles_overlap_by_at_least_the_overlap(length, tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    starts = tile_starts(length, tile, overlap)
    assert starts == sorted(starts)
    steps = np.diff(starts)
    assert (steps >= 1).all() and (steps <= tile - overlap).all()
    assert starts[-1] == max(length - tile, 0)


def test_edges_mark_the_tiles_on_the_image_border():
    tiles = tile_grid(100, 150, 64, 16)
    by_start = {(t.window.row_off, t.window.col_off): t.edges for t in tiles}
    assert by_start[(0, 0)] == (True, False, True, False)
    assert by_start[(36, 86)] == (False, True, False, True)
    assert tile_grid(10, 10, 64, 16)[0].edges == (True, True, True, True)


def test_known_plan():
    assert tile_starts(1000, 512, 64) == [0, 448, 488]
    assert tile_starts(512, 512, 64) == [0]
    assert tile_starts(100, 512, 64) == [0]


@pytest.mark.parametrize(
    "tile, overlap, message",
    [(0, 0, "tile size"), (-4, 0, "tile size"), (64, 64, "smaller than the tile size"),
     (64, -1, "overlap"), (64, 100, "smaller than the tile size")],
)
def test_bad_tiling_is_refused(tile, overlap, message):
    with pytest.raises(GridError, match=message):
        check_tiling(tile, overlap)


@pytest.mark.parametrize("side", [1, 2, 8, 9, 10, 17, 300])
def test_aligned_tiles_fit_an_image_of_any_size(side):
    """A PSPNet (alignment 8) on an image of one pixel: a tile of 9, never a negative overlap."""
    options = fit_to_image(TilingOptions(tile_size=193, overlap=25, alignment=8), side, side)
    check_tiling(options.tile_size, options.overlap)
    assert (options.tile_size - 1) % 8 == 0 and options.tile_size >= 9
    assert (options.tile_size - options.overlap) % 8 == 0
    assert options.tile_size == min(193, max(9, -(-(side - 1) // 8) * 8 + 1))
    assert aligned_tiling(1, 0, 8) == (9, 1)


@pytest.mark.parametrize("tile, overlap, allowed", [(256, 224, True), (256, 225, False), (257, 224, True),
                                                    (257, 225, False), (17, 14, True), (17, 15, False),
                                                    (512, 64, True), (8, 7, True), (9, 8, False)])
def test_an_overlap_may_make_each_pixel_run_at_most_64_times(tile, overlap, allowed):
    if allowed:
        check_stride(tile, overlap)
    else:
        with pytest.raises(GridError, match=rf"give an overlap of at most {tile - -(-tile // 8)} px"):
            check_stride(tile, overlap)
