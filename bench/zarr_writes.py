"""Writing label chunks to Zarr: Zarr's own check for chunks of nothing but the fill value, on its
one event-loop thread, against segtile's (``SparseChunks``), made in the writing threads.

Zarr 3 leaves out a chunk that equals its fill value (``write_empty_chunks=False``, its default)
by comparing the whole chunk with it on the thread that runs its event loop, one chunk after
another whatever the number of threads writing. ``segtile.writers.blocks.SparseChunks`` makes
that comparison in the Dask thread that hands the chunk over, and creates the arrays with
``write_empty_chunks=True``. Each way writes the same ``--chunks`` x ``--chunks`` chunks of 1024²
labels (blobs of two classes, and one chunk of nodata) from 1 and from 2 threads, the best of
``--rounds``, and checks that the stores read back equal.

    python -m bench.zarr_writes                   # 8 x 8 chunks (64 Mpx), 3 rounds
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from segtile.writers.blocks import WRITE_EVERY_CHUNK, SparseChunks

SIDE = 1024
NODATA = 255


def label_chunks(count: int) -> list[np.ndarray]:
    """``count`` chunks of labels: blobs of 16 px of classes 0 and 1; the first is nodata."""
    rng = np.random.default_rng(0)
    chunks = [np.kron((rng.random((SIDE // 16, SIDE // 16)) > 0.5).astype(np.uint8), np.ones((16, 16), np.uint8))
              for _ in range(count)]
    chunks[0][:] = NODATA
    return chunks


def write(path: Path, chunks: list[np.ndarray], per_side: int, threads: int, segtiles: bool) -> float:
    """Seconds to write ``chunks`` into a new array at ``path`` from ``threads`` threads."""
    shutil.rmtree(path, ignore_errors=True)
    array = zarr.create_array(str(path), shape=(SIDE * per_side,) * 2, chunks=(SIDE, SIDE), dtype="u1",
                              fill_value=NODATA, config=WRITE_EVERY_CHUNK if segtiles else None)
    target = SparseChunks(array) if segtiles else array
    regions = [(slice(i * SIDE, (i + 1) * SIDE), slice(j * SIDE, (j + 1) * SIDE))
               for i in range(per_side) for j in range(per_side)]

    def put(k: int) -> None:
        target[regions[k]] = chunks[k]

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, range(len(regions))))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=8, help="chunks per side")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    chunks = label_chunks(args.chunks ** 2)
    print(f"{args.chunks ** 2} chunks of {SIDE}² uint8 labels, {len(os.sched_getaffinity(0))} CPUs, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| empty-chunk check | threads | best seconds | Mpx/s |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        paths = {segtiles: Path(folder) / f"{'segtile' if segtiles else 'zarr'}.zarr" for segtiles in (False, True)}
        for segtiles, path in paths.items():
            for threads in (1, 2):
                best = min(write(path, chunks, args.chunks, threads, segtiles) for _ in range(args.rounds))
                print(f"| {'segtile, in the writing threads' if segtiles else 'Zarr, in its event loop'} | "
                      f"{threads} | {best:.3f} | {args.chunks ** 2 * SIDE ** 2 / 1e6 / best:.0f} |", flush=True)
        stored = [zarr.open_array(str(path), mode="r") for path in paths.values()]
        assert np.array_equal(stored[0][:], stored[1][:])
        assert stored[0].nchunks_initialized == stored[1].nchunks_initialized


if __name__ == "__main__":
    main()
