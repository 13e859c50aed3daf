"""What a network's memory layout costs on the CPU, by thread count: plain or channels-last, oneDNN
on or off, for narrow networks (a few channels, the engine-bound benchmark's 1x1 convolution) and
a small 3x3 one, on a batch of 4 tiles of 512 px. segtile runs every network channels-last
(``tiler/segtile/inference/predictor.py``); this shows where that costs and where it pays, in one process, the
configurations interleaved within each round.

    python -m bench.layouts              # torch threads 1 and 2, 3 rounds
    python -m bench.layouts --threads 1 2 4 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

NETWORKS = {
    "1x1 conv, 3 -> 2": lambda: torch.nn.Conv2d(3, 2, 1),
    "1x1 conv, 8 -> 2": lambda: torch.nn.Conv2d(8, 2, 1),
    "1x1 convs, 3 -> 8 -> 2": lambda: torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)),
    "3x3 convs, 3 -> 8 -> 2": lambda: torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 3, padding=1)),
}
CONFIGURATIONS = [(layout, onednn) for layout in ("plain", "channels-last") for onednn in (True, False)]


def milliseconds(network: torch.nn.Module, batch: torch.Tensor, onednn: bool, repeats: int = 5) -> float:
    """Mean time of one forward pass, after two warm-up passes (oneDNN builds its kernels then)."""
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=onednn):
        for _ in range(2):
            network(batch)
        start = time.perf_counter()
        for _ in range(repeats):
            network(batch)
    return (time.perf_counter() - start) / repeats * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*TF32.*")  # a oneDNN notice about Intel GPUs
    torch.manual_seed(0)
    print(f"torch {torch.__version__}; median ms per batch (4, C, 512, 512) over {args.rounds} rounds")
    print("| network | torch threads | " + " | ".join(
        f"{layout}, oneDNN {'on' if onednn else 'off'}" for layout, onednn in CONFIGURATIONS) + " |")
    print("|---|---:|" + "---:|" * len(CONFIGURATIONS))
    for name, build in NETWORKS.items():
        network = build().eval()
        channels = next(p for p in network.parameters() if p.ndim == 4).shape[1]
        plain_batch = torch.randn(4, channels, 512, 512)
        for threads in args.threads:
            torch.set_num_threads(threads)
            times: dict[tuple[str, bool], list[float]] = {configuration: [] for configuration in CONFIGURATIONS}
            for _ in range(args.rounds):
                for layout, onednn in CONFIGURATIONS:
                    memory_format = torch.channels_last if layout == "channels-last" else torch.contiguous_format
                    network = network.to(memory_format=memory_format)
                    batch = plain_batch.contiguous(memory_format=memory_format)
                    times[layout, onednn].append(milliseconds(network, batch, onednn))
            cells = " | ".join(f"{statistics.median(times[c]):.1f}" for c in CONFIGURATIONS)
            print(f"| {name} | {threads} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
