"""Build a large benchmark GeoTIFF by mirror-tiling a small real image.

The source (``examples/data/landsat7.tif`` by default: 3 bands uint8, 2181 x 1917,
EPSG:3857, nodata 0) is repeated across a ``size`` x ``size`` grid, every other copy flipped
so that seams stay continuous. The mosaic keeps the source's CRS, pixel size, origin and nodata;
its transform is the source's, extended to the right and down. It is written as a tiled (512),
ZSTD-compressed BigTIFF, one row of blocks at a time, so the mosaic is never whole in memory
(only the small source is, about 12 MB).

    python bench/make_mosaic.py --size 8000 --out bench/out/mosaic_8000.tif
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

DEFAULT_SOURCE = Path(__file__).resolve().parents[1] / "examples" / "data" / "landsat7.tif"
BENCH_OUT = Path(__file__).resolve().parent / "out"
BLOCK = 512


def mirror_positions(positions: np.ndarray, period: int) -> np.ndarray:
    """Source indices of the mosaic positions ``positions`` along one axis of ``period`` pixels:
    ``0, 1, ..., period-1, period-1, ..., 1, 0, 0, 1, ...`` (reflect without gaps)."""
    position = positions % (2 * period)
    return np.where(position < period, position, 2 * period - 1 - position)


def mirrored_indices(start: int, stop: int, period: int) -> np.ndarray:
    """Source indices of the mosaic positions ``start..stop-1`` (see :func:`mirror_positions`)."""
    return mirror_positions(np.arange(start, stop), period)


def mosaic_profile(source_profile: dict, size: int) -> dict:
    """The output's profile: the source's georeference and nodata, a tiled compressed BigTIFF."""
    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": source_profile["count"],
        "dtype": source_profile["dtype"],
        "crs": source_profile["crs"],
        "transform": source_profile["transform"],
        "nodata": source_profile["nodata"],
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "zstd",
        "predictor": 2,
        "interleave": "pixel",
        "bigtiff": "YES",
    }


def make_mosaic(size: int, out: Path, source_path: Path = DEFAULT_SOURCE) -> None:
    """Write the ``size`` x ``size`` mirror-tiled mosaic of ``source_path`` to ``out``."""
    with rasterio.open(source_path) as source:
        pixels = source.read()
        profile = mosaic_profile(source.profile, size)
    bands, height, width = pixels.shape
    columns = mirrored_indices(0, size, width)
    out.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as mosaic:
        for row_off in range(0, size, BLOCK):
            rows = mirrored_indices(row_off, min(row_off + BLOCK, size), height)
            strip = pixels[:, rows][:, :, columns]
            mosaic.write(strip, window=Window(0, row_off, size, len(rows)))


def bench_mosaic(size: int) -> Path:
    """``bench/out/mosaic_SIZE.tif``, the benchmarks' shared input, built the first time it is asked for."""
    path = BENCH_OUT / f"mosaic_{size}.tif"
    if not path.exists():
        make_mosaic(size, path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, required=True, help="side of the square mosaic, in pixels")
    parser.add_argument("--out", type=Path, required=True, help="output GeoTIFF path")
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="image to mirror-tile")
    args = parser.parse_args()
    if args.size < 1:
        parser.error("--size must be positive")
    start = time.perf_counter()
    make_mosaic(args.size, args.out, args.source)
    megabytes = args.out.stat().st_size / 2**20
    print(f"{args.out}: {args.size} x {args.size}, {megabytes:.0f} MiB, {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
