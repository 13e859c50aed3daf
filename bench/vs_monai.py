"""segtile against MONAI's ``sliding_window_inference`` on the same 8000 x 8000 image.

Both sides use the same 1x1-convolution model (``bench.workloads.pointwise_model``), tiles of 512
with 64 px overlap (MONAI: ``overlap=0.125``), batches of 4 tiles and gaussian blending, each in a
fresh process:

* segtile reads the GeoTIFF tile by tile and writes the labels to Zarr;
* MONAI reads the whole image into a float32 tensor ``(1, 3, H, W)``, infers, takes the argmax.

The image is ``bench/out/mosaic_8000.tif``, which is by construction the top-left 8000 x 8000
window of every larger mosaic. Runs alternate segtile, MONAI, ... ``--repeats`` times; medians
are reported, with the ratios time MONAI / segtile and peak RSS segtile / MONAI. The two label
maps are compared on the pixels segtile did not mark nodata (a pointwise model gives the same
labels whatever the blending). MONAI is a benchmark requirement only (``pip install monai``).

    python -m bench.vs_monai                          # from the repository root
    python -m bench.vs_monai --monai-channels-last    # MONAI given the model channels-last too
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

import numpy as np
import zarr

from bench.compare import label_agreement, print_table
from bench.make_mosaic import make_mosaic
from bench.measure import Measured, print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"


def child_env(args: argparse.Namespace) -> dict[str, str] | None:
    return {"GDAL_CACHEMAX": str(args.gdal_cache_mb)} if args.gdal_cache_mb else None


def run_segtile(mosaic: Path, labels: Path, args: argparse.Namespace) -> Measured:
    shutil.rmtree(labels, ignore_errors=True)
    return run_workload(
        "segtile", "--input", str(mosaic), "--out", str(labels), "--tile-size", str(args.tile_size),
        "--overlap", str(args.overlap), "--batch-size", str(args.batch_size), env=child_env(args),
    )


def run_monai(mosaic: Path, labels: Path, args: argparse.Namespace) -> Measured:
    return run_workload(
        "monai", "--input", str(mosaic), "--out", str(labels), "--tile-size", str(args.tile_size),
        "--overlap-fraction", str(args.overlap / args.tile_size), "--batch-size", str(args.batch_size),
        *(["--channels-last"] if args.monai_channels_last else []), env=child_env(args),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2, help="segtile/MONAI pairs")
    parser.add_argument("--gdal-cache-mb", type=int, help="set GDAL_CACHEMAX (MB) for both sides; "
                        "otherwise segtile bounds it to 64 MB and MONAI keeps GDAL's default")
    parser.add_argument("--monai-channels-last", action="store_true",
                        help="give MONAI the model in channels-last memory format, as segtile runs it")
    args = parser.parse_args()

    mosaic = OUT / f"mosaic_{args.size}.tif"
    if not mosaic.exists():
        make_mosaic(args.size, mosaic)
    ours_path, theirs_path = OUT / "vs_monai_segtile.zarr", OUT / "vs_monai_monai.npy"
    ours, theirs = [], []
    try:
        for repeat in range(args.repeats):
            ours.append(run_segtile(mosaic, ours_path, args))
            theirs.append(run_monai(mosaic, theirs_path, args))
            print(f"pair {repeat + 1}: segtile {ours[-1].report['seconds']:.1f} s {ours[-1].peak_rss_mib:.0f} MiB; "
                  f"MONAI {theirs[-1].report['seconds']:.1f} s {theirs[-1].peak_rss_mib:.0f} MiB", flush=True)
        agreement, nodata = label_agreement(zarr.open_array(ours_path, mode="r"), np.load(theirs_path, mmap_mode="r"))
    finally:
        shutil.rmtree(ours_path, ignore_errors=True)
        theirs_path.unlink(missing_ok=True)

    def medians(runs: list[Measured]) -> tuple[float, float, float, float]:
        return (statistics.median(m.report["seconds"] for m in runs),
                statistics.median(m.wall_seconds for m in runs),
                statistics.median(m.peak_rss_mib for m in runs),
                statistics.median(m.report["rss_before_mib"] for m in runs))

    rows = {"segtile (GeoTIFF -> Zarr)": medians(ours), "MONAI (read all, infer, argmax)": medians(theirs)}
    cache = f"GDAL_CACHEMAX {args.gdal_cache_mb} MB" if args.gdal_cache_mb else "GDAL_CACHEMAX unset"
    layout = "channels-last" if args.monai_channels_last else "as given (contiguous)"
    print(f"\n{args.size} x {args.size}, tile {args.tile_size}, overlap {args.overlap}, batch {args.batch_size}, "
          f"{cache}, MONAI's model {layout}, median of {args.repeats}")
    print_options("segtile", ours[-1].report["options"])
    print_options("MONAI", theirs[-1].report["options"])
    print_table(rows)
    (ours_work, ours_wall, ours_peak, ours_base), (their_work, their_wall, their_peak, their_base) = rows.values()
    print(f"\ntime MONAI / segtile: {their_work / ours_work:.2f} (work), {their_wall / ours_wall:.2f} (process wall)")
    print(f"peak RSS segtile / MONAI: {ours_peak / their_peak:.3f} "
          f"(above the RSS after imports: {(ours_peak - ours_base) / (their_peak - their_base):.3f})")
    print(f"labels agree on {agreement:.4%} of segtile's valid pixels ({nodata:.2%} nodata in segtile's output)")


if __name__ == "__main__":
    main()
