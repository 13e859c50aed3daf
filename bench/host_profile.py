"""Where the engine-bound case spends its time: each stage's calls timed and summed over the Dask
threads, in one process (the workload of ``bench/host_speed.py``: a 1x1 convolution, GeoTIFF to
Zarr labels).

The stages are the engine's own functions, wrapped with a timer for the run; nested stages are
shown indented under the stage that calls them and counted in it. "rest" is the threads' time not
in any stage: writing the Zarr chunks, scheduling and waiting. The first run warms the process
(oneDNN kernels, GDAL handles); the second is reported.

    python -m bench.host_profile                  # the 8000 x 8000 mosaic
    python -m bench.host_profile --size 4000
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import time
from pathlib import Path

import dask
import dask.array as da

from bench.make_mosaic import make_mosaic
from bench.workloads import pointwise_model

OUT = Path(__file__).resolve().parent / "out"
# (owner, function name, label, depth): the order and nesting of the report
STAGES = [
    ("engine", "run_batch", "batch task", 0),
    ("engine", "read_tile", "read a tile: window, validity, padding", 1),
    ("RasterSource", "read", "the window (GDAL)", 2),
    ("engine", "_masked_weight", "masked blend weights", 1),
    ("Predictor", "__call__", "predictor", 1),
    ("Predictor", "_prepared", "convert, normalise, mask, reorder", 2),
    ("Predictor", "_network", "the network (under its lock; waiting for it is not counted)", 2),
    ("engine", "stitch_chunk", "chunk task (stitch)", 0),
    ("engine", "_zeroed", "zero the accumulators", 1),
    ("engine", "argmax_last", "argmax", 1),
]


def instrument(totals: collections.Counter) -> None:
    """Wrap each stage so that its calls add their wall time to ``totals``."""
    from segtile import engine, predictor
    from segtile.sources import raster

    owners = {"engine": engine, "Predictor": predictor.Predictor, "RasterSource": raster.RasterSource}
    for owner, name, _, _ in STAGES:
        target = owners[owner]
        original = getattr(target, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start

        setattr(target, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    args = parser.parse_args()
    mosaic = OUT / f"mosaic_{args.size}.tif"
    if not mosaic.exists():
        make_mosaic(args.size, mosaic)
    from segtile import segment

    totals: collections.Counter = collections.Counter()
    instrument(totals)
    model, labels = pointwise_model(), OUT / f"host_profile_{args.size}.zarr"
    threads = dask.config.get("num_workers", None) or os.cpu_count()
    for _ in range(2):
        totals.clear()
        shutil.rmtree(labels, ignore_errors=True)
        start, cpu = time.perf_counter(), time.process_time()
        result = segment(str(mosaic), model, tile_size=512, overlap=64, blend="gaussian", device="cpu")
        da.to_zarr(result.labels, str(labels))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    shutil.rmtree(labels, ignore_errors=True)
    thread_seconds = wall * threads
    print(f"{args.size} x {args.size}: {wall:.2f} s on {threads} threads ({thread_seconds:.2f} thread-s), "
          f"process CPU {cpu:.2f} s")
    print("| stage | thread-s | share |\n|---|---:|---:|")
    for _, name, label, depth in STAGES:
        print(f"| {'&nbsp;&nbsp;' * depth}{label} | {totals[name]:.2f} | {totals[name] / thread_seconds:.0%} |")
    rest = thread_seconds - totals["run_batch"] - totals["stitch_chunk"]
    print(f"| rest: Zarr writes, scheduling, waiting | {rest:.2f} | {rest / thread_seconds:.0%} |")


if __name__ == "__main__":
    main()
