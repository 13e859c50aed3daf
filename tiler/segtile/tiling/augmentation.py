"""Which copies of each batch the network sees: the options of test-time augmentation.

Pure data and arithmetic, like the rest of the tiling: the options travel in
:class:`~segtile.tiling.plan.TilingOptions` and into the run's identity, and the command's parser
reads them, none of which needs torch. Running the network on the copies is
:mod:`segtile.inference.tta`'s job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from segtile.errors import AugmentationError

MODES = ("flip", "d4")
FROM_CARD = "card"
"""The default of ``segment(tta=...)`` and ``--tta``: the augmentation the model card suggests, if any."""


def check_augmentation(mode: str | None, scales: Sequence[float]) -> None:
    """Raise :class:`AugmentationError` for an unknown mode or a scale that is not positive."""
    if mode is not None and mode not in MODES:
        raise AugmentationError(f"unknown test-time augmentation {mode!r}: choose {', '.join(MODES)} or none")
    if not scales or any(not 0 < scale <= 8 for scale in scales):
        raise AugmentationError(f"scales must be positive and at most 8, got {list(scales)}")


@dataclass(frozen=True)
class Augmentation:
    """Which copies of a batch the network sees: ``mode`` (``None``, ``"flip"``, ``"d4"``) at
    each of ``scales``; ``alignment`` keeps rescaled tiles at ``k * alignment + 1`` pixels."""

    mode: str | None = None
    scales: tuple[float, ...] = (1.0,)
    alignment: int = 1

    @property
    def active(self) -> bool:
        return self.mode is not None or self.scales != (1.0,)

    @property
    def copies(self) -> int:
        """How many times the network runs per batch."""
        return {None: 1, "flip": 2, "d4": 8}[self.mode] * len(self.scales)

    def scaled_size(self, size: Sequence[int], scale: float) -> tuple[int, ...]:
        """``size`` times ``scale``, kept at ``k * alignment + 1`` pixels (at least one step)."""
        step = self.alignment
        return tuple(max(1, round((length - 1) * scale / step)) * step + 1 for length in size)


NONE = Augmentation()
"""No augmentation: the network runs once on each batch as it is."""
