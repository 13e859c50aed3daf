"""Build a large pyramidal slide (tiled TIFF) by mirror-tiling the small real Aperio slide.

The source (``examples/data/cmu_small_region.svs``: 2220 x 2967 RGB at 0.499 µm/px, an H&E
region of CMU-1) is repeated across a ``size`` x ``size`` grid, every other copy flipped so that
seams stay continuous, as ``bench/make_mosaic.py`` does for GeoTIFFs. The slide is a generic
pyramidal TIFF written with tifffile: BigTIFF, JPEG tiles of 512 (quality 90; tifffile stores
them as YCbCr with chroma subsampling, as most scanners do), level 0 in the main IFD and
the levels 1/2, 1/4, ... (each pixel the mean of the level-0 block under it) as its SubIFDs, down
to the first level whose longer side is at most ``MIN_LEVEL_SIDE``. The source's µm/px goes into
the resolution tags (pixels per centimetre), where tifffile-based readers (segtile's slide
source, TIAToolbox's ``TIFFWSIReader``) find it.

Every level is written tile by tile from a generator, so neither the slide nor a level is ever
whole in memory (only the small source is, about 20 MB, and one level-k tile's worth of sums).

    python -m bench.make_slide --size 20000 --out bench/out/slide_20000.tif   # from the repository root
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from tifffile.tifffile import svs_description_metadata

from bench.make_mosaic import mirror_positions

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "data" / "cmu_small_region.svs"
TILE = 512
MIN_LEVEL_SIDE = 1024
JPEG_QUALITY = 90


def read_source(path: Path) -> tuple[np.ndarray, float]:
    """The source slide's full-resolution pixels ``(H, W, 3)`` and its µm/px (Aperio ``MPP``)."""
    with tifffile.TiffFile(path) as tif:
        pixels = tif.series[0].asarray()
        mpp = svs_description_metadata(tif.pages[0].description).get("MPP")
    if not mpp:
        raise ValueError(f"{path}: no MPP in its Aperio description")
    return pixels, float(mpp)


def level_sides(size: int) -> list[int]:
    """Sides of the pyramid levels: ``size``, ``size // 2``, ... until one is <= MIN_LEVEL_SIDE."""
    sides = [size]
    while sides[-1] > MIN_LEVEL_SIDE:
        sides.append(sides[-1] // 2)
    return sides


def level_tile(source: np.ndarray, level: int, row: int, col: int, side: int, tile: int = TILE) -> np.ndarray:
    """The ``tile`` x ``tile`` tile at (``row``, ``col``) of pyramid level ``level`` (``side`` pixels
    square), zero-padded past the level's edge.

    A level-k pixel is the mean of the 2^k x 2^k mosaic pixels under it; the sum runs over the
    2^k x 2^k offsets, one strided gather of a tile's size each, so memory stays at one tile."""
    height, width = source.shape[:2]
    factor = 2**level
    rows = np.arange(row, min(row + tile, side)) * factor
    cols = np.arange(col, min(col + tile, side)) * factor
    total = np.zeros((len(rows), len(cols), source.shape[2]), np.uint32)
    for dy in range(factor):
        source_rows = mirror_positions(rows + dy, height)
        for dx in range(factor):
            total += source[np.ix_(source_rows, mirror_positions(cols + dx, width))]
    pixels = np.zeros((tile, tile, source.shape[2]), np.uint8)
    pixels[: len(rows), : len(cols)] = (total + factor * factor // 2) // (factor * factor)
    return pixels


def level_tiles(source: np.ndarray, level: int, side: int, tile: int = TILE) -> Iterator[np.ndarray]:
    """All tiles of one level in the row-major order tifffile writes them."""
    for row in range(0, side, tile):
        for col in range(0, side, tile):
            yield level_tile(source, level, row, col, side, tile)


def make_slide(size: int, out: Path, source_path: Path = DEFAULT_SOURCE, tile: int = TILE,
               compression: str = "jpeg") -> None:
    """Write the ``size`` x ``size`` pyramidal slide mirror-tiled from ``source_path`` to ``out``."""
    source, mpp = read_source(source_path)
    write_slide(source, mpp, size, out, f"mirror-tiled from {source_path.name} at {mpp} um/px", tile, compression)


def write_slide(source: np.ndarray, mpp: float, size: int, out: Path, description: str, tile: int = TILE,
                compression: str = "jpeg") -> None:
    """Write ``source`` ``(H, W, 3)``, mirror-tiled to ``size`` x ``size``, as a pyramidal slide
    of ``tile`` px tiles compressed with ``compression`` (tifffile's name: jpeg, zlib, jpeg2000...;
    JPEG at quality 90)."""
    sides = level_sides(size)
    pixels_per_cm = 1e4 / mpp
    out.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(out, bigtiff=True) as tif:
        for level, side in enumerate(sides):
            tif.write(
                level_tiles(source, level, side, tile), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                photometric="rgb", compression=compression,
                compressionargs={"level": JPEG_QUALITY} if compression == "jpeg" else None,
                resolution=(pixels_per_cm / 2**level, pixels_per_cm / 2**level), resolutionunit="CENTIMETER",
                subifds=len(sides) - 1 if level == 0 else None, subfiletype=1 if level else 0,
                description=description if level == 0 else None,
                metadata=None,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True, help="side of the square slide, in pixels")
    parser.add_argument("--out", type=Path, required=True, help="output TIFF path")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Aperio slide to mirror-tile")
    parser.add_argument("--tile", type=int, default=TILE, help="side of the slide's tiles (a multiple of 16)")
    parser.add_argument("--compression", default="jpeg", help="tifffile's compression: jpeg, zlib, jpeg2000...")
    args = parser.parse_args()
    if args.size < 1:
        parser.error("--size must be positive")
    start = time.perf_counter()
    make_slide(args.size, args.out, args.source, args.tile, args.compression)
    megabytes = args.out.stat().st_size / 2**20
    levels = len(level_sides(args.size))
    print(f"{args.out}: {args.size} x {args.size}, {levels} levels, {megabytes:.0f} MiB, "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
