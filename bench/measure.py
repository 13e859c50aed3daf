"""Run one benchmark workload in a fresh Python process and measure it from outside.

The peak resident set size comes from the kernel: ``os.wait4`` returns the resource usage of that
one child (``ru_maxrss``, KiB on Linux), so nothing the parent or earlier children did leaks into
it. A sampling thread also records the child's RSS every ``interval`` seconds (psutil), which
shows *when* memory grows, not only how high it went.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options choosing the ``segtile`` workload's model and device, for the workload itself
    and for the scripts that run it (passed on by :func:`model_arguments`)."""
    parser.add_argument("--model", choices=("pointwise", "pspnet50"), default="pointwise",
                        help="segtile: the 1x1 convolution, or a PSPNet-50 with random weights (for a GPU)")
    parser.add_argument("--device", default="cpu", help="segtile: cpu, cuda or cuda:i")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                        help="segtile: fp32, fp16 (CUDA) or bf16")
    parser.add_argument("--stitch-on-host", action="store_true",
                        help="segtile: stitch in host memory even when the model runs on a GPU")


def check_model_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse in one line, before any run, a device or precision this machine cannot use."""
    from segtile.inference.devices import DeviceError, check_device

    try:
        check_device(args.device, args.precision)
    except DeviceError as error:
        parser.error(str(error))


def model_arguments(args: argparse.Namespace) -> list[str]:
    """The options of :func:`add_model_arguments` in ``args``, as a workload's command line."""
    return ["--model", args.model, "--device", args.device, "--precision", args.precision] + (
        ["--stitch-on-host"] if args.stitch_on_host else [])


@dataclass
class Measured:
    """What one child run reported, and what the parent saw of it."""

    report: dict
    peak_rss_mib: float
    wall_seconds: float
    trace: list[tuple[float, float]] = field(default_factory=list)


def _sample_rss(pid: int, interval: float, trace: list[tuple[float, float]], stop: threading.Event) -> None:
    start = time.perf_counter()
    try:
        process = psutil.Process(pid)
        while not stop.wait(interval):
            trace.append((time.perf_counter() - start, process.memory_info().rss / 2**20))
    except psutil.Error:  # the child has exited between two samples
        return


def run_workload(*args: str, env: dict[str, str] | None = None, interval: float = 0.5) -> Measured:
    """Run ``python -m bench.workloads ARGS...`` from the repository root; return its JSON
    report (its last stdout line), its peak RSS in MiB and its RSS trace.

    Relative paths in ``args`` are relative to the repository root; ``env`` adds environment
    variables for the child (``GDAL_CACHEMAX``, say). Raises ``RuntimeError`` if
    the child fails."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.workloads", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})},
    )
    trace: list[tuple[float, float]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(child.pid, interval, trace, stop), daemon=True)
    sampler.start()
    output = child.stdout.read()
    child.stdout.close()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"workload {' '.join(args)} failed with exit code {child.returncode}")
    report = json.loads(output.strip().splitlines()[-1])
    return Measured(report, usage.ru_maxrss / 1024, wall, trace)
