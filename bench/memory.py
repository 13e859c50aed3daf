"""Peak memory against image size: segtile from a GeoTIFF mosaic to Zarr labels.

One fresh process per size (so each peak is that run's own), a 1x1-convolution model (2 classes,
or ``--classes``), its labels written by dask's own ``da.to_zarr(result.labels, ...)`` (a
notebook's natural call) or, with ``--writer``, by segtile's ``result.write`` (stripe by
stripe); tile 512, overlap 64, gaussian blend; batch, chunk and stripe sizes from segtile's
memory budget unless given. Prints a Markdown table (size, Mpx,
seconds, Mpx/s, peak RSS, RSS after imports) and writes each run's RSS trace to
``bench/out/memory_trace_SIZE.csv`` (seconds, MiB). Mosaics missing from ``bench/out`` are built
first (``bench/make_mosaic.py``); the Zarr outputs are deleted after each run.

    python -m bench.memory                       # from the repository root
    python -m bench.memory --sizes 4000 8000     # a quicker subset
    python -m bench.memory --gdal-cache-mb 64    # with GDAL's block cache bounded otherwise
    python -m bench.memory --stripe-width 0      # without stripes: the whole width at once
    python -m bench.memory --classes 150 --sizes 10000   # a 150-class model (ADE20K's count)
    python -m bench.memory --classes 150 --sizes 10000 --writer   # through result.write, not da.to_zarr
    python -m bench.memory --device cuda --precision fp16 --model pspnet50 --classes 150
                                                 # on a GPU; --stitch-on-host to compare
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from bench.make_mosaic import make_mosaic
from bench.measure import (
    Measured,
    add_model_arguments,
    check_model_arguments,
    model_arguments,
    print_options,
    run_workload,
)

OUT = Path(__file__).resolve().parent / "out"


def measure_size(size: int, args: argparse.Namespace) -> Measured:
    """Segment the ``size`` mosaic to Zarr in a fresh process; the output is removed afterwards."""
    mosaic = OUT / f"mosaic_{size}.tif"
    if not mosaic.exists():
        make_mosaic(size, mosaic)
    labels = OUT / f"labels_{size}.zarr"
    shutil.rmtree(labels, ignore_errors=True)
    try:
        sizes = [f"--{name.replace('_', '-')}={getattr(args, name)}"
                 for name in ("batch_size", "chunk_size", "stripe_width", "memory_limit")
                 if getattr(args, name) is not None]
        sizes += model_arguments(args) + (["--writer"] if args.writer else [])
        return run_workload(
            "segtile", "--input", str(mosaic), "--out", str(labels), "--classes", str(args.classes),
            "--tile-size", str(args.tile_size), "--overlap", str(args.overlap), *sizes,
            env={"GDAL_CACHEMAX": str(args.gdal_cache_mb)} if args.gdal_cache_mb else None,
        )
    finally:
        shutil.rmtree(labels, ignore_errors=True)


def write_trace(measured: Measured, path: Path) -> None:
    lines = ["seconds,rss_mib"] + [f"{t:.2f},{rss:.1f}" for t, rss in measured.trace]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 8000, 16000, 30000])
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--classes", type=int, default=2, help="classes of the 1x1 convolution (150: ADE20K's)")
    parser.add_argument("--memory-limit", help="segtile's memory budget (default: its own, 1.25 GiB)")
    parser.add_argument("--batch-size", type=int, help="default: from the memory budget (4 with 2 classes)")
    parser.add_argument("--chunk-size", type=int, help="default: from the memory budget (1024 with 2 classes)")
    parser.add_argument("--stripe-width", type=int, help="0: the whole width at once; default: from the budget")
    add_model_arguments(parser)
    parser.add_argument("--writer", action="store_true", help="write with result.write (segtile's writer, stripe "
                        "by stripe) rather than dask.array.to_zarr")
    parser.add_argument("--gdal-cache-mb", type=int, help="set GDAL_CACHEMAX (MB) for the runs; "
                        "GDAL's default is 5%% of the machine's memory")
    args = parser.parse_args()
    check_model_arguments(parser, args)

    print("| size (px) | Mpx | seconds | Mpx/s | peak RSS (MiB) | RSS after imports (MiB) | graph tasks "
          "| device peak (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    peaks, ran_with = {}, {}
    for size in args.sizes:
        measured = measure_size(size, args)
        suffix = (f"_gdal{args.gdal_cache_mb}" if args.gdal_cache_mb else "") + (
            f"_stripe{args.stripe_width}" if args.stripe_width is not None else "") + (
            f"_classes{args.classes}" if args.classes != 2 else "") + (
            f"_{args.model}" if args.model != "pointwise" else "") + (
            f"_{args.device.replace(':', '')}" if args.device != "cpu" else "") + ("_writer" if args.writer else "")
        write_trace(measured, OUT / f"memory_trace_{size}{suffix}.csv")
        report = measured.report
        megapixels = size * size / 1e6
        peaks[size], ran_with[size] = measured.peak_rss_mib, report["options"]
        print(f"| {size} | {megapixels:.0f} | {report['seconds']:.1f} | {megapixels / report['seconds']:.1f} "
              f"| {measured.peak_rss_mib:.0f} | {report['rss_before_mib']:.0f} | {report['tasks']} "
              f"| {report.get('device_peak_mib', float('nan')):.0f} |", flush=True)
    print()
    for size, options in ran_with.items():
        print_options(f"{size} px", options)
    smallest, largest = min(peaks), max(peaks)
    print(f"\npeak {largest} / peak {smallest}: {peaks[largest] / peaks[smallest]:.2f}")


if __name__ == "__main__":
    main()
