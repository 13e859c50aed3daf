"""Peak memory of tissue detection on a slide without a pyramid (a flat, single-level OME-TIFF).

A slide with no level under ``segtile.sources.tissue.OVERVIEW`` (4096) px a side has its overview
resampled from level 0, window by window; segtile once read that level whole, as float32, to find
the tissue (4.95 GiB for 14000² px). The slide is the real Aperio region
``examples/data/cmu_small_region.svs`` mirror-tiled to ``size`` x ``size`` (``bench/make_slide.py``),
written as a single-level OME-TIFF (BigTIFF, JPEG tiles of 512, the region's 0.499 µm/px in its
OME metadata) tile by tile. Two runs, each in a fresh process: tissue detection alone
(``python -m bench.workloads tissue``), then the whole job, tissue-only, with the 1x1 convolution to
Zarr labels (``python -m bench.workloads segtile --slide --tissue``: the tissue detection that
is segtile's default on colour slides, asked for explicitly). Prints a Markdown table of seconds
and peak RSS, and the options the job ran with.

    python -m bench.tissue_memory                  # 14000 px, from the repository root
    python -m bench.tissue_memory --size 8000
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tifffile

from bench.make_slide import DEFAULT_SOURCE, JPEG_QUALITY, TILE, level_tiles, read_source
from bench.measure import print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"


def make_flat_slide(size: int, out: Path) -> None:
    """The real region mirror-tiled to a ``size`` x ``size`` OME-TIFF of one level, written tile by tile."""
    source, mpp = read_source(DEFAULT_SOURCE)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(out, bigtiff=True, ome=True) as tif:
        tif.write(level_tiles(source, 0, size), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                  photometric="rgb", compression="jpeg", compressionargs={"level": JPEG_QUALITY},
                  metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=14000, help="side of the square slide, in pixels")
    args = parser.parse_args()
    slide = OUT / f"flat_slide_{args.size}.ome.tif"
    if not slide.exists():
        make_flat_slide(args.size, slide)
    labels = OUT / f"flat_slide_{args.size}_labels.zarr"
    print(f"{slide.name}: {args.size} x {args.size} px, one level, {slide.stat().st_size / 2**20:.0f} MiB\n")
    print("| run | seconds | peak RSS (MiB) | RSS after imports (MiB) | tissue |")
    print("|---|---:|---:|---:|---:|")
    detection = run_workload("tissue", "--input", str(slide))
    print(f"| tissue detection alone | {detection.report['seconds']:.1f} | {detection.peak_rss_mib:.0f} "
          f"| {detection.report['rss_before_mib']:.0f} | {detection.report['fraction']:.0%} |", flush=True)
    shutil.rmtree(labels, ignore_errors=True)
    try:
        job = run_workload("segtile", "--slide", "--tissue", "--input", str(slide), "--out", str(labels))
    finally:
        shutil.rmtree(labels, ignore_errors=True)
    print(f"| whole job, tissue only (1x1 convolution to Zarr) | {job.report['seconds']:.1f} "
          f"| {job.peak_rss_mib:.0f} | {job.report['rss_before_mib']:.0f} | |")
    print()
    print_options("the whole job", job.report["options"])


if __name__ == "__main__":
    main()
