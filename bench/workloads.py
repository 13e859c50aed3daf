"""The benchmark workloads, one per fresh process (started by ``bench/measure.py``).

    python -m bench.workloads segtile --input bench/out/mosaic_8000.tif --out bench/out/labels.zarr
    python -m bench.workloads monai --input bench/out/mosaic_8000.tif --out bench/out/labels.npy
    python -m bench.workloads segtile --slide --input bench/out/slide_4000.tif --out bench/out/labels.zarr
    python -m bench.workloads tiatoolbox --input bench/out/slide_4000.tif --out bench/out/tiatoolbox
    python -m bench.workloads tissue --input bench/out/flat_slide_14000.ome.tif

Each prints one JSON line last: ``seconds`` is the work alone (reading, inference, stitching,
writing), after the imports and the model are ready, so both sides are timed alike;
``rss_before_mib`` is the process's RSS at that point (interpreter, libraries, model). Both use the
same pointwise model, :func:`pointwise_model`, so their labels can be compared pixel by pixel.
The ``tiatoolbox`` workload needs TIAToolbox, installed in the benchmark's own venv
(``bench/README.md``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import torch

from bench.measure import Options, add_model_arguments, pinned, segtile_options

if TYPE_CHECKING:
    from segtile.result import Segmentation


def pointwise_model(bands: int = 3, classes: int = 2) -> torch.nn.Module:
    """A 1x1 convolution with fixed (seeded) weights: per-pixel, so tiling cannot change it."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(bands, classes, kernel_size=1).eval()


def segtile_model(name: str, classes: int) -> torch.nn.Module:
    """The model a ``segtile`` workload runs: the pointwise one, or a PSPNet-50 (seeded random
    weights: its speed and memory are what is measured, not its labels)."""
    if name == "pointwise":
        return pointwise_model(classes=classes)
    from segtile.models.pspnet import PSPNet

    torch.manual_seed(0)
    return PSPNet(layers=50, classes=classes).eval()


def open_slide(path: str) -> object:
    """``path`` opened with segtile's slide reader (tifffile, pyramid and µm/px), which a generic
    pyramidal TIFF does not get from ``segment(path)``: that reads it with GDAL as a raster."""
    from segtile.sources.slide import SlideSource

    return SlideSource(path)


