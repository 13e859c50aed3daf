"""What a finer output stride costs: the demo models' PSPNet-18 at 1/8 width, at output stride 8, 4 and 2.

``water_rgbn_psp18`` (the default for red, green, blue and near-infrared images) runs at output
stride 2, for ponds a few pixels wide; the others at PSPNet's 8. This measures what that costs
where it matters, segtile's whole run (read, tile, network, stitch) of one image, with the
demo cards' tiling (129 px tiles, 17 px overlap) on this machine's CPU threads. The weights are
random (the time does not depend on them); the image is the bundled Landsat 7 scene, its four
bands repeated to ``--size`` pixels square. Each stride runs ``--rounds`` times, alternating; the
last line gives each stride's best time over stride 8's.

    python -m bench.output_stride                 # 2048 x 2048, 3 rounds
    python -m bench.output_stride --size 1024 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from segtile import segment
from segtile.models import LoadedModel, ModelCard, PSPNet

SCENE = Path(__file__).resolve().parent.parent / "examples" / "data" / "gsl_landsat7_rgbn.tif"
STRIDES = (8, 4, 2)


def model(stride: int) -> LoadedModel:
    """PSPNet-18 at 1/8 width on four bands, at ``stride``, with the demo cards' tiling."""
    torch.manual_seed(0)
    network = PSPNet(layers=18, classes=2, width=0.125, in_channels=4, output_stride=stride).eval()
    card = ModelCard(classes=("water", "land"), in_channels=4, scale=255.0, tile_size=129, overlap=17,
                     alignment=stride)
    return LoadedModel(network, card)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with rasterio.open(SCENE) as scene:
        pixels = scene.read()
    reps = (-(-args.size // pixels.shape[1]), -(-args.size // pixels.shape[2]))
    image = np.tile(pixels, (1, *reps))[:, :args.size, :args.size].copy()
    models = {stride: model(stride) for stride in STRIDES}
    best: dict[int, float] = {}
    print(f"{args.size} x {args.size}, 4 bands, PSPNet-18 width 0.125, tiles 129 / 17, "
          f"{len(os.sched_getaffinity(0))} CPUs, load {os.getloadavg()[0]:.2f}")
    print("| round | output stride | seconds | Mpx/s |")
    print("|---:|---:|---:|---:|")
    for round_ in range(1, args.rounds + 1):
        for stride, loaded in models.items():
            started = time.perf_counter()
            segment(image, loaded, device="cpu").labels.compute()
            seconds = time.perf_counter() - started
            best[stride] = min(best.get(stride, seconds), seconds)
            print(f"| {round_} | {stride} | {seconds:.2f} | {args.size ** 2 / 1e6 / seconds:.2f} |", flush=True)
    print("best time over stride 8's: " + ", ".join(f"stride {s}: {best[s] / best[8]:.2f}" for s in STRIDES))


if __name__ == "__main__":
    main()
