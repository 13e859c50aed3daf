"""Reading a slide's windows against decoding each of its tiles once: what the tile cache saves.

For each compression, a SIZE x SIZE slide of 256 px tiles (``bench/make_slide.py``, built in
``bench/out/`` when missing) is read in one process, one thread, three ways, interleaved over
``--rounds`` rounds (the median of each is reported, wall-clock and the process's CPU time: on a
loaded machine the CPU time is the steadier figure):

* ``decode``: every tile of level 0 decoded once by tifffile (``TiffPage.segments``): the codec's
  speed, the floor;
* ``cached``: every window segtile's engine reads (512 px at a stride of 448 px, row by row) through
  :class:`segtile.sources.slide.SlideSource`, with its cache of decoded tiles
  (:mod:`segtile.sources.tile_cache`) emptied before the pass;
* ``uncached``: the same windows with the cache's capacity set to 0 (each window decodes every
  tile under it: up to four per tile);
* ``zarr``: the same windows through tifffile's Zarr store, as segtile read slides before the
  cache (no cache, tifffile decoding in two threads of its own).

Prints a Markdown table: seconds per pass (wall / CPU), and each window pass over the decode pass.

    python -m bench.slide_read                                   # 8000 px, jpeg and zlib (deflate)
    python -m bench.slide_read --size 4000 --compressions jpeg --rounds 1
    python -m bench.slide_read --compressions jpeg zlib jpeg2000
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
import zarr
from rasterio.windows import Window

from bench.make_slide import make_slide
from segtile.sources.slide import SlideSource
from segtile.sources.tile_cache import DECODED_TILE_BYTES, DECODED_TILES

OUT = Path(__file__).resolve().parent / "out"
SLIDE_TILE = 256
WINDOW, STRIDE = 512, 448


def slide_path(size: int, compression: str) -> Path:
    """The bench slide of ``size`` px and ``compression``, built when missing."""
    path = OUT / f"slide_{size}_{compression}_t{SLIDE_TILE}.tif"
    if not path.exists():
        make_slide(size, path, tile=SLIDE_TILE, compression=compression)
    return path


def timed(work: Callable[[], None]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process, all threads) that ``work()`` takes."""
    wall, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - wall, time.process_time() - cpu


def decode_every_tile(path: Path) -> tuple[float, float]:
    """Seconds (wall, CPU) to decode every tile of level 0 once, in this thread."""
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        return timed(lambda: all(True for _ in page.segments(maxworkers=1)))


def windows(size: int) -> list[Window]:
    """The engine's windows over a ``size`` px square, row by row (the last ones flush with the edge)."""
    starts = list(range(0, size - WINDOW + 1, STRIDE))
    if starts[-1] != size - WINDOW:
        starts.append(size - WINDOW)
    return [Window(col, row, WINDOW, WINDOW) for row in starts for col in starts]


def read_each(source: SlideSource, each: list[Window]) -> None:
    """Read each window, keeping none (as the engine, which frees a batch's pixels once run)."""
    for window in each:
        source.read(window)


def read_windows(path: Path, size: int, capacity: int) -> tuple[float, float]:
    """Seconds (wall, CPU) to read every window of ``path`` with a tile cache of ``capacity``
    bytes, emptied first."""
    DECODED_TILES.clear()
    DECODED_TILES.capacity = capacity
    source = SlideSource(path)
    source.read(Window(0, 0, 1, 1))  # opens this thread's TiffFile outside the timing
    DECODED_TILES.clear()
    seconds = timed(lambda: read_each(source, windows(size)))
    source.close()
    return seconds


def read_windows_through_zarr(path: Path, size: int) -> tuple[float, float]:
    """Seconds (wall, CPU) to read every window of ``path`` through tifffile's Zarr store."""
    with tifffile.TiffFile(path) as tif:
        array = zarr.open_array(tif.series[0].aszarr(level=0, maxworkers=2), mode="r")

        def read_all() -> None:
            for window in windows(size):
                rows, cols = window.toslices()
                np.moveaxis(array[rows, cols], -1, 0).copy()

        return timed(read_all)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--compressions", nargs="+", default=["jpeg", "zlib"],
                        help="tifffile's names (jpeg2000 needs imagecodecs' OpenJPEG)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    print(f"slide {args.size} px, tiles {SLIDE_TILE} px, windows {WINDOW} px at stride {STRIDE}, one thread, "
          f"cache {DECODED_TILE_BYTES >> 20} MiB, median of {args.rounds} round(s), load {os.getloadavg()[0]:.1f}")
    print("| compression | decode each tile once (s, wall / CPU) | windows, cached | windows, uncached "
          "| windows, Zarr store | cached / decode (wall / CPU) | uncached / decode | Zarr store / decode |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for compression in args.compressions:
        path = slide_path(args.size, compression)
        times: dict[str, list[tuple[float, float]]] = {"decode": [], "cached": [], "uncached": [], "zarr": []}
        for _ in range(args.rounds):
            times["decode"].append(decode_every_tile(path))
            times["cached"].append(read_windows(path, args.size, DECODED_TILE_BYTES))
            times["uncached"].append(read_windows(path, args.size, 0))
            times["zarr"].append(read_windows_through_zarr(path, args.size))
        medians = {mode: [statistics.median(t[i] for t in runs) for i in (0, 1)] for mode, runs in times.items()}
        decode = medians["decode"]
        seconds = " | ".join(f"{wall:.2f} / {cpu:.2f}" for wall, cpu in medians.values())
        ratios = " | ".join(f"{medians[mode][0] / decode[0]:.2f} / {medians[mode][1] / decode[1]:.2f}"
                            for mode in ("cached", "uncached", "zarr"))
        print(f"| {compression} | {seconds} | {ratios} |", flush=True)
    DECODED_TILES.capacity = DECODED_TILE_BYTES
    print(f"load after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