def segtile_to_zarr(args: argparse.Namespace) -> dict:
    """segtile: read the image tile by tile, predict, stitch, write the labels to Zarr."""
    import importlib
    from contextlib import nullcontext

    import dask.array as da

    from segtile import segment
    from segtile.engine.cluster import local_cluster

    model = segtile_model(args.model, args.classes)
    rss_before = psutil.Process().memory_info().rss / 2**20
    start, started_at = time.perf_counter(), time.time()
    source = open_slide(args.input) if args.slide else args.input
    sizes = {name: getattr(args, name) for name in ("batch_size", "chunk_size", "stripe_width", "memory_limit")
             if getattr(args, name) is not None}
    with local_cluster(workers=args.workers) if args.workers else nullcontext() as client:
        if args.workers:  # the cluster's start and its workers' imports are not the engine's work
            client.run(importlib.import_module, "segtile.engine.graph")
            rss_before, start = psutil.Process().memory_info().rss / 2**20, time.perf_counter()
            started_at = time.time()
        result = segment(source, model, tile_size=args.tile_size, overlap=args.overlap, blend="gaussian",
                         device=args.device, precision=args.precision, **sizes,
                         **pinned(slide=args.slide, tissue=args.tissue, device=args.device,
                                  stitch_on_host=args.stitch_on_host))
        tasks = len(result.labels.__dask_graph__())
        with result.progress(enabled=False) as tally:  # counts the tiles run, shows nothing
            if args.work_store:
                fill_work_store(result, args.out)
            elif args.writer or args.workers:
                result.write(args.out)  # segtile's own writer: Zarr with georeference and card
            else:
                da.to_zarr(result.labels, args.out)
    report = {"seconds": time.perf_counter() - start, "started_at": started_at, "ended_at": time.time(),
              "tasks": tasks, "shape": list(result.shape),
              "rss_before_mib": rss_before, "options": segtile_options(result, args.memory_limit),
              "tiles_run": tally.run}
    if torch.cuda.is_available() and args.device != "cpu":
        report["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def fill_work_store(result: Segmentation, folder: str) -> None:
    """What the ``segtile`` command computes before it writes any output: the labels, chunk by
    chunk, into its durable work store (each chunk and its marker flushed to the disk)."""
    from segtile.store.workstore import WorkStore
    from segtile.writers.zarr_store import regular_chunks

    layers = result.layers()
    labels = regular_chunks(layers.labels)
    work = WorkStore.create(folder, labels, layers.nodata, layers.card.num_classes, None,
                            identity={"bench": "work store"})
    work.fill({"labels": labels}, column_groups=layers.column_groups)


def tissue_detection(args: argparse.Namespace) -> dict:
    """segtile's tissue detection alone, on a slide opened with its slide reader."""
    from segtile.sources.tissue import detect_tissue

    rss_before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    slide = open_slide(args.input)
    found = detect_tissue(slide, slide)
    return {"seconds": time.perf_counter() - start, "fraction": found.fraction,
            "overview": list(found.tissue.shape), "rss_before_mib": rss_before}


def monai_in_memory(args: argparse.Namespace) -> dict:
    """MONAI: read the whole image, ``sliding_window_inference`` (gaussian), argmax."""
    import numpy as np
    import rasterio
    from monai.inferers import sliding_window_inference

    model = pointwise_model()
    if args.channels_last:  # the layout segtile runs every model in
        model = model.to(memory_format=torch.channels_last)
    rss_before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    with rasterio.open(args.input) as dataset:
        pixels = dataset.read()
    inputs = torch.from_numpy(pixels).float().unsqueeze(0)
    del pixels
    with torch.inference_mode():
        logits = sliding_window_inference(
            inputs, roi_size=(args.tile_size, args.tile_size), sw_batch_size=args.batch_size or 4,
            predictor=model, overlap=args.overlap_fraction, mode="gaussian",
        )
        labels = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    seconds = time.perf_counter() - start
    if args.out:
        np.save(args.out, labels)
    options = {"grid": f"{labels.shape[1]} x {labels.shape[0]} px (read whole)", "pixels": "all (no mask)",
               "roi": str(args.tile_size), "overlap": f"{args.overlap_fraction:g} of the roi", "mode": "gaussian",
               "sw_batch_size": str(args.batch_size or 4), "tta": "none", "device": "cpu",
               "model layout": "channels-last" if args.channels_last else "plain"}
    return {"seconds": seconds, "shape": list(labels.shape), "rss_before_mib": rss_before, "options": options}


def tiatoolbox_to_zarr(args: argparse.Namespace) -> dict:
    """TIAToolbox: ``SemanticSegmentor`` over the slide at its baseline resolution (the whole slide,
    or the patches on the mask image ``--mask``: its ``masks=`` argument), patches of ``tile_size``
    every ``tile_size - overlap`` pixels, overlaps averaged, labels (argmax; ``NODATA`` where no
    patch ran) written to ``OUT/<slide name>.zarr`` under the key ``predictions``."""
    from tiatoolbox.models.engine.io_config import IOSegmentorConfig
    from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor

    from bench.tiatoolbox_model import PointwiseTIAModel

    stride = args.tile_size - args.overlap
    ioconfig = IOSegmentorConfig(
        input_resolutions=[{"units": "baseline", "resolution": 1.0}],
        output_resolutions=[{"units": "baseline", "resolution": 1.0}],
        patch_input_shape=(args.tile_size, args.tile_size),
        patch_output_shape=(args.tile_size, args.tile_size),
        stride_shape=(stride, stride),
    )
    segmentor = SemanticSegmentor(model=PointwiseTIAModel(), batch_size=args.batch_size or 8, device="cpu",
                                  verbose=False)
    spilling = {"memory_threshold": args.memory_threshold} if args.memory_threshold is not None else {}
    masks = {"masks": [Path(args.mask)]} if args.mask else {}
    rss_before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    outputs = segmentor.run(
        [Path(args.input)], patch_mode=False, ioconfig=ioconfig, save_dir=args.out, overwrite=True,
        output_type="zarr", auto_get_mask=False, **masks, **spilling,
    )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "labels": str(next(iter(outputs.values()))), "rss_before_mib": rss_before,
            "options": tiatoolbox_options(args, stride), "tiles_run": len(segmentor.dataloader.dataset)}


