"""A mosaic of four tiles against the same scene as one file, and against the four tiles segmented
one by one: where their labels agree, by distance from the tiles' borders.

``examples/data/landsat7.tif`` (2181 x 1917 px, 30 m, EPSG:3857, nodata 0) is cut into 2 x 2
GeoTIFFs (rasterio windows) in ``bench/out/mosaic_tiles/``. With the default model
(``landsat_rgb_psp18``, a PSPNet whose pixels see far beyond themselves) on the scene's own 30 m
grid, CPU, one process, one after another:

1. the scene as one file (the fastest of ``--repeats`` runs, as for 2);
2. ``open_mosaic(tiles)``: the four tiles read as one image;
3. each tile segmented on its own, its labels put back in place (what a user without mosaics does).

    python -m bench.mosaic_tiles
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from segtile import open_mosaic, segment

OUT = Path(__file__).resolve().parent / "out" / "mosaic_tiles"
SCENE = Path(__file__).resolve().parents[1] / "examples" / "data" / "landsat7.tif"
BANDS = (0, 8, 32, 64, 128)  # distances from the tiles' borders, in pixels, that the table starts at


def cut(scene: Path, folder: Path) -> list[tuple[Path, Window]]:
    """The scene cut in 2 x 2 GeoTIFFs, and the window each covers."""
    folder.mkdir(parents=True, exist_ok=True)
    tiles = []
    with rasterio.open(scene) as dataset:
        rows = (0, dataset.height // 2, dataset.height)
        columns = (0, dataset.width // 2, dataset.width)
        for r in range(2):
            for c in range(2):
                window = Window(columns[c], rows[r], columns[c + 1] - columns[c], rows[r + 1] - rows[r])
                profile = dict(dataset.profile, width=window.width, height=window.height,
                               transform=dataset.window_transform(window))
                path = folder / f"tile_{r}_{c}.tif"
                with rasterio.open(path, "w", **profile) as tile:
                    tile.write(dataset.read(window=window))
                tiles.append((path, window))
    return tiles


def labels(source, resolution: float, repeats: int) -> tuple[np.ndarray, float]:
    """The labels of ``source``, and the fastest of ``repeats`` runs in seconds."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = segment(source, resolution=resolution, device="cpu").labels.compute()
        seconds.append(time.perf_counter() - start)
    return result, min(seconds)


def distance_from_tile_borders(shape: tuple[int, int], tiles: list[tuple[Path, Window]]) -> np.ndarray:
    """Each pixel's distance (in whole pixels) to the nearest line between two tiles."""
    rows, columns = np.indices(shape)
    row_cuts = {w.row_off for _, w in tiles if w.row_off}
    column_cuts = {w.col_off for _, w in tiles if w.col_off}
    distances = [np.minimum(np.abs(rows - cut), np.abs(rows - cut + 1)) for cut in row_cuts]
    distances += [np.minimum(np.abs(columns - cut), np.abs(columns - cut + 1)) for cut in column_cuts]
    return np.min(distances, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=float, default=30.0, help="the grid the model runs on (m)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, the fastest kept")
    args = parser.parse_args()
    tiles = cut(SCENE, OUT)
    whole, whole_seconds = labels(SCENE, args.resolution, args.repeats)
    mosaic, mosaic_seconds = labels(open_mosaic([path for path, _ in tiles]), args.resolution, args.repeats)
    one_by_one = np.zeros_like(whole)
    start = time.perf_counter()
    for path, window in tiles:
        one_by_one[window.toslices()] = segment(path, resolution=args.resolution, device="cpu").labels.compute()
    separate_seconds = time.perf_counter() - start
    distance = distance_from_tile_borders(whole.shape, tiles)
    print(f"scene {whole.shape[1]} x {whole.shape[0]} px, 4 tiles; seconds: scene {whole_seconds:.1f}, "
          f"mosaic {mosaic_seconds:.1f}, tiles one by one {separate_seconds:.1f}")
    print("| pixels at least this far from a tile border | share | mosaic = scene | tiles one by one = scene |")
    print("|---|---|---|---|")
    for near in BANDS:
        where = distance >= near
        print(f"| {near} px | {where.mean():.1%} | {(mosaic == whole)[where].mean():.4%} | "
              f"{(one_by_one == whole)[where].mean():.4%} |")


if __name__ == "__main__":
    main()
