"""A cohort in one command against one command per image: the time saved per item, and a
rerun that skips everything.

Builds ``--count`` small GeoTIFF tiles (crops of ``examples/data/bahamas_rgb.tif``, Landsat, on
its grid) in a temporary folder, then times, each in fresh processes:

1. one ``segtile TILE --out sep/NAME.tif`` command per tile;
2. one ``segtile FOLDER --out coh/{stem}.tif --summary ...`` command for them all;
3. the same cohort command again, every item skipped as finished.

The masks of 1 and 2 are checked to be equal, label for label. Prints a Markdown table, and the
seconds per item inside the one command (from its ``--summary``), which leave out its start-up.

    python -m bench.cohort                   # from the repository root: 50 tiles of 192 px
    python -m bench.cohort --count 20 --size 256 --model nuclei_psp18
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from bench.measure import cli_options, print_options

IMAGE = Path(__file__).resolve().parents[1] / "examples" / "data" / "bahamas_rgb.tif"


def make_tiles(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` crops of ``size`` px of the Landsat scene, on a regular walk over it."""
    paths = []
    with rasterio.open(IMAGE) as source:
        rng = np.random.default_rng(0)
        for index in range(count):
            column = int(rng.integers(0, source.width - size))
            row = int(rng.integers(0, source.height - size))
            window = Window(column, row, size, size)
            profile = {**source.profile, "width": size, "height": size, "tiled": True, "blockxsize": 128,
                       "blockysize": 128, "transform": source.window_transform(window)}
            path = folder / f"tile_{index:03d}.tif"
            with rasterio.open(path, "w", **profile) as tile:
                tile.write(source.read(window=window))
            paths.append(path)
    return paths


def segtile(*args: object) -> float:
    """Seconds the ``segtile`` command takes with ``args``, in a fresh process."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "segtile.cli", *map(str, args), "--quiet", "--device", "cpu"], check=True)
    return time.perf_counter() - started


def labels(path: Path) -> np.ndarray:
    with rasterio.open(path) as mask:
        return mask.read(1)


def summary(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def item_seconds(rows: list[dict[str, str]]) -> float:
    return sum(float(row["seconds"]) for row in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--model", help="a checkpoint or installed model (default: the installed default)")
    args = parser.parse_args()
    model = ["--model", args.model] if args.model else []
    with tempfile.TemporaryDirectory(prefix="segtile-cohort-") as temporary:
        root = Path(temporary)
        tiles, separate, cohort = root / "tiles", root / "sep", root / "coh"
        for folder in (tiles, separate, cohort):
            folder.mkdir()
        paths = make_tiles(tiles, args.count, args.size)
        # the same settings either way: each tile is one item of the folder's command
        print_options("each tile, both ways (the first)", cli_options([str(paths[0]), "--out", "x.tif", *model]))
        one_by_one = sum(segtile(path, "--out", separate / path.name, *model) for path in paths)
        together = segtile(tiles, "--out", cohort / "{stem}.tif", "--summary", root / "first.csv", *model)
        rerun = segtile(tiles, "--out", cohort / "{stem}.tif", "--summary", root / "rerun.csv", *model)
        for path in paths:
            if not np.array_equal(labels(separate / path.name), labels(cohort / path.name)):
                raise SystemExit(f"the masks of {path.name} differ between the two ways")
        first, again = summary(root / "first.csv"), summary(root / "rerun.csv")
        if {row["status"] for row in again} != {"skipped"}:
            raise SystemExit(f"the rerun did not skip every item: {[row['status'] for row in again]}")
    count = args.count
    print(f"{count} tiles of {args.size}x{args.size} px, masks equal label for label\n")
    print("| run | seconds | per item |")
    print("|---|---:|---:|")
    print(f"| {count} separate commands | {one_by_one:.1f} | {one_by_one / count:.2f} |")
    print(f"| one command over the folder | {together:.1f} | {together / count:.2f} |")
    print(f"| the same command again (all skipped) | {rerun:.1f} | {rerun / count:.3f} |")
    print(f"\ninside the one command (its summary's seconds): {item_seconds(first) / count:.3f} s per item run, "
          f"{item_seconds(again) / count * 1000:.1f} ms per item skipped")
    print(f"\ntime saved per item: {(one_by_one - together) / count:.2f} s "
          f"({one_by_one / together:.1f} times faster in one command)")


if __name__ == "__main__":
    main()
