"""Training augmentations: flips and 90° rotations of a window, a rescaling, and a light colour jitter.

Flips and rotations move pixels, validity and labels together (a square window stays square),
before normalisation; they commute with it. The colour jitter acts on the normalised pixels of
each window, per band: ``x * gain + shift`` with ``gain`` in ``1 ± JITTER`` and ``shift`` in
``± JITTER`` (in standard deviations of the band), on valid pixels only, so invalid pixels stay
at the 0 the normalisation gives them, as at inference.

The rescaling (``--scale-augment Z``) shows the network pixels of other sizes than the images':
a window of ``f * t`` pixels, ``f`` drawn log-uniformly in ``[1/Z, Z]``, is resampled to the
``t`` pixels the network takes (pixels bilinear with antialiasing, as a coarser sensor averages
them; validity and labels by nearest neighbour), so an image of ``r`` m pixels trains the network
on pixels of ``r / Z`` to ``r * Z`` m.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from segtile.training.sampling import Sample

JITTER = 0.1


def flip_and_rotate(sample: Sample, rng: np.random.Generator) -> Sample:
    """``sample`` turned by a random multiple of 90° and flipped left-right half the time:
    one of the 8 symmetries of the square, each as likely."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))

    def move(array: np.ndarray) -> np.ndarray:
        array = np.rot90(array, turns, axes=(-2, -1))
        return np.ascontiguousarray(array[..., ::-1] if flip else array)

    return Sample(move(sample.pixels), move(sample.valid), move(sample.labels))


def zoom_factor(largest: float, rng: np.random.Generator) -> float:
    """A factor drawn log-uniformly in ``[1 / largest, largest]`` (as likely to halve as to double)."""
    return math.exp(rng.uniform(-math.log(largest), math.log(largest)))


def rescale(sample: Sample, size: int) -> Sample:
    """``sample`` resampled to ``size`` x ``size`` pixels: pixels bilinearly (antialiased when
    shrinking), validity and labels by nearest neighbour."""
    if sample.labels.shape == (size, size):
        return sample
    pixels = F.interpolate(torch.from_numpy(sample.pixels)[None], size=(size, size), mode="bilinear",
                           antialias=True, align_corners=False)[0].numpy()

    def nearest(array: np.ndarray) -> np.ndarray:
        resized = F.interpolate(torch.from_numpy(array.astype(np.float32))[None, None], size=(size, size),
                                mode="nearest-exact")
        return resized[0, 0].numpy().astype(array.dtype)

    return Sample(np.ascontiguousarray(pixels), nearest(sample.valid), nearest(sample.labels))


def jitter_parameters(batch: int, bands: int, rng: np.random.Generator) -> np.ndarray:
    """Per window and band, ``(gain, shift)``: float32 ``(batch, bands, 2)``."""
    gain = rng.uniform(1 - JITTER, 1 + JITTER, (batch, bands))
    shift = rng.uniform(-JITTER, JITTER, (batch, bands))
    return np.stack([gain, shift], axis=-1).astype(np.float32)


def colour_jitter_(x: torch.Tensor, valid: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Apply :func:`jitter_parameters` to normalised pixels ``x`` ``(N, bands, h, w)`` in place,
    where ``valid`` ``(N, h, w)`` is true. Returns ``x``."""
    gain, shift = parameters[..., 0, None, None], parameters[..., 1, None, None]
    jittered = x * gain + shift
    return x.copy_(torch.where(valid.unsqueeze(1), jittered, x))
