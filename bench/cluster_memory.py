"""Peak memory of each worker of a ``dask.distributed`` cluster against image size.

The same workload as ``bench/memory.py`` (a 1x1 convolution, tile 512, overlap 64, batch 4,
GeoTIFF mosaic to Zarr labels), run on a fresh ``LocalCluster`` of worker processes for each
size, as a multi-GPU job would run with one worker per GPU. Each worker's peak RSS is its own
``ru_maxrss``, read on the worker after the run. Prints a Markdown table.

    python -m bench.cluster_memory                          # from the repository root
    python -m bench.cluster_memory --sizes 4000 16000 --workers 2
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import dask.array as da
from distributed import Client, LocalCluster

from bench.make_mosaic import make_mosaic
from bench.workloads import pointwise_model
from segtile import segment

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_mib() -> int:
    """This process's peak resident set size (run on each worker)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def measure_size(size: int, workers: int) -> tuple[float, list[int], list[int]]:
    """Seconds of the run, and each worker's peak RSS after importing segtile and after the run."""
    mosaic, labels = OUT / f"mosaic_{size}.tif", OUT / f"cluster_labels_{size}.zarr"
    if not mosaic.exists():
        make_mosaic(size, mosaic)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("segtile.engine"))
        before = list(client.run(peak_rss_mib).values())
        start = time.perf_counter()
        result = segment(str(mosaic), pointwise_model(), tile_size=512, overlap=64, batch_size=4, device="cpu")
        try:
            da.to_zarr(result.labels, str(labels))
        finally:
            shutil.rmtree(labels, ignore_errors=True)
        seconds = time.perf_counter() - start
        return seconds, before, list(client.run(peak_rss_mib).values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000, 30000])
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    print("| size (px) | seconds | worker peak RSS (MiB) | worker RSS after imports (MiB) |")
    print("|---:|---:|---|---|")
    for size in args.sizes:
        seconds, before, after = measure_size(size, args.workers)
        print(f"| {size} | {seconds:.1f} | {' / '.join(map(str, after))} | {' / '.join(map(str, before))} |",
              flush=True)


if __name__ == "__main__":
    main()
