"""The benchmark workloads, one per fresh process (started by ``bench/measure.py``).

    python -m bench.workloads segtile --input bench/out/mosaic_8000.tif --out bench/out/labels.zarr
    python -m bench.workloads monai --input bench/out/mosaic_8000.tif --out bench/out/labels.npy

Each prints one JSON line last: ``seconds`` is the work alone (reading, inference, stitching,
writing), after the imports and the model are ready, so both sides are timed alike;
``rss_before_mib`` is the process's RSS at that point (interpreter, libraries, model). Both use the
same pointwise model, :func:`pointwise_model`, so their labels can be compared pixel by pixel.
"""

from __future__ import annotations

import argparse
import json
import time

import psutil
import torch


def pointwise_model(bands: int = 3, classes: int = 2) -> torch.nn.Module:
    """A 1x1 convolution with fixed (seeded) weights: per-pixel, so tiling cannot change it."""
    torch.manual_seed(0)
    return torch.nn.Conv2d(bands, classes, kernel_size=1).eval()


def segtile_to_zarr(args: argparse.Namespace) -> dict:
    """segtile: read the GeoTIFF tile by tile, predict, stitch, write the labels to Zarr."""
    import dask.array as da

    from segtile import segment

    model = pointwise_model()
    rss_before = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    result = segment(
        args.input, model, tile_size=args.tile_size, overlap=args.overlap, blend="gaussian",
        batch_size=args.batch_size, device="cpu", chunk_size=args.chunk_size,
        stripe_width=args.stripe_width,
    )
    tasks = len(result.labels.__dask_graph__())
    da.to_zarr(result.labels, args.out)
    return {"seconds": time.perf_counter() - start, "tasks": tasks, "shape": list(result.shape),
            "rss_before_mib": rss_before}


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
            inputs, roi_size=(args.tile_size, args.tile_size), sw_batch_size=args.batch_size,
            predictor=model, overlap=args.overlap_fraction, mode="gaussian",
        )
        labels = logits.argmax(dim=1)[0].to(torch.uint8).numpy()
    seconds = time.perf_counter() - start
    if args.out:
        np.save(args.out, labels)
    return {"seconds": seconds, "shape": list(labels.shape), "rss_before_mib": rss_before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=("segtile", "monai"))
    parser.add_argument("--input", required=True, help="GeoTIFF to segment")
    parser.add_argument("--out", help="labels output: a .zarr store (segtile) or a .npy file (monai)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64, help="segtile: overlap in pixels")
    parser.add_argument("--overlap-fraction", type=float, default=0.125, help="monai: overlap as a fraction")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=1024, help="segtile: output chunk side")
    parser.add_argument("--channels-last", action="store_true", help="monai: give it the model in channels-last")
    parser.add_argument("--stripe-width", type=int, default=8192, help="segtile: stripe width (0: whole width)")
    args = parser.parse_args()
    if args.engine == "segtile" and not args.out:
        parser.error("segtile needs --out PATH.zarr")
    report = segtile_to_zarr(args) if args.engine == "segtile" else monai_in_memory(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
