"""The training loop of ``segtile train``: PSPNet on windows of images of any size.

As in the PSPNet paper and its reference implementation (hszhao/semseg):

* loss: cross-entropy of the main logits + 0.4 x cross-entropy of the auxiliary logits, over
  labelled pixels (255 is ignored);
* SGD with momentum 0.9 and weight decay 1e-4; the pyramid pooling module and both heads learn
  10 times faster than the backbone (the reference's ``base_lr * 10`` groups);
* the "poly" schedule: at step ``s`` of ``S``, ``lr = base_lr * (1 - s / S) ** 0.9``.

Windows come from :class:`~segtile.training.sampling.TrainingData`; they are rescaled (with
``scale_augment`` above 1), flipped, turned by multiples of 90° and lightly colour-jittered
(:mod:`segtile.training.augment`), and normalised by :func:`segtile.inference.normalise.normalise_`,
the function the tiler feeds the network with at inference.
After each epoch the held-out windows are scored (mIoU, :mod:`segtile.training.metrics`), and
``on_epoch`` gets the :class:`TrainingState` a run resumes from: the optimiser's state, the
step, and the random state (the windows of step ``s`` are drawn from ``(seed, s)``; the torch
generator, which drives dropout, is saved), so a resumed run continues the uninterrupted one.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from segtile.engine.progress import Progress
from segtile.errors import TrainError
from segtile.inference.normalise import Normalisation, normalise_
from segtile.models.card import ModelCard
from segtile.models.pspnet import PSPNet
from segtile.sources.labels import IGNORE
from segtile.training.augment import colour_jitter_, flip_and_rotate, jitter_parameters, rescale, zoom_factor
from segtile.training.metrics import confusion_matrix, scores
from segtile.training.sampling import Sample, TrainingData

POLY_POWER = 0.9
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
AUX_WEIGHT = 0.4
HEAD_LR_FACTOR = 10.0
_BACKBONE = ("layer0", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class TrainOptions:
    """How to train. ``steps_per_epoch=None``: as many steps as it takes to draw about one
    window per training block (the labelled training area, once)."""

    epochs: int = 20
    tile_size: int = 256
    batch_size: int = 8
    lr: float = 0.01
    val_fraction: float = 0.1
    steps_per_epoch: int | None = None
    seed: int = 0
    augment: bool = True
    scale_augment: float = 1.0
    """Largest zoom of the rescaling augmentation (:func:`~segtile.training.augment.zoom_factor`); 1: none."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.tile_size < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise TrainError("epochs, tile size and steps per epoch must be at least 1")
        if self.batch_size < 2:
            raise TrainError("batch size must be at least 2: batch norm needs more than one value per channel")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise TrainError(f"learning rate must be a positive number, not {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise TrainError(f"validation fraction must lie in [0, 1), not {self.val_fraction}")
        if not (math.isfinite(self.scale_augment) and self.scale_augment >= 1):
            raise TrainError(f"the scale augmentation's zoom must be a number of at least 1, not {self.scale_augment}")


@dataclass(frozen=True)
class EpochResult:
    """One epoch: its number (from 1), mean training loss, validation mIoU (``None`` without a
    validation split, NaN when no held-out pixel was labelled), and the learning rate at its end."""

    epoch: int
    loss: float
    val_miou: float | None
    lr: float


@dataclass
class TrainingState:
    """What a run resumes from (stored as a checkpoint's ``training`` entry; plain values and
    tensors only, so ``torch.load(weights_only=True)`` reads it)."""

    step: int
    steps_per_epoch: int
    options: dict[str, Any]
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return self.step // self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "epoch": self.epoch}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        names = cls.__dataclass_fields__
        missing = [name for name in names if name not in data]
        if missing:
            raise TrainError(f"the checkpoint's training state lacks {', '.join(missing)}")
        return cls(**{name: data[name] for name in names})


@dataclass(frozen=True)
class Batch:
    """Raw pixels ``(B, bands, t, t)`` float32, validity ``(B, t, t)``, labels ``(B, t, t)``
    int64, and the colour jitter ``(B, bands, 2)`` (``None``: none)."""

    pixels: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    jitter: np.ndarray | None


def segmentation_loss(outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], target: torch.Tensor,
                      ignore_index: int = IGNORE, aux_weight: float = AUX_WEIGHT) -> torch.Tensor:
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


