"""The memory budget: sizes chosen from the limit and the class count, the user's sizes kept."""

import pytest

from segtile.budget import DEFAULT_LIMIT, BudgetError, parse_size, plan_memory


def held_bytes(classes: int, tile: int, overlap: int, plan, threads: int) -> float:
    """What the plan holds by the budget's own model: the batches, the chunks being stitched and
    the band of tile results one stripe wide and two tile rows high."""
    per_tile_pixel = classes * 4 + 4
    batches = threads * plan.batch_size * tile * tile * per_tile_pixel
    chunks = threads * plan.chunk_size ** 2 * (classes * 8 + 4)
    band = 2 * tile * tile * per_tile_pixel * (plan.stripe_width + tile) / (tile - overlap)  # tiles reaching in too
    return batches + chunks + band


def test_two_classes_get_the_full_sizes():
    plan = plan_memory(classes=2, tile_size=512, overlap=64, threads=2)
    assert (plan.batch_size, plan.chunk_size, plan.stripe_width) == (4, 1024, 8192)


@pytest.mark.parametrize("classes", [19, 21, 150])
def test_many_classes_fit_the_limit(classes):
    plan = plan_memory(classes=classes, tile_size=512, overlap=64, threads=2)
    assert held_bytes(classes, 512, 64, plan, threads=2) <= DEFAULT_LIMIT
    assert plan.stripe_width % plan.chunk_size == 0 and plan.stripe_width >= plan.chunk_size


def test_150_classes_get_smaller_sizes_than_2():
    many = plan_memory(classes=150, tile_size=512, overlap=64, threads=2)
    few = plan_memory(classes=2, tile_size=512, overlap=64, threads=2)
    assert many.batch_size < few.batch_size and many.chunk_size < few.chunk_size
    assert many.stripe_width < few.stripe_width


def test_a_larger_limit_gives_wider_stripes():
    small = plan_memory(classes=150, tile_size=512, overlap=64, threads=2, limit=parse_size("1G"))
    large = plan_memory(classes=150, tile_size=512, overlap=64, threads=2, limit=parse_size("4G"))
    assert large.stripe_width > small.stripe_width


def test_sizes_the_user_gives_are_kept():
    plan = plan_memory(classes=150, tile_size=512, overlap=64, threads=2, batch_size=3, chunk_size=100,
                       stripe_width=700)
    assert (plan.batch_size, plan.chunk_size, plan.stripe_width) == (3, 100, 700)


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
        plan_memory(classes=2, tile_size=512, overlap=64, limit=parse_size("8M"))
