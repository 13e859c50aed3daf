"""Slides read through the process's cache of decoded tiles: the same pixels as the file holds,
never more than the cache's budget held, and a file rewritten in place never read from it."""

import os
import threading

import numpy as np
import pytest
import tifffile
import torch
from rasterio.windows import Window

from segtile.sources.slide import SlideSource
from segtile.sources.tile_cache import DECODED_TILES, DecodedTiles


def write_slide(path, pixels: np.ndarray, compression: str, tile: int = 32, extrasamples=None) -> np.ndarray:
    """Write ``pixels`` ``(h, w, samples)`` as a tiled TIFF; return what the file decodes to."""
    tifffile.imwrite(path, pixels, tile=(tile, tile), photometric="rgb", compression=compression,
                     extrasamples=extrasamples, metadata=None)
    return tifffile.imread(path)


def windows(height: int, width: int, count: int, seed: int = 0) -> list[Window]:
    """``count`` random windows inside the image, tile-aligned or not, a pixel up to the whole."""
    rng = np.random.default_rng(seed)
    out = [Window(0, 0, width, height), Window(width - 1, height - 1, 1, 1)]
    for _ in range(count):
        row, col = int(rng.integers(0, height)), int(rng.integers(0, width))
        out.append(Window(col, row, int(rng.integers(1, width - col + 1)), int(rng.integers(1, height - row + 1))))
    return out