def poly_lr(base_lr: float, step: int, total: int) -> float:
    """The paper's poly schedule: ``base_lr * (1 - step / total) ** 0.9``."""
    return base_lr * (1.0 - step / total) ** POLY_POWER


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.SGD:
    """SGD (momentum 0.9, weight decay 1e-4); a PSPNet's pyramid pooling and heads in a second
    group at 10 x ``lr``. Each group keeps its ``lr_factor``, the schedule's multiplier."""
    if isinstance(model, PSPNet):
        named = list(model.named_parameters())
        backbone = [p for name, p in named if name.startswith(_BACKBONE)]
        heads = [p for name, p in named if not name.startswith(_BACKBONE)]
        groups = [{"params": backbone, "lr_factor": 1.0}, {"params": heads, "lr_factor": HEAD_LR_FACTOR}]
    else:
        groups = [{"params": list(model.parameters()), "lr_factor": 1.0}]
    for group in groups:
        group["lr"] = lr * group["lr_factor"]
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def default_steps_per_epoch(data: TrainingData, batch_size: int) -> int:
    """About one window per training block per epoch."""
    return max(1, math.ceil(len(data.train_blocks) / batch_size))


def network_input(pixels: np.ndarray, valid: np.ndarray, normalisation: Normalisation, device: torch.device,
                  jitter: np.ndarray | None = None) -> torch.Tensor:
    """The tensor the network trains on: raw ``pixels`` normalised by the tiler's own
    :func:`~segtile.inference.normalise.normalise_` (0 where not ``valid``), then colour-jittered."""
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).to(device)
    mask = torch.from_numpy(valid).to(device)
    normalise_(x, normalisation, mask)
    if jitter is not None:
        colour_jitter_(x, mask, torch.from_numpy(jitter).to(device))
    return x


def draw_batch(data: TrainingData, options: TrainOptions, step: int) -> Batch:
    """The windows of ``step``: drawn from a generator seeded with ``(seed, step)``."""
    rng = np.random.default_rng([options.seed, step])
    samples = [_train_sample(data, options, rng) for _ in range(options.batch_size)]
    jitter = None
    if options.augment:
        samples = [flip_and_rotate(sample, rng) for sample in samples]
        jitter = jitter_parameters(len(samples), data.bands, rng)
    return Batch(np.stack([s.pixels for s in samples]), np.stack([s.valid for s in samples]),
                 np.stack([s.labels for s in samples]).astype(np.int64), jitter)


def _train_sample(data: TrainingData, options: TrainOptions, rng: np.random.Generator) -> Sample:
    """A training window of the tile size; with scale augmentation, one of a random zoom resampled to it."""
    if not options.augment or options.scale_augment == 1:
        return data.train_sample(rng)
    side = max(1, round(options.tile_size * zoom_factor(options.scale_augment, rng)))
    return rescale(data.train_sample(rng, side), options.tile_size)


def validate(model: nn.Module, data: TrainingData, card: ModelCard, device: torch.device,
             batch_size: int) -> float | None:
    """mIoU of ``model`` on the held-out windows (``None`` when none is held out)."""
    windows = data.val_windows()
    if not windows:
        return None
    normalisation = Normalisation.of(card, device)
    confusion = np.zeros((card.num_classes,) * 2, dtype=np.int64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(windows), batch_size):
            samples = [data.read(image, window) for image, window in windows[start:start + batch_size]]
            x = network_input(np.stack([s.pixels for s in samples]), np.stack([s.valid for s in samples]),
                              normalisation, device)
            predicted = model(x).argmax(1).cpu().numpy()
            labels = np.stack([s.labels for s in samples])
            confusion += confusion_matrix(labels, predicted, card.num_classes, labels != IGNORE)
    return scores(confusion).miou


