"""The memory budget: sizes chosen from the limit, the class count and the tiling; the user's sizes
kept when they fit; jobs that cannot fit, and plans of absurd size, refused."""

import pytest

from segtile.tiling.budget import (
    DEFAULT_LIMIT,
    TASK_BYTES,
    BudgetError,
    MemoryPlan,
    check_plan_size,
    engine_bytes,
    held_tiles,
    parse_size,
    plan_memory,
    tile_result_bytes,
)
from segtile.tiling.plan import TilingOptions, batches_per_chunk, plan_stripes


def walked_held_tiles(tile: int, overlap: int, chunk: int, stripe: int, batch: int) -> int:
    """The most tile results a stripe holds, walking its chunks in the order they are stitched: a
    batch is held from the first chunk that needs it to the last (the oracle the budget's estimate
    is checked against). The stripe walked lies inside a larger image, at least two tiles from its
    left edge, over enough chunk rows for the band to settle."""
    height = chunk * -(-(6 * tile + 6 * chunk) // chunk)
    index = -(-2 * tile // stripe)
    width = (index + 1) * stripe + 2 * tile
    options = TilingOptions(tile_size=tile, overlap=overlap, chunk_size=chunk, stripe_width=stripe, batch_size=batch)
    walked = plan_stripes(height, width, options)[index]
    needed = batches_per_chunk(walked.batches, height, width, chunk)
    order = sorted(needed)
    first, last = {}, {}
    for step, chunk_index in enumerate(order):
        for b in needed[chunk_index]:
            first.setdefault(b, step)
            last[b] = step
    return max(sum(len(walked.batches[b]) for b in first if first[b] <= step <= last[b]) for step in range(len(order)))


@pytest.mark.parametrize("tile, overlap, chunk, stripe, batch", [
    (513, 65, 1024, 8192, 4),  # the defaults
    (513, 65, 256, 512, 1),  # a 150-class model's
    (257, 128, 256, 1024, 4),  # half the tile
    (257, 193, 128, 512, 4),  # three quarters
    (257, 225, 64, 256, 4),  # seven eighths: every pixel in 64 tiles
    (129, 0, 1024, 4096, 4),
])
def test_the_estimate_of_the_tiles_held_follows_the_order_of_the_work(tile, overlap, chunk, stripe, batch):
    walked = walked_held_tiles(tile, overlap, chunk, stripe, batch)
    assert 0.6 * walked <= held_tiles(tile, overlap, chunk, stripe, batch) <= 2.5 * walked


def test_a_large_overlap_is_planned_within_the_limit():
    """Before, the plan counted two rows of tiles whatever the overlap: with a stride of an eighth
    of the tile it kept chunks of 1024 and stripes of 8192 px, whose stitching holds gigabytes."""
    limit = parse_size("300M")
    plan = plan_memory(classes=2, tile_size=257, overlap=225, threads=2, limit=limit)
    walked = walked_held_tiles(257, 225, plan.chunk_size, plan.stripe_width, plan.batch_size)
    assert walked * tile_result_bytes(2, 257) <= limit
    assert engine_bytes(plan, classes=2, tile_size=257, overlap=225, threads=2) <= limit
    assert plan.stripe_width % plan.chunk_size == 0


def test_two_classes_get_the_full_sizes():
    plan = plan_memory(classes=2, tile_size=513, overlap=65, threads=2)
    assert (plan.batch_size, plan.chunk_size, plan.stripe_width) == (4, 1024, 8192)


@pytest.mark.parametrize("classes", [19, 21, 150])
def test_many_classes_fit_the_limit(classes):
    plan = plan_memory(classes=classes, tile_size=513, overlap=65, threads=2)
    assert engine_bytes(plan, classes=classes, tile_size=513, overlap=65, threads=2) <= DEFAULT_LIMIT
    assert plan.stripe_width % plan.chunk_size == 0 and plan.stripe_width >= plan.chunk_size


def test_150_classes_get_smaller_sizes_than_2():
    many = plan_memory(classes=150, tile_size=513, overlap=65, threads=2)
    few = plan_memory(classes=2, tile_size=513, overlap=65, threads=2)
    assert many.batch_size < few.batch_size and many.chunk_size < few.chunk_size
    assert many.stripe_width < few.stripe_width


def test_a_larger_limit_gives_larger_sizes():
    small = plan_memory(classes=150, tile_size=513, overlap=65, threads=2, limit=parse_size("1G"))
    large = plan_memory(classes=150, tile_size=513, overlap=65, threads=2, limit=parse_size("4G"))
    assert large.stripe_width > small.stripe_width and large.chunk_size >= small.chunk_size


def test_a_small_image_holds_only_its_own_tiles():
    """An image of one tile holds one tile result, however much tiles would overlap on a larger one
    (here a stride of 8 px: 480 tiles of 3 MB each)."""
    job = {"classes": 150, "tile_size": 73, "overlap": 65, "threads": 2, "alignment": 8}
    plan = plan_memory(**job, shape=(70, 70), limit=parse_size("100M"))
    assert engine_bytes(plan, **job, shape=(70, 70)) <= parse_size("100M")
    with pytest.raises(BudgetError):
        plan_memory(**job, shape=(7000, 7000), limit=parse_size("100M"))


def test_sizes_the_user_gives_are_kept_when_they_fit():
    plan = plan_memory(classes=150, tile_size=513, overlap=65, threads=2, batch_size=1, chunk_size=100,
                       stripe_width=300)
    assert (plan.batch_size, plan.chunk_size, plan.stripe_width) == (1, 100, 300)


def test_sizes_the_user_gives_that_do_not_fit_are_refused():
    with pytest.raises(BudgetError, match=r"^--chunk-size and --stripe-width as given hold about [\d.]+ GiB, more "
                       r"than the memory limit of 1.25 GiB with 150 classes and tiles of 513 px: leave them out to "
                       r"have them sized to the limit, or give --memory-limit \d+M$"):
        plan_memory(classes=150, tile_size=513, overlap=65, threads=2, chunk_size=1024, stripe_width=8192)


def test_a_tiling_no_size_fits_is_refused_with_what_it_needs():
    refusal = (r"^tiles of 513 px overlapping by 449 px with 150 classes on 2 thread\(s\) hold about "
               r"[\d.]+ GiB, more than the memory limit of 300 MiB whatever the sizes \(at least, with batches "
               r"of 1, chunks of 64 px and stripes of 64 px: .*\): give --memory-limit (\d+)M or more, "
               r"smaller tiles \(--tile-size\), a smaller --overlap or fewer threads \(DASK_NUM_WORKERS\)$")
    with pytest.raises(BudgetError, match=refusal) as refused:
        plan_memory(classes=150, tile_size=513, overlap=449, threads=2, limit=parse_size("300M"))
    needed = parse_size(refused.value.args[0].split("--memory-limit ")[1].split(" ")[0])
    plan_memory(classes=150, tile_size=513, overlap=449, threads=2, limit=needed)  # what it said is enough


def test_plans_of_too_many_tasks_are_refused_before_they_are_built():
    default = TilingOptions(tile_size=513, overlap=65, chunk_size=1024, stripe_width=8192)
    check_plan_size(200_000, 200_000, default, parse_size("2G"))  # a 40 Gpx slide plans
    with pytest.raises(BudgetError, match=r"^the job would make 2.27e\+06 tasks \(a grid of 791 x 718 px, output "
                       r"chunks of 1 px.*choose a coarser grid \(--resolution, --mpp, --level\), a larger "
                       r"--chunk-size or a larger --memory-limit$"):
        check_plan_size(718, 791, TilingOptions(tile_size=513, overlap=65, chunk_size=1), DEFAULT_LIMIT)
    with pytest.raises(BudgetError, match="a grid of 237300000000000 x 215400000000000 px"):  # 300 m at 1e-9 m
        check_plan_size(215_400_000_000_000, 237_300_000_000_000, default, DEFAULT_LIMIT)
    assert TASK_BYTES * 100_000 < DEFAULT_LIMIT / 2  # a plan of 100000 tasks is never refused by default


def test_no_stripes_count_the_whole_width():
    job = {"classes": 2, "tile_size": 513, "overlap": 65, "threads": 2, "shape": (30000, 30000)}
    assert engine_bytes(MemoryPlan(4, 1024, 0), **job) == engine_bytes(MemoryPlan(4, 1024, 30000), **job)
    assert engine_bytes(MemoryPlan(4, 1024, 0), **job) > engine_bytes(MemoryPlan(4, 1024, 8192), **job)


@pytest.mark.parametrize("text, size", [("1.5G", 1536 * 2**20), ("800M", 800 * 2**20), ("2GiB", 2 * 2**30),
                                        ("1000000", 1000000), (" 64 mb ", 64 * 2**20)])
def test_sizes_are_read(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "1.5X", "-1G", ""])
def test_unreadable_sizes_are_named(text):
    with pytest.raises(BudgetError, match="cannot read the memory size"):
        parse_size(text)


def test_a_limit_too_small_is_refused():
    with pytest.raises(BudgetError, match="too small"):
        plan_memory(classes=2, tile_size=512, overlap=64, threads=2, limit=parse_size("8M"))
