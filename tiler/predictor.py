"""Running the network: a picklable model spec, and one cached predictor per worker and device.

Dask tasks never carry the network. They carry a :class:`ModelSpec` (a token and either a file
path or, for a module the user handed us, the module as one shared graph key), and each worker
builds the network once, on first use, through :func:`get_predictor`.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from segtile.errors import SegtileError
from segtile.models import ModelCard

PRECISIONS = ("fp32", "fp16", "bf16")


class DeviceError(SegtileError, ValueError):
    """The device or precision asked for cannot be used here."""


@dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to build the network: small, picklable, hashable by ``token``.

    Exactly one of ``path`` (a segtile checkpoint or TorchScript file, loaded on the worker) and
    ``module`` (an ``nn.Module`` given by the caller) is set.
    """

    card: ModelCard
    path: str | None = None
    module: torch.nn.Module | None = field(default=None, compare=False, repr=False)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def build(self) -> torch.nn.Module:
        if self.module is not None:
            return self.module
        from segtile.models import load_checkpoint

        return load_checkpoint(self.path).module


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda[:i]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but CUDA is not available here")
    if resolved.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {device!r}: use auto, cpu or cuda[:i]")
    return resolved


def check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and device.type != "cuda":
        raise DeviceError("fp16 needs a CUDA device; use bf16 or fp32 on the CPU")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast region a batch runs in: none for ``fp32``, else ``fp16`` / ``bf16``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


class Predictor:
    """A network on one device, ready to turn a batch of raw tiles into weighted logits.

    Calls are serialised by a lock: one device runs one batch at a time, while the other Dask
    threads read and stitch; that overlap is what keeps the device busy.
    """

    def __init__(self, module: torch.nn.Module, card: ModelCard, device: torch.device,
                 precision: str = "fp32") -> None:
        check_precision(precision, device)
        self.device = device
        self.precision = precision
        self.module = module.to(device).eval()
        # Channels-last wherever the network allows it: oneDNN (CPU) and cuDNN then run their
        # fastest kernels without copying 3-band tiles into 16-channel blocked layouts (that copy
        # made a 1x1 convolution on a (4, 3, 512, 512) batch 15x slower and 120 MB bigger). A
        # network that cannot take it (a 5-D weight, a .view() across channels) is found on its
        # first batch and kept in the plain layout.
        self.memory_format = torch.channels_last
        self._layout_settled = False
        try:
            self.module = self.module.to(memory_format=torch.channels_last)
        except RuntimeError:
            self._use_plain_layout()
        bands = card.in_channels
        self.scale = card.scale
        self.mean = torch.tensor(card.mean, dtype=torch.float32, device=device).view(1, bands, 1, 1)
        self.std = torch.tensor(card.std, dtype=torch.float32, device=device).view(1, bands, 1, 1)
        self._lock = threading.Lock()
        self._input: torch.Tensor | None = None

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def __call__(self, pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weighted logits ``(B, classes, h, w)`` float32 for ``pixels`` ``(B, bands, h, w)``
        (any numeric dtype) and blend ``weights`` ``(B, h, w)``."""
        with self._lock, torch.inference_mode():
            pixels = self._to_device(pixels)
            x, logits = self._forward(pixels)
            # Back to a plain (B, classes, h, w) float32 layout, which stitching slices row by row,
            # and never a view of the input buffer, which the next batch overwrites.
            logits = logits.to(torch.float32, memory_format=torch.contiguous_format)
            if logits.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                logits = logits.clone()
            logits.mul_(self._to_device(weights).unsqueeze(1))
            return logits.cpu().numpy()

    def _forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised input and the network's logits; on the first batch that fails in
        channels-last, the layout falls back to plain and the batch runs again."""
        x = self._normalised(pixels)
        try:
            with autocast(self.device, self.precision):
                logits = self.module(x)
        except torch.cuda.OutOfMemoryError:  # a RuntimeError too, but not one the layout explains
            raise
        except RuntimeError:
            if self._layout_settled or self.memory_format != torch.channels_last:
                raise
            self._use_plain_layout()
            return self._forward(pixels)
        self._layout_settled = True
        return x, logits

    def _use_plain_layout(self) -> None:
        self.memory_format = torch.contiguous_format
        self.module = self.module.to(memory_format=torch.contiguous_format)
        self._input = None

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """``pixels`` as float32 in the network's layout, normalised by the card, in an input
        buffer reused from batch to batch (one large allocation per predictor, not one per
        batch). Called under the lock."""
        if self._input is None or self._input.shape[1:] != pixels.shape[1:] or len(self._input) < len(pixels):
            self._input = torch.empty(pixels.shape, dtype=torch.float32, device=self.device,
                                      memory_format=self.memory_format)
        x = self._input[:len(pixels)]
        x.copy_(pixels)
        return x.div_(self.scale).sub_(self.mean).div_(self.std)


_PREDICTORS: OrderedDict[tuple[str, str, str], Predictor] = OrderedDict()
_PREDICTORS_LOCK = threading.Lock()
CACHED_PREDICTORS = 2
"""Predictors kept per process, most recently used first: each holds a network and its input
buffer, and every ``segment`` call makes a new spec, so an unbounded cache would grow with each
call in a notebook or a loop over images."""


def get_predictor(spec: ModelSpec, device: str, precision: str) -> Predictor:
    """The predictor for ``spec`` on ``device``, built on first use in this process."""
    resolved = resolve_device(device)
    key = (spec.token, str(resolved), precision)
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(spec.build(), spec.card, resolved, precision)
            while len(_PREDICTORS) > CACHED_PREDICTORS:
                _PREDICTORS.popitem(last=False)
        _PREDICTORS.move_to_end(key)
        return _PREDICTORS[key]