def tiatoolbox_options(args: argparse.Namespace, stride: int) -> Options:
    """What the ``tiatoolbox`` workload ran with, named as :func:`bench.measure.segtile_options` names segtile's."""
    return {"grid": "level 0 (baseline resolution 1.0)",
            "pixels": f"the patches on the mask {Path(args.mask).name}" if args.mask else "all (no mask)",
            "patch": str(args.tile_size), "stride": str(stride), "merge": "probabilities averaged",
            "batch": str(args.batch_size or 8), "tta": "none", "device": "cpu",
            "memory_threshold": f"{args.memory_threshold} %" if args.memory_threshold is not None else "80 % (default)"}


def decode_every_block(args: argparse.Namespace) -> dict:
    """Decode every block of the GeoTIFF once, on as many threads as segtile uses (one dataset
    handle per thread): the floor of any engine that reads the whole image."""
    import os
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import rasterio

    local = threading.local()

    def read(window) -> int:
        if not hasattr(local, "dataset"):
            local.dataset = rasterio.open(args.input)
        return local.dataset.read(window=window).nbytes

    rss_before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    with rasterio.open(args.input) as dataset:
        windows = [window for _, window in dataset.block_windows(1)]
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        decoded = sum(pool.map(read, windows))
    return {"seconds": time.perf_counter() - start, "bytes": decoded, "rss_before_mib": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("segtile", "monai", "tiatoolbox", "decode", "tissue"))
    parser.add_argument("--input", required=True, help="GeoTIFF or slide to segment")
    parser.add_argument("--out", help="labels output: a .zarr store (segtile), a .npy file (monai), "
                        "a folder (tiatoolbox)")
    parser.add_argument("--slide", action="store_true", help="segtile: open the input with its slide reader")
    parser.add_argument("--tissue", action="store_true",
                        help="segtile: process the tissue only (default: every pixel, tissue=False)")
    parser.add_argument("--mask", help="tiatoolbox: a mask image of the slide; only the patches on it run")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64, help="segtile: overlap in pixels")
    parser.add_argument("--overlap-fraction", type=float, default=0.125, help="monai: overlap as a fraction")
    parser.add_argument("--batch-size", type=int, help="tiles per batch (segtile default: from its memory budget)")
    parser.add_argument("--classes", type=int, default=2, help="classes of the model")
    add_model_arguments(parser)
    parser.add_argument("--memory-limit", help="segtile: the engine's memory budget (e.g. 1.5G)")
    parser.add_argument("--chunk-size", type=int, help="segtile: output chunk side (default: from its budget)")
    parser.add_argument("--channels-last", action="store_true", help="monai: give it the model in channels-last")
    parser.add_argument("--writer", action="store_true",
                        help="segtile: write with result.write(out) rather than dask.array.to_zarr")
    parser.add_argument("--work-store", action="store_true",
                        help="segtile: fill the command's durable work store at --out (a folder) instead")
    parser.add_argument("--workers", type=int, help="segtile: on a local cluster of this many worker processes "
                        "(sharing the CPUs; written with result.write)")
    parser.add_argument("--stripe-width", type=int,
                        help="segtile: stripe width (0: whole width; default: from its budget)")
    parser.add_argument("--memory-threshold", type=int, help="tiatoolbox: RAM use (%%) past which it spills "
                        "its merge canvas to Zarr (its default: 80)")
    args = parser.parse_args()
    if args.engine in ("segtile", "tiatoolbox") and not args.out:
        parser.error(f"{args.engine} needs --out PATH")
    workloads = {"segtile": segtile_to_zarr, "monai": monai_in_memory, "tiatoolbox": tiatoolbox_to_zarr,
                 "decode": decode_every_block, "tissue": tissue_detection}
    print(json.dumps(workloads[args.engine](args)))


if __name__ == "__main__":
    main()
