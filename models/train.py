"""A small training loop for segmentation networks, over random crops of in-memory arrays.

It is meant for demos, tests and fine-tuning on a few images: images and labels are numpy
arrays held in memory, crops are drawn at random (with flips), the loss is cross-entropy on the
main logits plus ``aux_weight`` times cross-entropy on the auxiliary logits (PSPNet's deep
supervision, 0.4 as in the paper), and the learning rate decays as ``(1 - step / steps) ** 0.9``
(the paper's "poly" schedule) under AdamW.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segtile.errors import SegtileError
from segtile.models.card import ModelCard

POLY_POWER = 0.9


class TrainError(SegtileError, ValueError):
    """The training data or options do not fit together."""


def normalise(pixels: np.ndarray, card: ModelCard | None) -> np.ndarray:
    """Pixels ``(bands, h, w)`` as the network sees them: float32, ``(x / scale - mean) / std``.

    Without a card the pixels are only converted to float32, as a bare module gets them.
    """
    pixels = pixels.astype(np.float32)
    if card is None:
        return pixels
    mean = np.asarray(card.mean, np.float32)[:, None, None]
    std = np.asarray(card.std, np.float32)[:, None, None]
    return (pixels / np.float32(card.scale) - mean) / std


def segmentation_loss(outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                      ignore_index: int = 255, aux_weight: float = 0.4) -> torch.Tensor:
    """Cross-entropy of the main logits plus ``aux_weight`` x that of the auxiliary logits.

    ``outputs`` is ``(main, aux)`` (PSPNet in training mode) or the main logits alone. Each term
    is averaged over the pixels whose label is not ``ignore_index``; a batch without any such
    pixel gives a loss of 0 instead of NaN.
    """
    main, aux = outputs if isinstance(outputs, tuple) else (outputs, None)
    valid = (target != ignore_index).sum().clamp(min=1)
    loss = F.cross_entropy(main, target, ignore_index=ignore_index, reduction="sum") / valid
    if aux is not None:
        aux_loss = F.cross_entropy(aux, target, ignore_index=ignore_index, reduction="sum") / valid
        loss = loss + aux_weight * aux_loss
    return loss


class CropSampler:
    """Random ``tile_size`` crops (and flips) of a few images and their label maps.

    Images smaller than a tile are padded with zeros, their labels with ``ignore_index``. An
    image is chosen with probability proportional to its area, then a crop uniformly in it.
    """

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], tile_size: int,
                 ignore_index: int, seed: int = 0) -> None:
        self.tile_size = tile_size
        self.images = [_pad_to(image, tile_size, 0) for image in images]
        self.labels = [_pad_to(label[None], tile_size, ignore_index)[0] for label in labels]
        areas = np.array([label.size for label in self.labels], dtype=np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def batch(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``size`` crops: pixels ``(size, bands, t, t)`` float32, labels ``(size, t, t)`` int64."""
        crops = [self._crop() for _ in range(size)]
        pixels = torch.from_numpy(np.stack([c[0] for c in crops]))
        labels = torch.from_numpy(np.stack([c[1] for c in crops]).astype(np.int64))
        return pixels, labels

    def _crop(self) -> tuple[np.ndarray, np.ndarray]:
        index = self.rng.choice(len(self.images), p=self.weights)
        image, label = self.images[index], self.labels[index]
        t = self.tile_size
        top = self.rng.integers(0, label.shape[0] - t + 1)
        left = self.rng.integers(0, label.shape[1] - t + 1)
        pixels, target = image[:, top:top + t, left:left + t], label[top:top + t, left:left + t]
        if self.rng.random() < 0.5:
            pixels, target = pixels[:, :, ::-1], target[:, ::-1]
        if self.rng.random() < 0.5:
            pixels, target = pixels[:, ::-1], target[::-1]
        return np.ascontiguousarray(pixels), np.ascontiguousarray(target)


