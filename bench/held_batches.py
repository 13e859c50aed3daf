"""Where segtile's memory goes: batch results held by Dask, live numpy memory, and RSS.

Runs the ``memory.py`` workload (1x1 convolution, GeoTIFF -> Zarr labels) in this process with a
Dask callback that counts, after every task, the batch results alive: those the scheduler still
holds (each a batch of tiles' weighted logits, waiting for the chunks that need it) and those
being made on a thread. ``--writer`` writes with segtile's ``result.write`` rather than
``da.to_zarr``. Optionally traces
the live Python / numpy allocations (``--tracemalloc``) and bounds GDAL's block cache
(``--gdal-cache-mb``). The gap between the peak RSS and what is accounted for (imports, held
batches, GDAL cache, live numpy memory) is memory the allocator keeps but nobody uses.

    python -m bench.held_batches bench/out/mosaic_16000.tif
    python -m bench.held_batches bench/out/mosaic_8000.tif --gdal-cache-mb 64 --tracemalloc
    python -m bench.held_batches bench/out/mosaic_3000.tif --classes 150 --writer
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import threading
import time
import tracemalloc
from contextlib import nullcontext
from pathlib import Path

import dask.array as da
import psutil
import rasterio
from dask.callbacks import Callback

from bench.measure import pinned, segtile_options
from bench.workloads import pointwise_model
from segtile import segment
from segtile.engine.graph import BATCH_PREFIX


def is_batch(key: object) -> bool:
    return isinstance(key, tuple) and str(key[0]).startswith(BATCH_PREFIX)


class HeldBatches(Callback):
    """Counts the batch results alive after each task (in the scheduler's cache, or being made);
    samples the RSS."""

    def __init__(self) -> None:
        super().__init__()
        self.most_held = 0
        self.peak_rss = 0
        self._process = psutil.Process()
        self._running: set = set()
        self._lock = threading.Lock()

    def _pretask(self, key, dsk, state) -> None:
        with self._lock:
            self._running.add(key)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        with self._lock:
            self._running.discard(key)
            alive = sum(map(is_batch, set(state["cache"]) | self._running))
        self.most_held = max(self.most_held, alive)
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="GeoTIFF (a bench/make_mosaic.py mosaic)")
    parser.add_argument("--gdal-cache-mb", type=int, help="bound GDAL's block cache for this run")
    parser.add_argument("--tracemalloc", action="store_true", help="trace live Python / numpy memory (slower)")
    parser.add_argument("--classes", type=int, default=2, help="classes of the 1x1 convolution")
    parser.add_argument("--writer", action="store_true", help="write with result.write (segtile's writer) rather "
                        "than dask.array.to_zarr")
    args = parser.parse_args()

    out = Path(__file__).resolve().parent / "out" / "held_batches.zarr"
    shutil.rmtree(out, ignore_errors=True)
    rss_before = psutil.Process().memory_info().rss
    start = time.perf_counter()
    result = segment(str(args.input), pointwise_model(classes=args.classes), tile_size=512, overlap=64, device="cpu",
                     **pinned())
    env = rasterio.Env(GDAL_CACHEMAX=args.gdal_cache_mb * 2**20) if args.gdal_cache_mb else nullcontext()
    counter = HeldBatches()
    if args.tracemalloc:
        tracemalloc.start()
    try:
        with env, counter:
            if args.writer:
                result.write(str(out))
            else:
                da.to_zarr(result.labels, str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    report = {
        "seconds": round(time.perf_counter() - start, 1),
        "batches": sum(map(is_batch, result.labels.__dask_graph__())),
        "options": segtile_options(result),
        "most_batches_alive": counter.most_held,
        "rss_after_imports_mib": rss_before // 2**20,
        "sampled_peak_rss_mib": counter.peak_rss // 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    }
    if args.tracemalloc:
        report["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] // 2**20
    print(json.dumps(report))


if __name__ == "__main__":
    main()
