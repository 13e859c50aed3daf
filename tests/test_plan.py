"""The work plan: stripes cover the output once, each chunk finds every tile it needs in its own
stripe, and only tiles on a stripe boundary run twice."""

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from segtile.tiling.grid import tile_grid, tile_starts, tiles_along
from segtile.tiling.plan import (
    BATCH_TASKS,
    CHUNK_TASKS,
    TilingOptions,
    batches_per_chunk,
    count_tasks,
    fit_to_image,
    plan_stripes,
    stripe_chunk_columns,
    tile_runs,
)


@st.composite
def plans(draw):
    tile = draw(st.integers(2, 48))
    overlap = draw(st.integers(0, tile - 1))
    options = TilingOptions(
        tile_size=tile, overlap=overlap,
        batch_size=draw(st.integers(1, 5)),
        chunk_size=draw(st.integers(8, 64)),
        stripe_width=draw(st.integers(0, 160)),
    )
    return draw(st.integers(1, 160)), draw(st.integers(1, 160)), options


def overlaps(window, top, left, height, width):
    return (window.row_off < top + height and window.row_off + window.height > top
            and window.col_off < left + width and window.col_off + window.width > left)


@settings(max_examples=100, deadline=None)
@given(plans())
def test_every_chunk_gets_exactly_the_tiles_that_overlap_it_from_its_stripe(plan):
    height, width, options = plan
    size = options.chunk_size
    stripes = plan_stripes(height, width, options)
    columns = [j for stripe in stripes for j in stripe.chunk_columns]
    assert columns == list(range(-(-width // size)))            # left to right, each column once
    grid = tile_grid(height, width, options.tile_size, options.overlap)
    for stripe in stripes:
        needed = batches_per_chunk(stripe.batches, height, width, size)
        for i in range(-(-height // size)):
            for j in stripe.chunk_columns:
                top, left = i * size, j * size
                h, w = min(size, height - top), min(size, width - left)
                got = {tile.index for b in needed[(i, j)] for tile in stripe.batches[b]
                       if overlaps(tile.window, top, left, h, w)}
                assert got == {t.index for t in grid if overlaps(t.window, top, left, h, w)}


@settings(max_examples=150, deadline=None)
@given(plans())
def test_batches_are_full_and_row_major_within_a_stripe(plan):
    height, width, options = plan
    for stripe in plan_stripes(height, width, options):
        indices = [tile.index for batch in stripe.batches for tile in batch]
        assert indices == sorted(set(indices))
        assert all(len(batch) == options.batch_size for batch in stripe.batches[:-1])


def test_stripes_are_whole_chunks_no_wider_than_asked():
    assert stripe_chunk_columns(10000, 1024, 4096) == [range(0, 4), range(4, 8), range(8, 10)]
    assert stripe_chunk_columns(10000, 1024, 1000) == [range(i, i + 1) for i in range(10)]
    assert stripe_chunk_columns(10000, 1024, 0) == [range(0, 10)]


def test_only_the_tiles_on_a_stripe_boundary_run_twice():
    # Tiles start every 448 px; the stripe boundary at 8192 = 18 * 448 + 128 lies inside exactly
    # one tile column (8064..8576), which runs for both stripes.
    options = TilingOptions(tile_size=512, overlap=64, chunk_size=1024, stripe_width=8192)
    whole = len(tile_grid(4000, 12000, 512, 64))
    rows = len({t.window.row_off for t in tile_grid(4000, 12000, 512, 64)})
    assert tile_runs(4000, 12000, options) == whole + rows
    unstriped = TilingOptions(tile_size=512, overlap=64, chunk_size=1024, stripe_width=0)
    assert tile_runs(4000, 12000, unstriped) == whole


@pytest.mark.parametrize("width", [-1, 1.5, 8192.0, True])
def test_stripe_width_must_be_a_non_negative_integer(width):
    with pytest.raises(ValueError, match="stripe width"):
        TilingOptions(stripe_width=width).validate()


@pytest.mark.parametrize("field, message", [("tile_size", "tile size"), ("chunk_size", "chunk size"),
                                            ("batch_size", "batch size")])
def test_sizes_given_as_floats_are_refused(field, message):
    with pytest.raises(ValueError, match=message):
        TilingOptions(**{field: 512.0}).validate()


def test_numpy_integers_are_sizes_too():
    TilingOptions(tile_size=np.int64(256), overlap=np.int32(32), chunk_size=np.uint16(512)).validate()


@given(plans(), st.sampled_from([1, 8]))
@example((3, 3, TilingOptions(tile_size=2, overlap=0, batch_size=1, chunk_size=8, stripe_width=0)), 8)
@settings(max_examples=60, deadline=None)
def test_the_tasks_counted_without_a_plan_are_at_least_those_planned(plan, alignment):
    height, width, options = plan
    # tiles sized for the alignment, as the engine sizes them: a tile of 2 px aligned to 8 would
    # start past the end of a 3 px image, a plan the engine never makes
    options = fit_to_image(replace(options, alignment=alignment), height, width)
    assert tiles_along(height, options.tile_size, options.overlap, alignment) == len(
        tile_starts(height, options.tile_size, options.overlap, alignment))
    stripes = plan_stripes(height, width, options)
    planned = BATCH_TASKS * sum(len(stripe.batches) for stripe in stripes) + CHUNK_TASKS * len(
        {(i, j) for i in range(-(-height // options.chunk_size)) for j in range(-(-width // options.chunk_size))})
    counted = count_tasks(height, width, options)
    assert planned <= counted <= 2 * planned + 2


def test_tasks_are_counted_for_grids_no_plan_could_list():
    options = TilingOptions(tile_size=513, overlap=65, chunk_size=1024, stripe_width=8192)
    assert count_tasks(10**14, 10**14, options) > 10**19
