"""Do cores add up? The engine-bound case on one core, on two threads, and on two worker processes.

The workload is ``bench/host_speed.py``'s (a 1x1 convolution from a GeoTIFF mosaic to Zarr
labels, written by ``result.write``), each run a fresh process pinned to the CPUs it may use
(its affinity, which Dask's and torch's thread counts follow): ``1 thread`` on one CPU, ``2
threads`` on two, ``2 processes`` on two as a local cluster of two workers of one thread each
(``--workers 2``). The modes alternate over ``--rounds`` rounds; each line gives the load average
when it started (on a shared machine the figures are only as good as the quiet they ran in), and
the last lines the median throughput of each mode over one thread's.

    python -m bench.host_scaling                  # 8000 x 8000, 3 rounds
    python -m bench.host_scaling --size 4000 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from bench.make_mosaic import bench_mosaic
from bench.measure import print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"
MODES = {"1 thread": (1, []), "2 threads": (2, []), "2 processes": (2, ["--workers", "2"])}


@contextmanager
def pinned(cpus: int) -> Iterator[None]:
    """This process (and so the workloads it starts) pinned to its first ``cpus`` CPUs."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < cpus:
        raise SystemExit(f"needs {cpus} CPUs, this process may use {len(allowed)}")
    os.sched_setaffinity(0, allowed[:cpus])
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    mosaic = bench_mosaic(args.size)
    labels = OUT / f"host_scaling_{args.size}.zarr"
    megapixels = args.size * args.size / 1e6
    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    print(f"{args.size} x {args.size}, 1x1 convolution, result.write to Zarr")
    print("| round | mode | load (1 min) | seconds | Mpx/s |")
    print("|---:|---|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        for mode, (cpus, extra) in MODES.items():
            load = os.getloadavg()[0]
            shutil.rmtree(labels, ignore_errors=True)
            try:
                with pinned(cpus):
                    report = run_workload("segtile", "--input", str(mosaic), "--out", str(labels), "--writer",
                                          *extra).report
            finally:
                shutil.rmtree(labels, ignore_errors=True)
            seconds = report["seconds"]
            if round_ == 1:
                print_options(f"segtile, {mode}", report["options"])
            speeds[mode].append(megapixels / seconds)
            print(f"| {round_} | {mode} | {load:.1f} | {seconds:.1f} | {megapixels / seconds:.1f} |", flush=True)
    one = statistics.median(speeds["1 thread"])
    for mode in MODES:
        median = statistics.median(speeds[mode])
        print(f"{mode}: median {median:.1f} Mpx/s, x{median / one:.2f} one thread's")


if __name__ == "__main__":
    main()
