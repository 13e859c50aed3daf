"""Test-time augmentation: the network run on flipped, rotated and rescaled copies of each batch,
its predictions averaged in probability space.

The PSPNet paper reports its best results with a horizontal flip and six scales
(0.5 … 1.75); aerial and pathology images have no "up", so all eight flips and rotations (the
dihedral group D4) are natural there. Each augmented copy's logits are mapped back onto the
tile, turned into probabilities, and averaged; the batch's result is the log of that average,
so the tiler's blending and stitching, and its memory, are the same as without augmentation
(softmax of the stitched log-probabilities gives back averaged probabilities). A network that
sees each pixel alone gives the same labels with or without flips.

Which copies are asked for is an :class:`~segtile.tiling.augmentation.Augmentation` (options
without torch); this module runs them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from segtile.errors import AugmentationError
from segtile.tiling.augmentation import MODES, NONE, Augmentation, check_augmentation

__all__ = ["MODES", "NONE", "Augmentation", "AugmentationError", "augmented", "check_augmentation"]

Forward = Callable[[torch.Tensor], torch.Tensor]


def augmented(augmentation: Augmentation, forward: Forward, x: torch.Tensor) -> torch.Tensor:
    """Log of the mean probabilities of ``forward`` over the copies of ``x`` ``(N, bands, h, w)``
    that ``augmentation`` asks for; ``forward(x)`` itself when it asks for none."""
    if not augmentation.active:
        return forward(x)
    size = x.shape[-2:]
    total = None
    for scale in augmentation.scales:
        scaled = x if scale == 1.0 else F.interpolate(x, size=augmentation.scaled_size(size, scale), mode="bilinear",
                                                       align_corners=True)
        for transform, inverse in _transforms(augmentation.mode):
            logits = inverse(forward(transform(scaled)))
            if scale != 1.0:
                logits = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=True)
            probabilities = torch.softmax(logits.float(), dim=1)
            total = probabilities if total is None else total.add_(probabilities)
    return torch.log(total.div_(augmentation.copies).clamp_min_(torch.finfo(torch.float32).tiny))


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
