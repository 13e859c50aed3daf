"""What ``segtile train`` does once its arguments are parsed: check, open, train, save.

Every option is checked, the files named are opened (images, labels, the checkpoint to resume,
the backbone weights) and the output is checked before the first step. The checkpoint is
written after every epoch, atomically (a temporary name, then a rename), with the state to
resume from: an interrupted run loses at most the epoch in progress.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from segtile.engine.interrupt import Interrupted
from segtile.errors import TrainError
from segtile.inference.devices import check_device, resolve_device
from segtile.models import LoadedModel, ModelCard, PSPNet, load_checkpoint, load_torchvision_backbone, save_checkpoint
from segtile.models.checkpoint import CHECKPOINT_SUFFIXES, read_training_state
from segtile.models.resnet import resnet_depth
from segtile.sources import Source, open_source
from segtile.sources.labels import open_labels
from segtile.training.datacard import card_from_data
from segtile.training.loop import EpochResult, TrainingState, TrainOptions, epoch_line, train
from segtile.training.sampling import TrainingData
from segtile.writers.atomic import atomic_output, check_output

DEFAULTS = {"layers": 18, "width": 1.0, "output_stride": 8, "epochs": 20, "tile_size": 256, "batch_size": 8, "lr": 0.01,
            "val_fraction": 0.1, "seed": 0, "steps_per_epoch": None, "scale_augment": 1.0}
"""The options' values when not given (argparse leaves them ``None``, so a resumed run can tell
what was asked for from what was not)."""

RESUMED_OPTIONS = ("tile_size", "batch_size", "lr", "val_fraction", "seed", "steps_per_epoch", "scale_augment")
"""Options a resumed run takes from its checkpoint (giving another value is an error)."""


@dataclass
class Resumed:
    """The run to continue: its network, card and state."""

    model: LoadedModel
    state: TrainingState


def run_train(args: argparse.Namespace) -> list[EpochResult]:
    """Check every option, train, and write ``args.out`` after each epoch."""
    if len(args.image) != len(args.labels):
        raise TrainError(f"give one --labels per --image: got {len(args.image)} image(s) and "
                         f"{len(args.labels)} label file(s)")
    check_device(args.device)
    if not str(args.out).lower().endswith(CHECKPOINT_SUFFIXES):
        raise TrainError(f"--out {args.out}: training writes a segtile checkpoint (.pt or .pth); for ONNX, "
                         f"convert it once trained (segtile convert MODEL.pt --out MODEL.onnx)")
    resumed = _resumed(args) if args.resume else None
    classes = _classes(args, resumed)
    if args.colors is not None:
        ModelCard(classes=classes, colors=args.colors)  # checks count and spelling now, not after an epoch
    options = _options(args, resumed)
    init_weights = _read_init(args.init) if args.init else None
    check_output(args.out, args.overwrite, protected=[*args.image, *args.labels, *([args.init] if args.init else [])])
    bands = args.bands or (list(resumed.model.card.bands) if resumed and resumed.model.card.bands else None)
    images = [open_source(path, bands=bands) for path in args.image]
    try:
        _check_bands(args.image, images, resumed)
        labels = [open_labels(path, like=image, classes=classes, class_field=args.class_field)
                  for path, image in zip(args.labels, images)]
        try:
            data = TrainingData(images, labels, options.tile_size, options.val_fraction, options.seed)
            return _fit(args, data, classes, options, resumed, init_weights)
        finally:
            for label_source in labels:
                label_source.close()
    finally:
        for image in images:
            image.close()


def _fit(args: argparse.Namespace, data: TrainingData, classes: tuple[str, ...], options: TrainOptions,
         resumed: Resumed | None, init_weights: dict[str, torch.Tensor] | None) -> list[EpochResult]:
    """Build (or take) the network and its card, train, and save after every epoch."""
    if resumed is not None:
        model, card = resumed.model.module, resumed.model.card
    else:
        torch.manual_seed(options.seed)
        model = PSPNet(layers=_given(args, "layers"), classes=len(classes), width=_given(args, "width"),
                       in_channels=data.bands, output_stride=_given(args, "output_stride"))
        if init_weights is not None:
            _load_backbone(model, init_weights, args.init)
        first = data.images[0]
        card = card_from_data(data, classes, args.colors, _band_indices(first), first.band_names,
                              options.scale_augment, args.sensor, model.alignment)
    overwrite, saved = args.overwrite, []

    def save(result: EpochResult, state: TrainingState) -> None:
        nonlocal overwrite
        init = args.init or (card.extra.get("training") or {}).get("init")
        described = replace(card, extra={**card.extra, "training": _summary(args, options, state, init)})
        with atomic_output(args.out, overwrite=overwrite) as target:
            save_checkpoint(target, model, described, training=state.to_dict())
        overwrite = True  # from now on the file is ours to replace
        saved.append(result.epoch)

    try:
        history = train(model, data, card, options, device=resolve_device(args.device),
                        state=resumed.state if resumed else None, on_epoch=save,
                        progress="none" if args.quiet else args.progress)
    except KeyboardInterrupt:
        if saved:
            raise Interrupted(f"{args.out} holds epoch {saved[-1]} of {options.epochs}: continue with "
                              f"--resume {args.out} --out {args.out} --overwrite") from None
        raise
    if not args.quiet:
        print(f"segtile: wrote {args.out} ({epoch_line(history[-1], options.epochs)})", file=sys.stderr)
    return history


def _given(args: argparse.Namespace, name: str) -> Any:
    value = getattr(args, name)
    return DEFAULTS[name] if value is None else value


def _resumed(args: argparse.Namespace) -> Resumed:
    if args.init:
        raise TrainError("--init starts a new run from backbone weights; --resume continues one: choose one")
    model = load_checkpoint(args.resume)
    training = read_training_state(args.resume)
    if training is None:
        raise TrainError(f"{args.resume}: no training state to resume from (not written by segtile train)")
    for name in ("layers", "width", "output_stride"):
        value = getattr(args, name)
        if value is not None and value != model.config[name]:
            option = "--" + name.replace("_", "-")
            raise TrainError(f"{option} {value} differs from the resumed network's {model.config[name]}")
    return Resumed(model, TrainingState.from_dict(training))


def _classes(args: argparse.Namespace, resumed: Resumed | None) -> tuple[str, ...]:
    if resumed is not None:
        saved = resumed.model.card.classes
        if args.classes is not None and tuple(args.classes) != saved:
            raise TrainError(f"--classes {','.join(args.classes)} differ from the resumed network's {','.join(saved)}")
        return saved
    if args.classes is None:
        raise TrainError("name the classes with --classes (label i is the i-th name)")
    if len(set(args.classes)) != len(args.classes):
        raise TrainError(f"--classes names a class twice: {','.join(args.classes)}")
    return tuple(args.classes)


def _options(args: argparse.Namespace, resumed: Resumed | None) -> TrainOptions:
    values = {name: _given(args, name) for name in (*RESUMED_OPTIONS, "epochs")}
    if resumed is not None:
        saved = {**DEFAULTS, **resumed.state.options, "steps_per_epoch": resumed.state.steps_per_epoch}
        for name in RESUMED_OPTIONS:
            given = getattr(args, name)
            if given is not None and given != saved[name]:
                flag = "--" + name.replace("_", "-")
                raise TrainError(f"{flag} {given} differs from the resumed run's {saved[name]}: "
                                 "a resumed run keeps its settings (only --epochs may grow)")
            values[name] = saved[name]
        values["epochs"] = args.epochs or saved["epochs"]
    return TrainOptions(**values)


def _read_init(path: str) -> dict[str, torch.Tensor]:
    """The tensors of an ImageNet ResNet file (torchvision layout; a ``state_dict`` entry and a
    ``module.`` prefix are looked through), read with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise TrainError(f"--init {path}: no such file")
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any unreadable or unsafe file: never unpickled
        raise TrainError(f"--init {path}: not a file of PyTorch weights") from None
    if isinstance(weights, dict) and isinstance(weights.get("state_dict"), dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise TrainError(f"--init {path}: expected a dict of tensors (a ResNet state_dict)")
    return {key.removeprefix("module."): value for key, value in weights.items()}


def _load_backbone(model: PSPNet, weights: dict[str, torch.Tensor], path: str) -> None:
    """Copy what fits of ``weights`` into the backbone; say on stderr what did not. A ResNet of
    another depth is refused: the blocks of one would be loaded into the other's, the rest left
    random, or dropped."""
    layers = model.config()["layers"]
    depth = resnet_depth(weights)
    if depth is not None and depth != resnet_depth(model.state_dict()):
        raise TrainError(f"--init {path}: a ResNet-{depth}, where PSPNet-{layers}'s backbone is a ResNet-{layers}: "
                         f"give --layers {depth}")
    unmapped = load_torchvision_backbone(model, weights)
    if len(unmapped) == len(weights):
        raise TrainError(f"--init {path}: no tensor fits the backbone of PSPNet-{layers} "
                         f"at width {model.config()['width']:g} (ImageNet ResNets need --width 1 and their depth)")
    shown = ", ".join(unmapped[:8]) + (f" and {len(unmapped) - 8} more" if len(unmapped) > 8 else "")
    print(f"segtile: --init {path}: {len(weights) - len(unmapped)} of {len(weights)} tensors loaded; "
          f"not mapped: {shown or 'none'}", file=sys.stderr)


def _check_bands(paths: Sequence[str], images: Sequence[Source], resumed: Resumed | None) -> None:
    expected = resumed.model.card.in_channels if resumed else images[0].count
    for path, image in zip(paths, images):
        if image.count != expected:
            raise TrainError(f"{path}: {image.count} band(s) where {expected} are needed "
                             f"({'the resumed network' if resumed else 'the first image'}); choose them with --bands")


def _band_indices(source: Source) -> tuple[int, ...]:
    """The 1-based indices of the bands read, among the file's (the card's ``bands``)."""
    return tuple(getattr(source, "selected_bands", range(1, source.count + 1)))


def _summary(args: argparse.Namespace, options: TrainOptions, state: TrainingState,
             init: str | None) -> dict[str, Any]:
    """The card's record of how the network was trained (file names, settings, figures)."""
    return {
        "images": [os.path.basename(p) for p in args.image],
        "labels": [os.path.basename(p) for p in args.labels],
        "init": os.path.basename(init) if init else None,
        **{k: v for k, v in asdict(options).items() if k != "augment"},
        "steps_per_epoch": state.steps_per_epoch, "epochs_done": state.epoch, "steps_done": state.step,
        "loss": [_rounded(e["loss"]) for e in state.history],
        "val_miou": [_rounded(e["val_miou"]) for e in state.history],
    }


def _rounded(value: float | None) -> float | None:
    """``value`` to 5 decimals for the card's JSON; ``None`` for a missing or NaN value."""
    return None if value is None or value != value else round(value, 5)
