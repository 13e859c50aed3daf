"""The one normalisation of pixels before a network sees them, for inference and training alike.

A model card says how its network was trained to see pixels: divide by ``scale``, subtract
``mean``, divide by ``std``, per band. Pixels marked invalid (nodata, NaN, outside the tissue) are
then set to 0, the mean of the normalised data: a neutral value that no NaN or sentinel can leak
through into the valid pixels around them. The tiler and ``segtile train`` both call
:func:`normalise_`, so a model is always fed as it was trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segtile.models.card import ModelCard


@dataclass(frozen=True)
class Normalisation:
    """A card's normalisation ``(x / scale - mean) / std`` as one multiply and one add,
    ``x * factor + offset``, with tensors on one device shaped to broadcast over
    ``(N, bands, h, w)``: two passes over the pixels instead of three."""

    factor: torch.Tensor
    offset: torch.Tensor

    @classmethod
    def of(cls, card: ModelCard, device: torch.device | str = "cpu") -> Normalisation:
        shape = (1, card.in_channels, 1, 1)
        mean = torch.tensor(card.mean, dtype=torch.float64).view(shape)
        std = torch.tensor(card.std, dtype=torch.float64).view(shape)
        factor = 1.0 / (card.scale * std)
        return cls(factor.to(device, torch.float32), (-mean / std).to(device, torch.float32))


def normalise_(x: torch.Tensor, normalisation: Normalisation, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Normalise float32 pixels ``x`` ``(N, bands, h, w)`` in place; zero where ``valid``
    (``(N, 1, h, w)`` or ``(N, h, w)``, bool or weights > 0) is false (``None``: all are
    valid). ``x`` may be in the plain layout or channels-last. Returns ``x``."""
    interleaved = bands_innermost(x)
    if interleaved:
        _multiply_add_interleaved_(x.permute(0, 2, 3, 1), normalisation)
    else:
        x.mul_(normalisation.factor).add_(normalisation.offset)
    if valid is not None:
        if valid.ndim == 3:
            valid = valid.unsqueeze(1)
        keep = valid if valid.dtype == torch.bool else valid > 0
        if interleaved:  # the mask broadcast over the bands, innermost in memory
            x.permute(0, 2, 3, 1).masked_fill_(~keep.permute(0, 2, 3, 1), 0.0)
        else:
            x.masked_fill_(~keep, 0.0)
    return x


def bands_innermost(x: torch.Tensor) -> bool:
    """Whether ``x`` ``(N, bands, h, w)`` is channels-last: several bands, innermost in memory."""
    return x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _multiply_add_interleaved_(pixels: torch.Tensor, normalisation: Normalisation) -> None:
    """``pixels`` ``(N, h, w, bands)``, contiguous, times the factor plus the offset, in place.
    Each image row is one run of ``w * bands`` values, against which the per-band values repeated
    ``w`` times broadcast: the same products and sums as band by band, at memory speed (a
    per-band vector broadcast along a 3-value inner axis runs 7 times slower)."""
    n, height, width, bands = pixels.shape
    rows = pixels.view(n * height, width * bands)
    rows.mul_(normalisation.factor.view(bands).repeat(width)).add_(normalisation.offset.view(bands).repeat(width))
