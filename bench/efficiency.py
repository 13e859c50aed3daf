"""Pipeline efficiency on the CPU: how much of segtile's wall time is the model itself.

(a) the model alone: PSPNet-18 over exactly the tiles segtile sends it, in the same batches
    (same count, same shapes), on float32 tensors already in memory, under
    ``torch.inference_mode``, in the memory layout segtile runs it in (channels-last: the
    faster one on this CPU, so the model alone is not handicapped);
(b) end to end: ``segment(path, model, ...).labels.compute()`` (read the GeoTIFF, batch, predict,
    weight, stitch, argmax).

efficiency = (a) / (b): 1.0 means the pipeline adds nothing around the model. Runs alternate
a, b, a, b, ... in one process after one warm-up batch; medians are reported. On a shared machine
wall times drift with other people's load, so two steadier figures are printed beside the wall
ratio: the ratio of process CPU times (what the pipeline adds in work, whatever the load) and
the share of (b)'s wall time spent inside the model's ``forward`` (timed by
:class:`ForwardTimer` during the run itself).

    python -m bench.efficiency            # from the repository root
    python -m bench.efficiency --device cuda --precision fp16 --layers 50 --size 4096 --batch-size 16

On CUDA both sides synchronise the device before reading the clock, the model alone runs under
the same autocast as segtile (one region per batch), its batches already on the device, and the
throughput of each side (Mpx/s of tiles) is printed as well. There the CPU-time ratio means
little (waiting for the device spins on the CPU); read the wall ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch

from bench.make_mosaic import bench_mosaic
from bench.measure import Options, pinned, print_options, segtile_options
from segtile import segment
from segtile.inference.predictor import autocast
from segtile.models import PSPNet
from segtile.tiling.grid import tile_grid


def tile_batches(path: Path, tile_size: int, overlap: int, batch_size: int) -> list[torch.Tensor]:
    """The float32 batches ``(B, bands, T, T)`` segtile feeds the model for ``path``.

    segtile skips tiles with no valid pixel; this benchmark needs every tile to be sent, so the
    two sides run the same work, and it refuses images where that is not so.
    """
    with rasterio.open(path) as dataset:
        pixels = dataset.read()
        valid = dataset.dataset_mask() > 0
    height, width = valid.shape
    if min(height, width) < tile_size:
        raise ValueError(f"{path} is smaller than a tile ({tile_size} px): use a larger --size")
    tiles = []
    for tile in tile_grid(height, width, tile_size, overlap):
        rows = slice(tile.window.row_off, tile.window.row_off + tile_size)
        cols = slice(tile.window.col_off, tile.window.col_off + tile_size)
        if not valid[rows, cols].any():
            raise ValueError(f"tile {tile.index} of {path} holds no valid pixel: pick another image")
        tiles.append(pixels[:, rows, cols])
    stacked = torch.from_numpy(np.stack(tiles)).float()
    return [batch.contiguous(memory_format=torch.channels_last) for batch in torch.split(stacked, batch_size)]


class ForwardTimer(torch.nn.Module):
    """Wraps a network and adds up the wall time of its ``forward`` calls."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synchronise(x.device)  # the batch's upload and normalisation are not the model's time
        start = time.perf_counter()
        out = self.network(x)
        synchronise(x.device)
        self.seconds += time.perf_counter() - start
        return out


def synchronise(device: torch.device) -> None:
    """Wait for the device's queued work, so that the clock measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall and process CPU seconds (all threads) of one run."""

    wall: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed():
    """Yields a :class:`Timing` that is filled in when the block ends."""
    timing = Timing()
    wall, cpu = time.perf_counter(), time.process_time()
    yield timing
    timing.wall, timing.cpu = time.perf_counter() - wall, time.process_time() - cpu


def run_model_alone(model: torch.nn.Module, batches: list[torch.Tensor], precision: str) -> Timing:
    device = batches[0].device
    synchronise(device)
    with timed() as timing, torch.inference_mode():
        for batch in batches:
            with autocast(device, precision):  # one region per batch, as segtile's predictor opens
                model(batch)
        synchronise(device)
    return timing


def run_end_to_end(path: Path, timer: ForwardTimer, args: argparse.Namespace) -> tuple[Timing, float, Options]:
    """Timing of ``segment(...).labels.compute()``, the wall seconds spent in ``forward``
    during it (``segment`` probes a bare module once on a tiny input; that is not counted), and
    the options it ran with."""
    with timed() as timing:
        result = segment(
            str(path), timer, tile_size=args.tile_size, overlap=args.overlap, blend="gaussian",
            batch_size=args.batch_size, device=args.device, precision=args.precision, **pinned(device=args.device),
        )
        timer.seconds = 0.0
        result.labels.compute()
    return timing, timer.seconds, segtile_options(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1536, help="side of the test image (a mosaic crop)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--layers", type=int, default=18, choices=(18, 34, 50, 101, 152), help="PSPNet depth")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--repeats", type=int, default=7, help="a/b pairs")
    args = parser.parse_args()

    path = bench_mosaic(args.size)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = PSPNet(layers=args.layers, classes=args.classes, width=1.0).eval()
    model = model.to(device, memory_format=torch.channels_last)
    batches = [batch.to(device) for batch in tile_batches(path, args.tile_size, args.overlap, args.batch_size)]
    tiles = sum(len(b) for b in batches)
    megapixels = tiles * args.tile_size ** 2 / 1e6
    print(f"{path.name}: {tiles} tiles in {len(batches)} batches of {tuple(batches[0].shape)}, "
          f"PSPNet-{args.layers} on {device} ({args.precision}), torch threads {torch.get_num_threads()}")
    run_model_alone(model, batches[:1], args.precision)  # warm-up: first-call allocations, kernel choice

    timer = ForwardTimer(model).eval()
    wall_ratios, cpu_ratios, forward_shares = [], [], []
    for repeat in range(args.repeats):
        alone = run_model_alone(model, batches, args.precision)
        end_to_end, forward, options = run_end_to_end(path, timer, args)
        wall_ratios.append(alone.wall / end_to_end.wall)
        cpu_ratios.append(alone.cpu / end_to_end.cpu)
        forward_shares.append(forward / end_to_end.wall)
        print(f"pair {repeat + 1}: model alone {alone.wall:.2f} s wall / {alone.cpu:.2f} s CPU "
              f"({megapixels / alone.wall:.1f} Mpx/s); end to end {end_to_end.wall:.2f} s wall / "
              f"{end_to_end.cpu:.2f} s CPU ({megapixels / end_to_end.wall:.1f} Mpx/s), forward {forward:.2f} s; "
              f"efficiency wall {wall_ratios[-1]:.3f}, CPU {cpu_ratios[-1]:.3f}", flush=True)
    print_options("model alone", {"tiles": f"segtile's own, {args.tile_size} px every {args.tile_size - args.overlap}",
                                  "batch": str(args.batch_size), "device": args.device, "precision": args.precision})
    print_options("end to end", options)
    print(f"median over {args.repeats} pairs: efficiency (wall) {statistics.median(wall_ratios):.3f}, "
          f"efficiency (CPU time) {statistics.median(cpu_ratios):.3f}, "
          f"share of end-to-end wall time in forward {statistics.median(forward_shares):.3f}")


if __name__ == "__main__":
    main()
