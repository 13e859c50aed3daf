"""Helpers shared by the side-by-side benchmarks (``vs_monai.py``, ``vs_tiatoolbox.py``): label
agreement between two label maps, and the results table."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

NODATA = 255  # segtile's label for pixels it did not label
ROWS_PER_BLOCK = 2048


class LabelArray(Protocol):
    """A 2-D label map read by slices: a numpy array or memmap, a Zarr array."""

    shape: tuple[int, ...]

    def __getitem__(self, key: object) -> np.ndarray: ...


@dataclass(frozen=True)
class Agreement:
    """How two label maps of one image compare, on the pixels both labelled.

    Attributes:
        agree: share of the compared pixels (those both labelled) where the labels are equal.
        ours, theirs: share of the image each map labelled (not nodata).
        compared: share of the image both labelled: the pixels ``agree`` is taken over.
    """

    agree: float
    ours: float
    theirs: float
    compared: float

    def describe(self, other: str) -> str:
        """One line: the agreement and over which share of the image it was taken."""
        return (f"labels agree on {self.agree:.4%} of the pixels compared, those both labelled: "
                f"{self.compared:.2%} of the slide (segtile labelled {self.ours:.2%}, {other} {self.theirs:.2%})")


def compare_labels(ours: LabelArray, theirs: LabelArray, nodata: int = NODATA) -> Agreement:
    """:class:`Agreement` of two label maps, each ``nodata`` where it labelled nothing. Read
    ``ROWS_PER_BLOCK`` rows at a time, so two maps of a large slide are never whole in memory."""
    if tuple(ours.shape) != tuple(theirs.shape):
        raise ValueError(f"label maps differ in shape: {tuple(ours.shape)} and {tuple(theirs.shape)}")
    agree = labelled_ours = labelled_theirs = compared = 0
    for row in range(0, ours.shape[0], ROWS_PER_BLOCK):
        mine = np.asarray(ours[row : row + ROWS_PER_BLOCK])
        other = np.asarray(theirs[row : row + ROWS_PER_BLOCK])
        both = (mine != nodata) & (other != nodata)
        agree += int(np.count_nonzero((mine == other) & both))
        labelled_ours += int(np.count_nonzero(mine != nodata))
        labelled_theirs += int(np.count_nonzero(other != nodata))
        compared += int(np.count_nonzero(both))
    total = ours.shape[0] * ours.shape[1]
    return Agreement(agree / max(compared, 1), labelled_ours / total, labelled_theirs / total, compared / total)


def label_agreement(ours: LabelArray, theirs: LabelArray, nodata: int = NODATA) -> tuple[float, float]:
    """Share of the pixels both maps labelled where they agree, and the share of ``ours`` that is
    ``nodata`` (:func:`compare_labels`, in short)."""
    agreement = compare_labels(ours, theirs, nodata)
    return agreement.agree, 1 - agreement.ours


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
