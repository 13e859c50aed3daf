"""Tissue-only processing against the whole slide, on a slide that is mostly glass.

The slide is built from the real Aperio region ``examples/data/cmu_small_region.svs`` (2220 x
2967 at 0.499 µm/px, about a third of it tissue), set in the middle of a 5000 x 5000 canvas of
glass of that slide's own median glass colour (so about 10 % of the canvas is tissue), mirror-
tiled to ``size`` x ``size`` and written as a pyramidal tiled TIFF (``bench/make_slide.py``). segtile
then segments it with the installed default PSPNet-18, tile 512, on the slide's own grid
(``--mpp native``), no test-time augmentation (``--tta none``), once with ``--tissue-mask`` (the
default for colour slides) and once with ``--no-tissue-mask``, each in a fresh process,
alternating; the wall times include tissue detection. Prints the options of each mode, a
Markdown table and the ratio of the medians.

    python -m bench.tissue               # from the repository root
    python -m bench.tissue --pairs 1 --size 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.make_slide import DEFAULT_SOURCE, read_source, write_slide
from bench.measure import cli_options, print_options
from segtile.sources import open_source
from segtile.sources.tissue import detect_tissue

OUT = Path(__file__).resolve().parent / "out"


CANVAS = 5000


def make_glass_slide(size: int, out: Path) -> float:
    """The real region on a canvas of glass, mirror-tiled to a ``size`` x ``size`` pyramidal
    slide; returns the share of the canvas that is tissue (as segtile detects it on the region)."""
    region, mpp = read_source(DEFAULT_SOURCE)
    found = detect_tissue(open_source(DEFAULT_SOURCE), open_source(DEFAULT_SOURCE))
    glass = np.median(region[~found.tissue], axis=0).astype(np.uint8)
    canvas = np.empty((CANVAS, CANVAS, 3), dtype=np.uint8)
    canvas[:] = glass
    top, left = (CANVAS - region.shape[0]) // 2, (CANVAS - region.shape[1]) // 2
    canvas[top:top + region.shape[0], left:left + region.shape[1]] = region
    write_slide(canvas, mpp, size, out, f"{DEFAULT_SOURCE.name} on glass, mirror-tiled, at {mpp} um/px")
    return found.tissue.sum() / CANVAS**2


def command(slide: Path, out: Path, tissue: bool) -> list[str]:
    """The ``segtile`` command's arguments for one mode: every option the comparison depends on given."""
    return [str(slide), "-o", str(out), "--overwrite", "--tile-size", "512", "--device", "cpu", "--mpp", "native",
            "--tta", "none", "--progress", "json", "--tissue-mask" if tissue else "--no-tissue-mask"]


def run(slide: Path, out: Path, tissue: bool) -> tuple[float, dict]:
    """Wall seconds of one ``segtile`` run and its JSON summary."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "segtile.cli", *command(slide, out, tissue)],
                          capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return seconds, json.loads(done.stderr.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=15000)
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    slide = OUT / f"glass_slide_{args.size}.tif"
    share = make_glass_slide(args.size, slide)
    print(f"{slide.name}: {args.size} x {args.size} px, tissue {share:.1%} of it\n")
    print_options("tissue only", cli_options(command(slide, OUT / "tissue.zarr", tissue=True)))
    print_options("whole slide", cli_options(command(slide, OUT / "whole.zarr", tissue=False)))
    print()
    print("| run | tissue only s | tiles run / skipped | whole slide s | tiles run | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    masked, whole = [], []
    for pair in range(1, args.pairs + 1):
        seconds, summary = run(slide, OUT / "tissue.zarr", tissue=True)
        all_seconds, all_summary = run(slide, OUT / "whole.zarr", tissue=False)
        masked.append(seconds)
        whole.append(all_seconds)
        print(f"| {pair} | {seconds:.1f} | {summary['tiles_run']} / {summary['tiles_skipped']} | {all_seconds:.1f} "
              f"| {all_summary['tiles_run']} | {all_seconds / seconds:.2f} |", flush=True)
    print(f"\nmedian whole / median tissue only: {statistics.median(whole) / statistics.median(masked):.2f}")


if __name__ == "__main__":
    main()
