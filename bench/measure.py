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
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


Options = dict[str, str]  # what one side of a benchmark ran with, option name -> value as printed


def pinned(*, slide: bool = False, tissue: bool = False, device: str = "cpu", stitch_on_host: bool = False
           ) -> dict[str, Any]:
    """The ``segtile.segment`` options a benchmark pins rather than leaves to defaults that have
    changed beneath benchmarks before: the image's own grid (never the one the model card
    suggests), tissue detection only when ``tissue`` (else every pixel, whatever a colour slide's
    default), no test-time augmentation (whatever the card suggests), and the tiles stitched on
    the device exactly when the model runs on one (``stitch_on_host``: in host memory even then)."""
    return {"mpp" if slide else "resolution": "native", "tissue": tissue, "tta": "none",
            "stitch_on_device": not stitch_on_host and device != "cpu"}


def segtile_options(result: Any, memory_limit: int | str | None = None) -> Options:
    """What a ``segtile.segment`` result runs with, as resolved (the model card's suggestions and
    the memory plan applied): the pixels processed (the grid, whether tissue or an area is masked),
    the tiling, test-time augmentation, device and where the tiles are stitched. These are the
    defaults that have changed beneath benchmarks before, so every benchmark prints them
    (:func:`print_options`); ``memory_limit`` is the budget passed to ``segment`` (``None``: its default)."""
    from segtile.engine.graph import stitches_on_device
    from segtile.tiling.budget import DEFAULT_LIMIT

    options, georef = result.options, result.georef
    height, width = result.shape
    budget = f"{memory_limit} (given)" if memory_limit is not None else f"{DEFAULT_LIMIT / 2**20:.0f} MiB (default)"
    return {
        "grid": f"{width} x {height} px{_pixel_size(georef)}",
        "pixels": _pixels_processed(result.source),
        "tile": str(options.tile_size), "overlap": str(options.overlap), "blend": options.blend,
        "batch": str(options.batch_size), "chunk": str(options.chunk_size),
        "stripe": str(options.stripe_width or "whole width"),
        "tta": options.augmentation.mode or "none",
        "scales": ",".join(f"{scale:g}" for scale in options.augmentation.scales),
        "device": options.device, "precision": options.precision,
        "stitching": "on the device" if stitches_on_device(options) else "in host memory",
        "memory budget": budget,
    }


def _pixel_size(georef: Any) -> str:
    """`` at S µm/px`` (a slide), `` at S m/px``-like (a raster, in its CRS's units), or nothing."""
    if georef.mpp is not None:
        return f" at {georef.mpp:g} µm/px"
    if georef.transform is not None and georef.crs is not None:
        return f" at {abs(georef.transform.a):g} x {abs(georef.transform.e):g} CRS units/px"
    return ""


def _pixels_processed(source: Any) -> str:
    """Which pixels of the grid the model runs on: all, or those a tissue or area mask keeps."""
    from segtile.sources.masked import MaskedSource
    from segtile.sources.tissue import TissueMask

    masks = []
    while isinstance(source, MaskedSource):
        mask = source.mask
        masks.append(f"tissue only ({mask.fraction:.1%} of the slide)" if isinstance(mask, TissueMask)
                     else "inside the area of interest")
        source = source.inner
    return " and ".join(reversed(masks)) or "all (no mask)"


def cli_options(argv: list[str]) -> Options:
    """What ``segtile segment ARGV...`` runs with (:func:`segtile_options`), found the way the
    command finds it (its parser, its model choice, its ``segment`` settings) without running it;
    for a command of several inputs, what its first one runs with."""
    from segtile import segment
    from segtile.cli.command import build_parser
    from segtile.cli.segment_run import segment_settings
    from segtile.models.builtin import choose_model

    args = build_parser().parse_args(["segment", *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the command says its notes when it runs
        result = segment(args.input[0], choose_model(args.model).path, **segment_settings(args))
    return segtile_options(result, args.memory_limit)


def print_options(side: str, options: Options) -> None:
    """One line: the options ``side`` (an engine, a mode of a benchmark) ran with."""
    print(f"{side} ran with: " + "; ".join(f"{name} {value}" for name, value in options.items()), flush=True)


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


def run_workload(*args: str, env: dict[str, str] | None = None, interval: float = 0.5,
                 cpus: list[int] | None = None) -> Measured:
    """Run ``python -m bench.workloads ARGS...`` from the repository root; return its JSON
    report (its last stdout line), its peak RSS in MiB and its RSS trace.

    Relative paths in ``args`` are relative to the repository root; ``env`` adds environment
    variables for the child (``GDAL_CACHEMAX``, say); ``cpus`` pins the child to those CPUs
    (``taskset``; Dask's and torch's thread counts follow its affinity). Raises ``RuntimeError``
    if the child fails."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "bench.workloads", *args]
    if cpus is not None:
        command = ["taskset", "--cpu-list", ",".join(map(str, cpus)), *command]
    child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, **(env or {})})
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
