"""Helpers shared by the side-by-side benchmarks (``vs_monai.py``, ``vs_tiatoolbox.py``): label
agreement between two label maps, and the results table."""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

NODATA = 255  # segtile's label for pixels it did not label
ROWS_PER_BLOCK = 2048


class LabelArray(Protocol):
    """A 2-D label map read by slices: a numpy array or memmap, a Zarr array."""

    shape: tuple[int, ...]

    def __getitem__(self, key: object) -> np.ndarray: ...


def label_agreement(ours: LabelArray, theirs: LabelArray, nodata: int = NODATA) -> tuple[float, float]:
    """Share of ``ours``'s labelled pixels (not ``nodata``) where both maps agree, and the share of
    ``ours`` that is ``nodata``. Read ``ROWS_PER_BLOCK`` rows at a time, so two maps of a large
    slide are never whole in memory."""
    if tuple(ours.shape) != tuple(theirs.shape):
        raise ValueError(f"label maps differ in shape: {tuple(ours.shape)} and {tuple(theirs.shape)}")
    agree = labelled = 0
    for row in range(0, ours.shape[0], ROWS_PER_BLOCK):
        mine = np.asarray(ours[row : row + ROWS_PER_BLOCK])
        other = np.asarray(theirs[row : row + ROWS_PER_BLOCK])
        valid = mine != nodata
        agree += int(np.count_nonzero((mine == other) & valid))
        labelled += int(np.count_nonzero(valid))
    total = ours.shape[0] * ours.shape[1]
    return agree / max(labelled, 1), 1 - labelled / total


Row = tuple[float, float, float, float]  # work seconds, process wall seconds, peak RSS MiB, RSS after imports MiB


def print_table(rows: dict[str, Row]) -> None:
    """The Markdown results table, one row per engine."""
    print("| engine | work seconds | process wall seconds | peak RSS (MiB) | RSS after imports (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, (work, wall, peak, before) in rows.items():
        print(f"| {name} | {work:.1f} | {wall:.1f} | {peak:.0f} | {before:.0f} |")


def load_line() -> str:
    """The machine's load averages (1, 5, 15 min) and core count, as ``uptime`` shows the load."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"
