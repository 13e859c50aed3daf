"""Run one benchmark workload in a fresh Python process and measure it from outside.

The peak resident set size comes from the kernel: ``os.wait4`` returns the resource usage of that
one child (``ru_maxrss``, KiB on Linux), so nothing the parent or earlier children did leaks into
it. A sampling thread also records the child's RSS every ``interval`` seconds (psutil), which
shows *when* memory grows, not only how high it went.
"""

from __future__ import annotations

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
