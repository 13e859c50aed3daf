"""Do cores add up? The engine-bound case on one core, on two threads, on two worker processes,
and, for the machine's own ceiling, as two independent jobs side by side.

The workload is ``bench/host_speed.py``'s (a 1x1 convolution from a GeoTIFF mosaic to Zarr
labels, written by ``result.write``), each run a fresh process pinned to the CPUs it may use
(its affinity, which Dask's and torch's thread counts follow):

* ``1 thread``: one CPU;
* ``2 threads``: two CPUs, one process (the engine's default);
* ``2 processes``: two CPUs as a local cluster of two workers of one thread each (``--workers 2``);
* ``2 jobs side by side``: two ``1 thread`` processes at once, each on a CPU of its own and writing
  its own store, the whole image each: throughput is both images' pixels over the time from the
  first start to the last end. Nothing is shared between them but the machine, so this is what
  two cores give where the engine itself costs nothing to share them: the ceiling the engine's
  own two threads are measured against.

The modes alternate over ``--rounds`` rounds; each line gives the load average when it started (on
a shared machine the figures are only as good as the quiet they ran in), and the last lines the
median throughput of each mode over one thread's.

    python -m bench.host_scaling                  # 8000 x 8000, 3 rounds
    python -m bench.host_scaling --size 4000 --rounds 2
    python -m bench.host_scaling --work-store     # what the segtile command computes into
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.make_mosaic import bench_mosaic
from bench.measure import print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"
# mode: (the CPUs of each job, extra workload arguments)
MODES = {
    "1 thread": ([[0]], []),
    "2 threads": ([[0, 1]], []),
    "2 processes": ([[0, 1]], ["--workers", "2"]),
    "2 jobs side by side": ([[0], [1]], []),
}


def run_jobs(mosaic: Path, labels: Path, jobs: list[list[int]], extra: list[str],
             allowed: list[int], store: list[str]) -> tuple[float, dict]:
    """Run one workload per entry of ``jobs`` at once, each pinned to those positions of the CPUs
    this process may use (``allowed``); the seconds from the first one's start to the last one's
    end, and the first one's options. ``store``: the workload's arguments saying what it writes."""
    def job(index: int) -> dict:
        out = labels.with_name(f"{labels.stem}_{index}.zarr")
        shutil.rmtree(out, ignore_errors=True)
        try:
            return run_workload("segtile", "--input", str(mosaic), "--out", str(out), *store, *extra,
                                cpus=[allowed[i] for i in jobs[index]]).report
        finally:
            shutil.rmtree(out, ignore_errors=True)

    with ThreadPoolExecutor(len(jobs)) as pool:
        reports = list(pool.map(job, range(len(jobs))))
    if len(reports) == 1:
        return reports[0]["seconds"], reports[0]["options"]
    spanned = max(r["ended_at"] for r in reports) - min(r["started_at"] for r in reports)
    return spanned, reports[0]["options"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work-store", action="store_true",
                        help="fill the segtile command's durable work store rather than result.write to Zarr")
    args = parser.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise SystemExit(f"needs 2 CPUs, this process may use {len(allowed)}")
    mosaic = bench_mosaic(args.size)
    labels = OUT / f"host_scaling_{args.size}.zarr"
    megapixels = args.size * args.size / 1e6
    speeds: dict[str, list[float]] = {mode: [] for mode in MODES}
    store = ["--work-store"] if args.work_store else ["--writer"]
    target = "the command's work store" if args.work_store else "result.write to Zarr"
    print(f"{args.size} x {args.size}, 1x1 convolution, {target}")
    print("| round | mode | load (1 min) | seconds | Mpx/s |")
    print("|---:|---|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        for mode, (jobs, extra) in MODES.items():
            load = os.getloadavg()[0]
            seconds, options = run_jobs(mosaic, labels, jobs, extra, allowed, store)
            if round_ == 1:
                print_options(f"segtile, {mode}", options)
            speed = len(jobs) * megapixels / seconds
            speeds[mode].append(speed)
            print(f"| {round_} | {mode} | {load:.1f} | {seconds:.1f} | {speed:.1f} |", flush=True)
    one = statistics.median(speeds["1 thread"])
    for mode in MODES:
        median = statistics.median(speeds[mode])
        print(f"{mode}: median {median:.1f} Mpx/s, x{median / one:.2f} one thread's")


if __name__ == "__main__":
    main()
