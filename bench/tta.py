"""What test-time augmentation costs: ``--tta none``, ``flip`` and ``d4``, and a two-scale run,
against no augmentation, on the same image in one process.

Each mode runs ``segment(path, model, tta=..., scales=...).labels.compute()`` with PSPNet-18 on
the CPU; the modes take turns (none, flip, d4, scales, none, ...) so that drifting load on a
shared machine spreads over all of them, and the median wall time of each is divided by that of
``none``. Flip runs the network twice per tile, d4 eight times: the ratios say how much of that
multiple reaches the whole job (reading, weighting and stitching are paid once).

    python -m bench.tta                  # 1024 x 1024 mosaic crop, 3 rounds (about 3 minutes)
    python -m bench.tta --size 1536 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from bench.make_mosaic import make_mosaic
from bench.measure import Options, pinned, print_options, segtile_options
from segtile import segment
from segtile.models import PSPNet

OUT = Path(__file__).resolve().parent / "out"
MODES = {"none": ("none", (1.0,)), "flip": ("flip", (1.0,)), "d4": ("d4", (1.0,)),
         "scales 0.75 1": ("none", (0.75, 1.0))}


def run(path: Path, model: torch.nn.Module, tta: str, scales: tuple[float, ...]) -> tuple[float, Options]:
    """Wall seconds of one whole job, graph building included, and the options it ran with."""
    start = time.perf_counter()
    result = segment(str(path), model, tile_size=512, overlap=64, batch_size=4, device="cpu", scales=scales,
                     **{**pinned(), "tta": tta})
    result.labels.compute()
    return time.perf_counter() - start, segtile_options(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="side of the test image (a mosaic crop)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = OUT / f"mosaic_{args.size}.tif"
    if not path.exists():
        make_mosaic(args.size, path)
    torch.manual_seed(0)
    model = PSPNet(layers=18, classes=6, width=1.0).eval()
    run(path, model, "none", (1.0,))  # warm-up: first-call allocations, kernel choice
    seconds: dict[str, list[float]] = {name: [] for name in MODES}
    options: dict[str, Options] = {}
    for _ in range(args.rounds):
        for name, (tta, scales) in MODES.items():
            taken, options[name] = run(path, model, tta, scales)
            seconds[name].append(taken)
    base = statistics.median(seconds["none"])
    megapixels = args.size ** 2 / 1e6
    print(f"{path.name}, PSPNet-18 (6 classes) on the CPU, torch threads {torch.get_num_threads()}, "
          f"median of {args.rounds} rounds")
    print("| mode | s | Mpx/s | time / none |")
    print("|---|---:|---:|---:|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {megapixels / median:.2f} | {median / base:.2f} |")
    print()
    for name, ran_with in options.items():
        print_options(name, ran_with)


if __name__ == "__main__":
    main()