@pytest.fixture
def empty_cache():
    DECODED_TILES.clear()
    yield DECODED_TILES
    DECODED_TILES.clear()


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_windows_read_through_the_cache_are_the_file_s_pixels(tmp_path, compression, empty_cache):
    """Edge tiles cut by the image's border, windows across several tiles, a band selection, the
    same windows again from the cache and from other threads."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (150, 201, 3), dtype=np.uint8)
    decoded = write_slide(tmp_path / "slide.tif", pixels, compression)
    if compression == "zlib":
        np.testing.assert_array_equal(decoded, pixels)
    source = SlideSource(tmp_path / "slide.tif")
    chosen = source.select_bands([3, 1])
    for window in windows(150, 201, 40) * 2:  # the second time from the cache
        rows, cols = window.toslices()
        np.testing.assert_array_equal(source.read(window), np.moveaxis(decoded[rows, cols], -1, 0))
        np.testing.assert_array_equal(chosen.read(window), np.moveaxis(decoded[rows, cols][..., [2, 0]], -1, 0))
    assert empty_cache.nbytes > 0
    failures = []

    def read_all(seed: int) -> None:
        for window in windows(150, 201, 20, seed):
            rows, cols = window.toslices()
            if not np.array_equal(source.read(window), np.moveaxis(decoded[rows, cols], -1, 0)):
                failures.append(window)

    threads = [threading.Thread(target=read_all, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_an_alpha_sample_is_read_from_the_same_cached_tiles(tmp_path, empty_cache):
    pixels = np.random.default_rng(2).integers(0, 256, (70, 90, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(pixels[..., 3] > 128, 255, 0)
    write_slide(tmp_path / "rgba.tif", pixels, "zlib", extrasamples=["unassalpha"])
    source = SlideSource(tmp_path / "rgba.tif")
    window = Window(13, 7, 60, 50)
    bands, valid = source.read_with_valid(window)
    rows, cols = window.toslices()
    np.testing.assert_array_equal(bands, np.moveaxis(pixels[rows, cols, :3], -1, 0))
    np.testing.assert_array_equal(valid, pixels[rows, cols, 3] > 0)


def test_the_cache_never_holds_more_than_its_budget(tmp_path, empty_cache, monkeypatch):
    """A budget of five 32 px RGB tiles (3 KiB each) while windows need up to 42 of them: what is
    held stays within it, and the windows are still right."""
    tile_bytes = 32 * 32 * 3
    monkeypatch.setattr(empty_cache, "capacity", 5 * tile_bytes)
    pixels = np.random.default_rng(3).integers(0, 256, (200, 190, 3), dtype=np.uint8)
    write_slide(tmp_path / "slide.tif", pixels, "zlib")
    source = SlideSource(tmp_path / "slide.tif")
    for window in windows(200, 190, 30):
        rows, cols = window.toslices()
        np.testing.assert_array_equal(source.read(window), np.moveaxis(pixels[rows, cols], -1, 0))
        assert empty_cache.nbytes <= 5 * tile_bytes
    assert empty_cache.nbytes == 5 * tile_bytes


def test_least_recently_used_tiles_go_first():
    cache = DecodedTiles(capacity=300)
    tiles = {name: np.full(100, i, dtype=np.uint8) for i, name in enumerate("abcd")}
    for name in "abc":
        cache.put(name, tiles[name])
    assert cache.get("a") is tiles["a"]  # now the most recently used: "b" goes first
    cache.put("d", tiles["d"])
    assert [cache.get(name) is not None for name in "abcd"] == [True, False, True, True]
    assert cache.nbytes == 300
    cache.put("huge", np.zeros(301, dtype=np.uint8))  # larger than the budget: not kept, nothing dropped
    assert cache.get("huge") is None and cache.nbytes == 300


def test_a_slide_rewritten_in_place_is_not_read_from_the_cache(tmp_path, empty_cache):
    path = tmp_path / "slide.tif"
    first = np.zeros((64, 64, 3), dtype=np.uint8)
    write_slide(path, first, "zlib")
    assert SlideSource(path).read(Window(0, 0, 64, 64)).max() == 0
    write_slide(path, first + 7, "zlib")  # same size, same path
    os.utime(path, ns=(0, os.stat(path).st_mtime_ns + 1))  # whatever the clock's resolution
    assert SlideSource(path).read(Window(0, 0, 64, 64)).min() == 7


def test_windows_keep_the_slide_s_interleaved_layout(tmp_path, empty_cache):
    """A window is ``(bands, h, w)`` over memory whose samples are interleaved, as the tiles store
    them: the engine stacks whole rows of it into a channels-last batch, never into planes."""
    pixels = np.random.default_rng(5).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    write_slide(tmp_path / "slide.tif", pixels, "zlib")
    window = SlideSource(tmp_path / "slide.tif").read(Window(5, 3, 60, 50))
    assert window.shape == (3, 50, 60) and window.strides == (1, 60 * 3, 3)
    np.testing.assert_array_equal(window, np.moveaxis(pixels[3:53, 5:65], -1, 0))


def test_an_interleaved_slide_segments_as_the_same_pixels_stored_in_planes(tmp_path, pointwise_model, empty_cache):
    """The same RGBA pixels (a transparent corner: masked in the network's input) stored interleaved,
    read as interleaved windows and normalised channels-last, and stored as planes, read planar
    and normalised plane by plane: the same logits to the bit, tiles cut by the edges included."""
    from segtile import segment

    pixels = np.random.default_rng(6).integers(0, 256, (150, 201, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[:40, :70, 3] = 0
    interleaved, planar = tmp_path / "interleaved.tif", tmp_path / "planar.tif"
    write_slide(interleaved, pixels, "zlib", extrasamples=["unassalpha"])
    tifffile.imwrite(planar, np.moveaxis(pixels, -1, 0), tile=(32, 32), photometric="rgb", planarconfig="separate",
                     compression="zlib", extrasamples=["unassalpha"], metadata=None)
    model = pointwise_model(bands=3, classes=4)

    def logits(path) -> np.ndarray:
        result = segment(SlideSource(path), model, tile_size=64, overlap=16, device="cpu", mpp="native", tissue=False,
                         tta="none")
        return result.logits.compute()

    from_interleaved, from_planes = logits(interleaved), logits(planar)
    assert np.isnan(from_interleaved[:, :40, :70]).all()
    assert np.isfinite(from_interleaved[:, 40:, 70:]).all()
    np.testing.assert_array_equal(from_interleaved, from_planes)


@pytest.mark.parametrize("masked", [False, True])
def test_normalising_channels_last_gives_the_plain_layout_s_values(masked):
    from segtile.inference.normalise import Normalisation, normalise_
    from segtile.models import ModelCard

    card = ModelCard(classes=("a", "b"), in_channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), scale=255.0)
    normalisation = Normalisation.of(card)
    pixels = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (2, 3, 5, 7)).astype(np.float32))
    valid = torch.rand(2, 5, 7) > 0.3 if masked else None
    plain = normalise_(pixels.clone(), normalisation, valid)
    channels_last = normalise_(pixels.contiguous(memory_format=torch.channels_last), normalisation, valid)
    assert channels_last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, channels_last)
    if masked:
        assert (plain.permute(0, 2, 3, 1)[~valid] == 0).all() and (plain.permute(0, 2, 3, 1)[valid] != 0).any()