def train(
    model: nn.Module,
    images: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray],
    *,
    epochs: int,
    tile_size: int,
    batch_size: int,
    lr: float,
    ignore_index: int = 255,
    aux_weight: float = 0.4,
    card: ModelCard | None = None,
    steps_per_epoch: int | None = None,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on random crops of ``images`` with their ``labels``.

    Args:
        model: a network mapping ``(N, bands, t, t)`` to logits ``(N, classes, t, t)``, or to
            ``(main, aux)`` in training mode (PSPNet).
        images: one array ``(bands, H, W)`` or a sequence of them, raw pixel values.
        labels: the matching class maps ``(H, W)``, integers; ``ignore_index`` marks pixels
            without a label (nodata).
        epochs: passes; each is ``steps_per_epoch`` optimiser steps.
        tile_size: side of the square training crops.
        batch_size: crops per step, at least 2 (batch norm after the 1x1 pyramid pooling
            needs more than one value per channel).
        lr: initial AdamW learning rate, decayed by the poly schedule to 0.
        card: when given, pixels are normalised with its scale, mean and std, exactly as the
            tiler does at inference; without, they are used as float32.
        steps_per_epoch: default: enough crops to cover the images' total area once.
        seed: seeds the crop sampler and torch, for repeatable runs.
        on_epoch: called after each epoch with its number (from 1) and mean loss.

    Returns:
        the mean loss of each epoch. The model is left in eval mode.
    """
    images, labels = _as_list(images), _as_list(labels)
    _check_inputs(images, labels, epochs, tile_size, batch_size, lr)
    if steps_per_epoch is None:
        area = sum(label.size for label in labels)
        steps_per_epoch = max(1, -(-area // (tile_size * tile_size * batch_size)))
    torch.manual_seed(seed)
    device = torch.device(device)
    sampler = CropSampler([normalise(image, card) for image in images], labels, tile_size,
                          ignore_index, seed)
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: (1.0 - step / total) ** POLY_POWER
    )
    history = []
    for epoch in range(1, epochs + 1):
        losses = []
        for _ in range(steps_per_epoch):
            pixels, target = sampler.batch(batch_size)
            loss = segmentation_loss(model(pixels.to(device)), target.to(device),
                                     ignore_index, aux_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
        history.append(float(np.mean(losses)))
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    model.eval()
    return history


def predict_labels(model: nn.Module, image: np.ndarray, card: ModelCard | None = None,
                   device: str | torch.device = "cpu") -> np.ndarray:
    """Class map ``(H, W)`` of one whole image in one forward pass (for small images and checks)."""
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(normalise(image, card))[None].to(device)
        return model.to(device)(x)[0].argmax(0).cpu().numpy()


def pixel_accuracy(predicted: np.ndarray, labels: np.ndarray, ignore_index: int = 255) -> float:
    """Share of labelled pixels (label != ``ignore_index``) whose prediction equals the label."""
    valid = labels != ignore_index
    if not valid.any():
        raise TrainError("pixel accuracy: no labelled pixel to compare")
    return float(np.mean(predicted[valid] == labels[valid]))


def _as_list(arrays: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    return [arrays] if isinstance(arrays, np.ndarray) else list(arrays)


def _pad_to(array: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad ``(c, h, w)`` at the bottom and right so that ``h, w >= size``."""
    pad_h, pad_w = max(0, size - array.shape[1]), max(0, size - array.shape[2])
    if not pad_h and not pad_w:
        return array
    return np.pad(array, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=value)


def _check_inputs(images: list[np.ndarray], labels: list[np.ndarray], epochs: int,
                  tile_size: int, batch_size: int, lr: float) -> None:
    if not images or len(images) != len(labels):
        raise TrainError(f"need as many label maps as images, got {len(images)} and {len(labels)}")
    for index, (image, label) in enumerate(zip(images, labels)):
        if image.ndim != 3 or label.ndim != 2 or image.shape[1:] != label.shape:
            raise TrainError(
                f"image {index}: pixels {image.shape} and labels {label.shape} must be "
                "(bands, H, W) and (H, W)"
            )
    if epochs < 1 or tile_size < 1 or lr <= 0:
        raise TrainError("epochs and tile_size must be at least 1 and lr positive")
    if batch_size < 2:
        raise TrainError("batch_size must be at least 2: batch norm needs more than one value per channel")
