"""Where the engine-bound case spends its time: each stage's calls timed and summed over the Dask
threads, in one process (the workload of ``bench/host_speed.py``: a 1x1 convolution, GeoTIFF to
Zarr labels).

The stages are the engine's own functions, wrapped with a timer for the run; nested stages are
shown indented under the stage that calls them and counted in it; "other tasks" are the rest of
the time Dask's threads spent in tasks (writing the Zarr chunks), "no task" the time they had none
(building the graph, the scheduler's turns). Beside each stage's wall time is the CPU time of the
threads that ran it; the rest they spent off a CPU (waiting for the GIL, a lock, a free CPU, or
another thread's work such as Zarr's event loop), and the headline gives the CPU time the process
left unused on its cores. The first run warms the process (oneDNN kernels,
GDAL handles); the second is reported, with its minor page faults, system time and involuntary
context switches (``getrusage``).

    python -m bench.host_profile                  # the 8000 x 8000 mosaic
    python -m bench.host_profile --size 4000
    python -m bench.host_profile --threads 1      # each stage's cost with no other thread about

With ``--threads 1`` Dask runs one thread and torch one: the stages' times are then their CPU
costs, free of the contention of two threads for two cores (but a 1x1 convolution then takes
oneDNN's slow single-thread channels-last kernel: see ``bench/layouts.py``).
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import time
from pathlib import Path

import dask
import dask.array as da
import torch
from dask.diagnostics import Profiler

from bench.make_mosaic import bench_mosaic
from bench.measure import pinned, print_options, segtile_options
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


def instrument(totals: collections.Counter, cpu: collections.Counter) -> None:
    """Wrap each stage so that its calls add their wall time to ``totals`` and the CPU time of
    the thread that made them to ``cpu`` (the difference is time off a CPU: waiting for the GIL,
    a lock, a CPU, or another thread's work, such as Zarr's event loop)."""
    from segtile.engine import graph as engine
    from segtile.inference import predictor
    from segtile.sources import raster

    owners = {"engine": engine, "Predictor": predictor.Predictor, "RasterSource": raster.RasterSource}
    for owner, name, _, _ in STAGES:
        target = owners[owner]
        original = getattr(target, name)

        def timed(*args, _original=original, _name=name, **kwargs):
            start, start_cpu = time.perf_counter(), time.thread_time()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_name] += time.perf_counter() - start
                cpu[_name] += time.thread_time() - start_cpu

        setattr(target, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="Dask threads, and torch threads when 1 (default: one per core)")
    args = parser.parse_args()
    if args.threads == 1:
        torch.set_num_threads(1)
    mosaic = bench_mosaic(args.size)
    from segtile import segment

    totals: collections.Counter = collections.Counter()
    on_cpu: collections.Counter = collections.Counter()
    instrument(totals, on_cpu)
    model, labels = pointwise_model(), OUT / f"host_profile_{args.size}.zarr"
    threads = args.threads
    for _ in range(2):
        totals.clear()
        on_cpu.clear()
        shutil.rmtree(labels, ignore_errors=True)
        start, cpu, usage = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF)
        result = segment(str(mosaic), model, tile_size=512, overlap=64, blend="gaussian", device="cpu", **pinned())
        with dask.config.set(num_workers=threads), Profiler() as tasks:
            da.to_zarr(result.labels, str(labels))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        after = resource.getrusage(resource.RUSAGE_SELF)
    shutil.rmtree(labels, ignore_errors=True)
    print_options("segtile", segtile_options(result))
    thread_seconds = wall * threads
    in_tasks = sum(task.end_time - task.start_time for task in tasks.results)
    print(f"{args.size} x {args.size}: {wall:.2f} s on {threads} threads ({thread_seconds:.2f} thread-s), "
          f"process CPU {cpu:.2f} s (system {after.ru_stime - usage.ru_stime:.2f}; {thread_seconds - cpu:.2f} core-s "
          f"unused); Dask's threads in tasks "
          f"{in_tasks / thread_seconds:.0%} of the time; {after.ru_minflt - usage.ru_minflt} minor page faults, "
          f"{after.ru_nivcsw - usage.ru_nivcsw} involuntary context switches; load {os.getloadavg()[0]:.1f}")
    print("| stage | thread-s | share | of which on a CPU | off a CPU |\n|---|---:|---:|---:|---:|")
    for _, name, label, depth in STAGES:
        print(f"| {'&nbsp;&nbsp;' * depth}{label} | {totals[name]:.2f} | {totals[name] / thread_seconds:.0%} "
              f"| {on_cpu[name]:.2f} | {totals[name] - on_cpu[name]:.2f} |")
    other_tasks = in_tasks - totals["run_batch"] - totals["stitch_chunk"]
    idle = thread_seconds - in_tasks
    print(f"| other tasks: Zarr writes, markers | {other_tasks:.2f} | {other_tasks / thread_seconds:.0%} | | |")
    print(f"| no task: building the graph, scheduling | {idle:.2f} | {idle / thread_seconds:.0%} | | |")


if __name__ == "__main__":
    main()
