"""How fast segtile's host side is: the engine-bound case against decoding the image once.

With a 1x1 convolution the model costs next to nothing, so what is timed is the host side a GPU
would wait on: reading, batching, normalising, weighting, stitching, the argmax, compressing and
writing the labels, and the task overhead. Its yardstick is the least any engine must do with the
same image: decode every block of the GeoTIFF once, on the same number of threads. Both run in
fresh processes, alternating, on the same mosaic (``bench/make_mosaic.py``); the ratio segtile /
decode of the medians is the figure (issue 13's target: within 4).

    python -m bench.host_speed                    # 16000 x 16000, 3 pairs
    python -m bench.host_speed --size 8000 --pairs 2
"""

from __future__ import annotations

import argparse
import shutil
import statistics
from pathlib import Path

from bench.make_mosaic import bench_mosaic
from bench.measure import print_options, run_workload

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16000)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    mosaic = bench_mosaic(args.size)
    labels = OUT / f"host_speed_{args.size}.zarr"
    megapixels = args.size * args.size / 1e6
    decode, engine = [], []
    print("| pair | decode s | decode Mpx/s | segtile s | segtile Mpx/s | ratio |")
    print("|---:|---:|---:|---:|---:|---:|")
    for pair in range(1, args.pairs + 1):
        decoded = run_workload("decode", "--input", str(mosaic)).report["seconds"]
        shutil.rmtree(labels, ignore_errors=True)
        try:
            report = run_workload("segtile", "--input", str(mosaic), "--out", str(labels)).report
            segmented = report["seconds"]
        finally:
            shutil.rmtree(labels, ignore_errors=True)
        decode.append(decoded)
        engine.append(segmented)
        print(f"| {pair} | {decoded:.1f} | {megapixels / decoded:.0f} | {segmented:.1f} | {megapixels / segmented:.1f} "
              f"| {segmented / decoded:.2f} |", flush=True)
    print()
    print_options("segtile", report["options"])
    print(f"median segtile / median decode: {statistics.median(engine) / statistics.median(decode):.2f}")


if __name__ == "__main__":
    main()
