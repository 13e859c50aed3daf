"""Test-time augmentation: the network run on flipped, rotated and rescaled copies of each batch,
its predictions averaged in probability space.

The PSPNet paper reports its best results with a horizontal flip and six scales
(0.5 … 1.75); aerial and pathology images have no "up", so all eight flips and rotations (the
dihedral group D4) are natural there. Each augmented copy's logits are mapped back onto the
tile, turned into probabilities, and averaged; the batch's result is the log of that average,
so the tiler's blending and stitching, and its memory, are the same as without augmentation
(softmax of the stitched log-probabilities gives back averaged probabilities). A network that
sees each pixel alone gives the same labels with or without flips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from segtile.errors import AugmentationError

MODES = ("flip", "d4")
Forward = Callable[[torch.Tensor], torch.Tensor]


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

    def __call__(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        """Log of the mean probabilities of ``forward`` over the augmented copies of ``x``
        ``(N, bands, h, w)``; ``forward(x)`` itself when nothing is asked for."""
        if not self.active:
            return forward(x)
        size = x.shape[-2:]
        total = None
        for scale in self.scales:
            scaled = x if scale == 1.0 else F.interpolate(x, size=self._scaled_size(size, scale), mode="bilinear",
                                                           align_corners=True)
            for transform, inverse in _transforms(self.mode):
                logits = inverse(forward(transform(scaled)))
                if scale != 1.0:
                    logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)
                probabilities = torch.softmax(logits.float(), dim=1)
                total = probabilities if total is None else total.add_(probabilities)
        return torch.log(total.div_(self.copies).clamp_min_(torch.finfo(torch.float32).tiny))

    def _scaled_size(self, size: torch.Size, scale: float) -> tuple[int, int]:
        """``size`` times ``scale``, kept at ``k * alignment + 1`` pixels (at least one step)."""
        step = self.alignment
        return tuple(max(1, round((length - 1) * scale / step)) * step + 1 for length in size)


Transform = Callable[[torch.Tensor], torch.Tensor]


def _transforms(mode: str | None) -> list[tuple[Transform, Transform]]:
    """Pairs (transform of the input, the inverse transform of the output)."""
    identity = (lambda t: t, lambda t: t)
    if mode is None:
        return [identity]
    horizontal = (lambda t: t.flip(-1), lambda t: t.flip(-1))
    if mode == "flip":
        return [identity, horizontal]
    pairs = []
    for turns in range(4):
        pairs.append((_rotation(turns), _rotation(-turns)))
        pairs.append((_then(lambda t: t.flip(-1), _rotation(turns)), _then(_rotation(-turns), lambda t: t.flip(-1))))
    return pairs


def _rotation(turns: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: torch.rot90(t, turns, dims=(-2, -1)) if turns % 4 else t


def _then(first: Callable, second: Callable) -> Callable:
    return lambda t: second(first(t))


NONE = Augmentation()
"""No augmentation: the network runs once on each batch as it is."""
