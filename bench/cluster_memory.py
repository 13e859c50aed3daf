"""Peak memory of each worker of a ``dask.distributed`` cluster against image size, beside the
same job on threads.

The workload of ``bench/memory.py`` (a 1x1 convolution, tile 512, overlap 64, batch 4, GeoTIFF
mosaic to Zarr labels), written the way segtile writes (``result.write(path)``: on a cluster the
labels are computed stripe by stripe into a work store, then copied into the output, a few
chunks at a time). For each size: first the threaded run in a fresh process (its peak RSS),
then the same on a fresh ``LocalCluster`` of worker processes (one thread each, as one worker per
GPU runs); each worker's peak RSS is its own ``ru_maxrss``, read on the worker after the run.
Prints a Markdown table with the ratio of the larger worker peak to the threaded peak.

The cluster is Dask's own ``LocalCluster`` (as a user starts one, its nannies setting
``MALLOC_TRIM_THRESHOLD_`` in the workers), or with ``--segtile-cluster`` the one ``segtile
--workers`` starts (``segtile.engine.cluster.local_cluster``: workers with segtile's heap settings).

    python -m bench.cluster_memory                          # from the repository root
    python -m bench.cluster_memory --sizes 4000 16000 --workers 2
    python -m bench.cluster_memory --sizes 4000 16000 --segtile-cluster
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from distributed import Client, LocalCluster

from bench.make_mosaic import bench_mosaic
from bench.measure import Options, pinned, print_options, run_workload, segtile_options
from bench.workloads import pointwise_model
from segtile import segment
from segtile.engine.cluster import local_cluster

OUT = Path(__file__).resolve().parent / "out"


def peak_rss_mib() -> int:
    """This process's peak resident set size (run on each worker)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def threaded_peak(mosaic: Path, labels: Path) -> tuple[float, float, Options]:
    """Seconds, peak RSS (MiB) and options of the job on threads, in a fresh process."""
    try:
        measured = run_workload("segtile", "--input", str(mosaic), "--out", str(labels), "--writer",
                                "--batch-size", "4")
    finally:
        shutil.rmtree(labels, ignore_errors=True)
    return measured.report["seconds"], measured.peak_rss_mib, measured.report["options"]


@contextmanager
def dask_cluster(workers: int) -> Iterator[Client]:
    """Dask's own local cluster of ``workers`` single-thread worker processes."""
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


def cluster_peaks(mosaic: Path, labels: Path, workers: int, segtiles: bool
                  ) -> tuple[float, list[int], list[int], Options]:
    """Seconds of the run on a fresh cluster (segtile's own when ``segtiles``), each worker's
    peak RSS after importing segtile and after the run, and the options it ran with."""
    with (local_cluster(workers=workers) if segtiles else dask_cluster(workers)) as client:
        client.run(lambda: __import__("segtile.engine.graph"))
        before = list(client.run(peak_rss_mib).values())
        start = time.perf_counter()
        result = segment(str(mosaic), pointwise_model(), tile_size=512, overlap=64, batch_size=4, device="cpu",
                         **pinned())
        try:
            result.write(labels)
        finally:
            shutil.rmtree(labels, ignore_errors=True)
        seconds = time.perf_counter() - start
        return seconds, before, list(client.run(peak_rss_mib).values()), segtile_options(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4000, 16000, 30000])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--segtile-cluster", action="store_true",
                        help="the cluster segtile --workers starts, not Dask's own LocalCluster")
    args = parser.parse_args()
    print("| size (px) | threads: s | threads: peak RSS (MiB) | cluster: s | worker peak RSS (MiB) "
          "| worker RSS after imports (MiB) | larger worker peak / threaded peak |")
    print("|---:|---:|---:|---:|---|---|---:|")
    ran_with: dict[str, Options] = {}
    for size in args.sizes:
        mosaic, labels = bench_mosaic(size), OUT / f"cluster_labels_{size}.zarr"
        threaded_seconds, threaded, ran_with[f"{size} px on threads"] = threaded_peak(mosaic, labels)
        seconds, before, after, ran_with[f"{size} px on the cluster"] = cluster_peaks(mosaic, labels, args.workers,
                                                                              args.segtile_cluster)
        print(f"| {size} | {threaded_seconds:.1f} | {threaded:.0f} | {seconds:.1f} | {' / '.join(map(str, after))} "
              f"| {' / '.join(map(str, before))} | {max(after) / threaded:.2f} |", flush=True)
    print()
    for side, options in ran_with.items():
        print_options(side, options)


if __name__ == "__main__":
    main()
