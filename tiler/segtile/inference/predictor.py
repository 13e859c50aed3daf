"""Running the network: a picklable model spec, and one cached predictor per worker and device.

Dask tasks never carry the network. They carry a :class:`ModelSpec` (a token and either a file
path or, for a module the user handed us, the module as one shared graph key), and each worker
builds the network once, on first use, through :func:`get_predictor`.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch

from segtile.errors import ModelError, one_line
from segtile.inference.devices import check_precision, resolve_device
from segtile.inference.normalise import Normalisation, bands_innermost, normalise_
from segtile.inference.tta import augmented
from segtile.models import ModelCard
from segtile.models.borrowed import copy_on_device, eval_mode, is_on_device
from segtile.tiling.augmentation import NONE as NO_AUGMENTATION
from segtile.tiling.augmentation import Augmentation


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
        """The network: the caller's own module, or one freshly loaded from ``path``."""
        if self.module is not None:
            return self.module
        from segtile.models import load_checkpoint

        return load_checkpoint(self.path).module


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """The autocast region a batch runs in: none for ``fp32``, else ``fp16`` / ``bf16``."""
    if precision == "fp32":
        return nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype)


_BORROWED_LOCK = threading.Lock()  # held while a caller's module runs a batch (see Predictor)


@dataclass(frozen=True)
class BatchResult:
    """What a predictor returns for a batch: numpy arrays, or tensors on its device when asked
    to keep them there.

    Attributes:
        logits: the logits ``(B, h, w, classes)``, multiplied by their weights when ``weighted``
            (0 where the weight is 0).
        weights: the blend weights ``(B, h, w)``, now also 0 where the logits were not finite
            (NaN or infinite: such pixels never reach the stitched sums); ``None`` when every
            logit was finite and the weights given still hold (always given on the device).
        nonfinite: how many pixels with a weight got logits that were not finite.
        weighted: whether ``logits`` carry their weights; float16 logits do not (see
            :func:`for_stitching`), the stitcher weights them as it sums them, in float32.
    """

    logits: np.ndarray | torch.Tensor
    weights: np.ndarray | torch.Tensor | None
    nonfinite: int
    weighted: bool = True


def for_stitching(logits: torch.Tensor, weight: torch.Tensor, precision: str) -> tuple[torch.Tensor, bool]:
    """The float32 ``logits`` ``(B, h, w, classes)`` as a batch hands them to the stitcher, and
    whether they carry their ``weight`` ``(B, h, w, 1)``: multiplied by it in place, or in a
    half precision run cast to float16 unweighted (half the traffic), to be weighted in float32
    as they are summed. Weighting before the cast would lose them: a gaussian blend's corner
    weight (about 1e-7) times a logit falls below float16's smallest value (6e-8), so where only
    tile corners meet every class would sum to 0 and the label tie to class 0. Logits beyond
    float16's range are clamped to it: cast, they would be infinite, and 0 times infinite (a
    pixel without weight) is NaN in the sums."""
    if precision == "fp16":
        limit = torch.finfo(torch.float16).max
        return logits.clamp_(-limit, limit).half(), False
    return logits.mul_(weight), True