def train(model: nn.Module, data: TrainingData, card: ModelCard, options: TrainOptions, *,
          device: torch.device | str = "cpu", state: TrainingState | None = None,
          on_epoch: Callable[[EpochResult, TrainingState], None] | None = None,
          progress: str = "none") -> list[EpochResult]:
    """Train ``model`` in place on ``data`` until ``options.epochs`` epochs are done.

    Args:
        model: a PSPNet (or any network returning ``(main, aux)`` or logits in training mode).
        data: the windows to train and validate on.
        card: the model card (its normalisation is applied to every window).
        state: a saved state to resume from (its step, optimiser and torch random state).
        on_epoch: called after each epoch with its result and the state to save.
        progress: on stderr: ``"bar"``, a progress bar over the steps (with the loss) and a line
            per epoch; ``"json"``, the steps as JSON progress records (:mod:`segtile.engine.progress`)
            and a line per epoch; ``"none"``.

    Returns:
        every epoch's result, the resumed run's earlier epochs included. The model is left in
        eval mode.

    Raises:
        TrainError: the resumed run has done every step already.
    """
    device = torch.device(device)
    per_epoch = state.steps_per_epoch if state else (options.steps_per_epoch
                                                        or default_steps_per_epoch(data, options.batch_size))
    total = options.epochs * per_epoch
    model.to(device)
    optimizer = make_optimizer(model, options.lr)
    step, history = 0, []
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        torch.set_rng_state(state.torch_rng)
        step, history = state.step, [EpochResult(**entry) for entry in state.history]
        if step >= total:
            raise TrainError(f"the run to resume has done {state.epoch} epoch(s) already: ask for more with --epochs")
    normalisation = Normalisation.of(card, device)
    losses: list[float] = []
    records = Progress("json" if progress == "json" else "none", [("training", 1.0)]).stage("training", total)
    with ThreadPoolExecutor(1) as reader, records as advance, \
            tqdm(total=total, initial=step, unit="step", desc="segtile train", dynamic_ncols=True,
                 disable=progress != "bar") as bar:
        if step:
            advance(step)  # a resumed run starts part-way
        pending = reader.submit(draw_batch, data, options, step)  # the next batch reads while this one trains
        while step < total:
            batch = pending.result()
            if step + 1 < total:
                pending = reader.submit(draw_batch, data, options, step + 1)
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(options.lr, step, total) * group["lr_factor"]
            model.train()
            x = network_input(batch.pixels, batch.valid, normalisation, device, batch.jitter)
            loss = segmentation_loss(model(x), torch.from_numpy(batch.labels).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
            bar.update(1)
            advance(1)
            if step % per_epoch == 0:
                result = EpochResult(step // per_epoch, float(np.mean(losses)),
                                     validate(model, data, card, device, options.batch_size),
                                     optimizer.param_groups[0]["lr"])
                history.append(result)
                losses = []
                if progress != "none":
                    bar.write(epoch_line(result, options.epochs), file=sys.stderr)
                if on_epoch is not None:
                    on_epoch(result, TrainingState(step, per_epoch, asdict(options), optimizer.state_dict(),
                                                   torch.get_rng_state(), [asdict(r) for r in history]))
    model.eval()
    return history


def epoch_line(result: EpochResult, epochs: int) -> str:
    """``epoch 3/20: loss 0.4123, val mIoU 0.7012, lr 0.00812``."""
    miou = "" if result.val_miou is None else f", val mIoU {result.val_miou:.4f}"
    return f"epoch {result.epoch}/{epochs}: loss {result.loss:.4f}{miou}, lr {result.lr:.3g}"
