"""Preview time against full-run time on a large GeoTIFF, as ratios from one run.

The mosaic (``bench/make_mosaic.py``: SIZE x SIZE px, mirror-tiled ``examples/data/landsat7.tif``,
30 m, tiled 512, ZSTD, no overviews) is built in ``bench/out`` when missing. In one process, with
the default model (``landsat_rgb_psp18``) on the image's own 30 m grid (``resolution="native"``, which
the card's 10-600 m range serves as it is: the setting pins it), no test-time augmentation, CPU,
one after another:

1. ``result.preview()`` (1024 px on the longer side) of the mosaic as it is: no overviews, so
   every full-resolution block is read and averaged down (the model sees 1024 x 1024 px);
2. the same on a copy of the mosaic with internal overviews (``mosaic_SIZE_overviews.tif``,
   average, factors 2 to 32, as a Cloud-Optimised GeoTIFF has them; built once, kept for later
   runs): the coarse grid is read from the coarsest overview still at least as fine as it (for
   30000 px: the 1/16 one, 1875 px);
3. the full job: ``result.to_zarr(...)`` (the labels of every pixel), removed afterwards.

With ``--slide``, a pyramidal slide instead (``bench/make_slide.py``: SIZE x SIZE px mirror-tiled
from the real Aperio region, levels down to 1024 px or less), read with segtile's slide reader:
the preview with tissue detection on (``tissue=True``, the default for colour slides: a masked
source) against the preview with ``tissue=False``, both on the slide's own grid; both read the
pyramid, so their ratio is near 1. The options of each job are printed.

    python -m bench.preview --size 30000
    python -m bench.preview --slide --size 12000
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import rasterio
from rasterio.enums import Resampling

from bench.make_mosaic import make_mosaic
from bench.make_slide import make_slide
from bench.measure import pinned, print_options, segtile_options
from segtile import segment
from segtile.sources import SlideSource

OUT = Path(__file__).resolve().parent / "out"


def with_overviews(mosaic: Path) -> Path:
    """A copy of ``mosaic`` with internal overviews (built once, then reused)."""
    copy = mosaic.with_name(f"{mosaic.stem}_overviews.tif")
    if not copy.exists():
        building = copy.with_name(copy.name + ".part")
        shutil.copyfile(mosaic, building)
        with rasterio.Env(COMPRESS_OVERVIEW="ZSTD"), rasterio.open(building, "r+") as image:
            image.build_overviews([2, 4, 8, 16, 32], Resampling.average)
        building.rename(copy)
    return copy


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def slide_previews(size: int, max_size: int) -> None:
    """The preview of a pyramidal slide with its tissue masked, against the preview without."""
    slide = OUT / f"slide_{size}.tif"
    if not slide.exists():
        make_slide(size, slide)
    masked = segment(SlideSource(slide), device="cpu", **pinned(slide=True, tissue=True))
    unmasked = segment(SlideSource(slide), device="cpu", **pinned(slide=True))
    print(f"{masked!r}; preview {max_size} px")
    print_options("tissue masked", segtile_options(masked))
    print_options("tissue=False", segtile_options(unmasked))
    with_tissue = timed(lambda: masked.preview(max_size=max_size))
    print(f"preview, tissue masked:  {with_tissue:8.1f} s")
    without = timed(lambda: unmasked.preview(max_size=max_size))
    print(f"preview, tissue=False:   {without:8.1f} s")
    print(f"ratio masked / unmasked: {with_tissue / without:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=30000, help="side of the mosaic, in pixels")
    parser.add_argument("--max-size", type=int, default=1024, help="the preview's longer side")
    parser.add_argument("--slide", action="store_true", help="a pyramidal slide, tissue masked or not")
    args = parser.parse_args()
    if args.slide:
        slide_previews(args.size, args.max_size)
        return
    mosaic = OUT / f"mosaic_{args.size}.tif"
    if not mosaic.exists():
        make_mosaic(args.size, mosaic)
    overviews = with_overviews(mosaic)

    plain = segment(mosaic, device="cpu", **pinned())
    layered = segment(overviews, device="cpu", **pinned())
    print(f"{plain!r}; preview {args.max_size} px")
    print_options("no overviews (the preview and the full run)", segtile_options(plain))
    print_options("with overviews", segtile_options(layered))
    preview_plain = timed(lambda: plain.preview(max_size=args.max_size))
    print(f"preview, no overviews:   {preview_plain:8.1f} s")
    preview_layered = timed(lambda: layered.preview(max_size=args.max_size))
    print(f"preview, with overviews: {preview_layered:8.1f} s")
    labels = OUT / f"preview_bench_labels_{args.size}.zarr"
    shutil.rmtree(labels, ignore_errors=True)
    try:
        full = timed(lambda: plain.to_zarr(labels))
    finally:
        shutil.rmtree(labels, ignore_errors=True)
    print(f"full run (labels to Zarr): {full:8.1f} s")
    print(f"ratio preview / full run: {preview_plain / full:.4f} without overviews, "
          f"{preview_layered / full:.5f} with overviews")


if __name__ == "__main__":
    main()