class Predictor:
    """A network on one device, ready to turn a batch of raw tiles into weighted logits.

    Only the network's own run is serialised, by a lock: one device runs one batch at a time.
    Preparing a batch (converting, normalising, masking, into the network's layout) and
    weighting its logits happen outside it, each thread in buffers of its own, so the Dask
    threads prepare and stitch while the device computes; that overlap keeps the device busy.
    On the CPU, once a second thread runs batches, those host-side operations run on one torch
    thread each (the Dask threads are the parallelism: torch's own threads on top would each
    contend with the other Dask threads for the same cores), and the network on all of torch's.
    """

    def __init__(self, module: torch.nn.Module, card: ModelCard, device: torch.device,
                 precision: str = "fp32", augmentation: Augmentation = NO_AUGMENTATION,
                 borrowed: bool = False) -> None:
        """``borrowed``: ``module`` is the caller's, to be given back as it was (see
        :mod:`segtile.models.borrowed`); otherwise it is the predictor's own to change."""
        check_precision(precision, device)
        self.augmentation = augmentation
        self.device = device
        self.precision = precision
        self.card = card
        # Channels-last batches wherever the network allows it: oneDNN (CPU) and cuDNN then run
        # their fastest kernels without copying 3-band tiles into 16-channel blocked layouts (that
        # copy made a 1x1 convolution on a (4, 3, 512, 512) batch 15x slower and 120 MB bigger).
        # A network that cannot take them (a 5-D weight, a .view() across channels) is found on
        # its first batch and kept in the plain layout.
        self.memory_format = torch.channels_last
        self._layout_settled = False
        self.borrowed = borrowed and is_on_device(module, device)
        if self.borrowed:
            # The caller's module, where it is: in eval mode batch by batch, its weights in their
            # own layout (the batches' layout is what picks the kernels). One lock for every
            # predictor of a borrowed module, so that no two put one module in eval mode and
            # give its flags back in an interleaved order.
            self.module = module
            self._lock = _BORROWED_LOCK
        else:
            self.module = (copy_on_device(module, device) if borrowed else module.to(device)).eval()
            self._lock = threading.Lock()
            try:
                self.module = self.module.to(memory_format=torch.channels_last)
            except RuntimeError:
                self._use_plain_layout()
        self.normalisation = Normalisation.of(card, device)
        self._buffers = threading.local()
        self._first_thread: int | None = None  # the first thread to run a batch (see _host_threads)
        self._threads_share = False

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        """``array`` as a tensor on the device, in its own layout when that is the plain one or,
        for a batch whose bands are interleaved (a slide's windows), channels-last."""
        if not (array.flags.c_contiguous or (array.ndim == 4 and array.transpose(0, 2, 3, 1).flags.c_contiguous)):
            array = np.ascontiguousarray(array)
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def __call__(self, pixels: np.ndarray, weights: np.ndarray, all_valid: bool = False,
                 on_device: bool = False, seen: np.ndarray | None = None) -> BatchResult:
        """Weighted logits for ``pixels`` ``(B, bands, h, w)`` (any numeric dtype) and blend
        ``weights`` ``(B, h, w)``, 0 on invalid pixels (which the network sees as 0 once
        normalised, whatever they hold: NaN included); ``all_valid`` says the network sees every
        pixel as it is. ``seen`` ``(B, h, w)``, when given, says which pixels the network sees
        as they are instead of the weights: a tile's padding past the image's edge, reflected
        from the image, counts for nothing in the blend but is seen, so that the image's last
        rows are not classified beside a band of zeros.
        ``on_device`` keeps the weighted logits and the weights on the device, as tensors of
        their own, for a stitcher that sums them there (:mod:`segtile.engine.graph`).

        The weighted logits come back pixel-major, ``(B, h, w, classes)``: the layout a
        channels-last network gives, so no copy reorders them, and the one the stitcher sums.
        With test-time augmentation they are the log of the averaged probabilities. A half
        precision run brings them back in float16 (half the traffic, no less precise than the
        network's own fp16 output) and unweighted: the stitcher weights them in float32
        (:func:`for_stitching`).

        Raises:
            ModelError: the network failed, or its output is not ``(B, classes, h, w)`` logits
                for the card's classes.
        """
        network_threads = torch.get_num_threads()
        with torch.inference_mode(), self._host_threads():
            weight = self._to_device(weights).unsqueeze(-1)  # (B, h, w, 1)
            mask = None if all_valid else weight[..., 0] if seen is None else self._to_device(seen)
            x = self._prepared(self._to_device(pixels), mask)
            with (self._lock, eval_mode(self.module) if self.borrowed else nullcontext(),
                  _intra_op_threads(network_threads)):
                logits = augmented(self.augmentation, self._network, x)
            logits = logits.permute(0, 2, 3, 1)
            if logits.dtype != torch.float32:
                logits = logits.float()
            # never a view of the input buffer, which this thread's next batch overwrites
            if logits.untyped_storage().data_ptr() == x.untyped_storage().data_ptr():
                logits = logits.clone()
            logits = logits.contiguous()
            nonfinite, weights = 0, None
            if not torch.isfinite(logits.sum()):  # one fast reduction: a NaN or inf anywhere shows
                finite = torch.isfinite(logits).all(dim=-1, keepdim=True)
                nonfinite = int(((weight > 0) & ~finite).sum())
                weight = weight * finite
                logits.masked_fill_(~finite, 0.0)
                weights = weight[..., 0].cpu().numpy()
            logits, weighted = for_stitching(logits, weight, self.precision)
            if on_device:  # the weights' own copy: on the CPU they share this thread's buffer
                return BatchResult(logits, weight[..., 0].clone(), nonfinite, weighted)
            return BatchResult(logits.cpu().numpy(), weights, nonfinite, weighted)

    def _host_threads(self) -> AbstractContextManager:
        """The torch threads of this thread's host-side operations: one on the CPU once another
        thread has run a batch too (in a paired run, two threads gave 1.74 times one's throughput so,
        against 1.57 with torch's threads on top of Dask's: docs/performance.md), else torch's own count."""
        if self._first_thread is None:
            self._first_thread = threading.get_ident()
        elif not self._threads_share and threading.get_ident() != self._first_thread:
            self._threads_share = True
        return _intra_op_threads(1) if self._threads_share and self.device.type == "cpu" else nullcontext()

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        """The network's logits for ``x``, checked; on the first batch that fails in
        channels-last, the layout falls back to plain and the batch runs again. Called under
        the lock."""
        x = x.contiguous(memory_format=self.memory_format)
        try:
            with autocast(self.device, self.precision):
                logits = self.module(x)
        except torch.cuda.OutOfMemoryError:  # a RuntimeError too, but not one the layout explains
            raise ModelError(
                f"out of memory on {self.device} running {_batch_text(x)}: lower --batch-size or --tile-size "
                "(Python: batch_size=, tile_size=)"
            ) from None
        except RuntimeError as exc:
            if self._layout_settled or self.memory_format != torch.channels_last:
                raise ModelError(f"the model failed on {_batch_text(x)}: {one_line(exc)}") from exc
            self._use_plain_layout()
            return self._network(x)
        except Exception as exc:  # a network may raise anything (TypeError, AssertionError...)
            raise ModelError(f"the model failed on {_batch_text(x)}: {one_line(exc)}") from exc
        self._layout_settled = True
        self._check_output(logits, x)
        return logits

    def _check_output(self, logits: object, x: torch.Tensor) -> None:
        """Raise :class:`ModelError` unless ``logits`` are ``(B, classes, h, w)`` for input ``x``."""
        classes = self.card.num_classes
        batch, _, height, width = x.shape
        if not isinstance(logits, torch.Tensor):
            hint = " (a PSPNet in training mode returns two: put it in eval mode)" if isinstance(logits, tuple) else ""
            raise ModelError(f"the model returned a {type(logits).__name__}, not a tensor of logits{hint}")
        if logits.ndim == 4 and logits.shape[0] == batch and logits.shape[1] != classes:
            raise ModelError(
                f"the model gives {logits.shape[1]} classes but its card names {classes} "
                f"({', '.join(self.card.classes)}): the card does not belong to this network"
            )
        if tuple(logits.shape) != (batch, classes, height, width):
            raise ModelError(
                f"the model returned an array of shape {tuple(logits.shape)} for {_batch_text(x)}; "
                f"segtile needs logits of shape ({batch}, {classes}, {height}, {width})"
            )

    def _use_plain_layout(self) -> None:
        self.memory_format = torch.contiguous_format
        if not self.borrowed:
            self.module = self.module.to(memory_format=torch.contiguous_format)

    def _prepared(self, pixels: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
        """``pixels`` as the network takes them: float32, normalised by the card (0 where the
        weight is 0), in its layout. Normalising happens in the plain layout, where broadcasting
        a value per band runs over whole planes (several times faster than channels-last with
        its 3-value inner rows); for a channels-last network one tile at a time, each then
        copied into its place in the batch, so the plain buffer is one tile, not a batch. Pixels
        that come channels-last (bands interleaved, as slides store them) go to a channels-last
        network in one conversion and are normalised there, row by row (:func:`normalise_`). The
        buffers are this thread's, reused from batch to batch."""
        if self.memory_format == torch.channels_last and bands_innermost(pixels):
            x = self._buffer("input", pixels.shape, self.memory_format)
            return normalise_(x.copy_(pixels), self.normalisation, weight)
        if self.memory_format == torch.contiguous_format:
            plain = self._buffer("plain", pixels.shape, torch.contiguous_format)
            return normalise_(plain.copy_(pixels), self.normalisation, weight)
        x = self._buffer("input", pixels.shape, self.memory_format)
        plain = self._buffer("plain", (1, *pixels.shape[1:]), torch.contiguous_format)
        for b in range(len(pixels)):
            tile_weight = None if weight is None else weight[b:b + 1]
            x[b:b + 1].copy_(normalise_(plain.copy_(pixels[b:b + 1]), self.normalisation, tile_weight))
        return x

    def _buffer(self, name: str, shape: torch.Size, memory_format: torch.memory_format) -> torch.Tensor:
        """This thread's float32 buffer ``name`` of at least ``shape`` (a batch may be shorter)."""
        buffer = getattr(self._buffers, name, None)
        if (buffer is None or buffer.shape[1:] != shape[1:] or len(buffer) < shape[0]
                or not buffer.is_contiguous(memory_format=memory_format)):
            buffer = torch.empty(shape, dtype=torch.float32, device=self.device, memory_format=memory_format)
            setattr(self._buffers, name, buffer)
        return buffer[:shape[0]]


@contextmanager
def _intra_op_threads(count: int) -> Iterator[None]:
    """Torch's intra-op threads at ``count`` for this thread's operations in the block, then back.
    (OpenMP keeps the count per thread; torch also keeps it as the default for new threads,
    which is therefore ``count`` only for the block's time.)"""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batch_text(x: torch.Tensor) -> str:
    batch, bands, height, width = x.shape
    return f"a batch of {batch} tile(s) of {height}x{width} px with {bands} band(s)"


_PREDICTORS: OrderedDict[tuple, Predictor] = OrderedDict()
_PREDICTORS_LOCK = threading.Lock()
CACHED_PREDICTORS = 2
"""Predictors kept per process, most recently used first: each holds a network and its input
buffer, and every ``segment`` call makes a new spec, so an unbounded cache would grow with each
call in a notebook or a loop over images."""


def get_predictor(spec: ModelSpec, device: str, precision: str,
                  augmentation: Augmentation = NO_AUGMENTATION) -> Predictor:
    """The predictor for ``spec`` on ``device``, built on first use in this process."""
    resolved = resolve_device(device)
    key = (spec.token, str(resolved), precision, augmentation)
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS[key] = Predictor(spec.build(), spec.card, resolved, precision, augmentation,
                                         borrowed=spec.module is not None)
            while len(_PREDICTORS) > CACHED_PREDICTORS:
                _PREDICTORS.popitem(last=False)
        _PREDICTORS.move_to_end(key)
        return _PREDICTORS[key]
