"""Weights of the reference PSPNet (hszhao/semseg) -> a segtile network with its model card.

The reference's training script saves ``{"epoch": ..., "state_dict": ..., "optimizer": ...}``
from an ``nn.DataParallel`` model (every key starts with ``module.``). The depth and class count
are read from the weights; the card carries what ``tool/test.py`` of the reference does at test
time, so the converted network sees its input exactly as it was evaluated:

- RGB input with 0-255 values, minus ImageNet's mean and divided by its std, both scaled by
  ``value_scale = 255`` (no division of the pixels themselves: card scale 1);
- windows of the dataset's ``test_h`` x ``test_w`` (see :mod:`segtile.models.semseg_datasets`),
  ``ceil(crop * 2/3)`` apart (``scale_process``'s ``stride_rate``): the card's tile size and
  overlap;
- every window also run flipped left-right, the two softmax outputs averaged
  (``net_process(..., flip=True)``): the card's ``tta = "flip"``;
- bilinear upsampling with ``align_corners=True`` from output stride 8: ``alignment = 8``.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping

import torch

from segtile.errors import CheckpointError
from segtile.models.card import ModelCard
from segtile.models.checkpoint import LoadedModel, architecture, load_reference_state_dict
from segtile.models.pspnet import PSPNet
from segtile.models.semseg_datasets import DATASETS, SemsegDataset

# tool/test.py: value_scale = 255; mean = [0.485, 0.456, 0.406] * value_scale; std likewise.
VALUE_SCALE = 255
MEAN = tuple(m * VALUE_SCALE for m in (0.485, 0.456, 0.406))
STD = tuple(s * VALUE_SCALE for s in (0.229, 0.224, 0.225))
STRIDE_RATE = 2 / 3  # tool/test.py, scale_process(): stride = ceil(crop * stride_rate)
ALIGNMENT = 8  # output stride 8, upsampled with align_corners=True
TTA = "flip"  # tool/test.py, net_process(): flip=True

# The reference's ResNets by the number of blocks in layer3 (model/resnet.py: 6, 23, 36).
DEPTHS = {6: 50, 23: 101, 36: 152}

# How torch.load(weights_only=True) names an object it refuses to unpickle.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def convert_semseg(path: str | os.PathLike, dataset: str) -> LoadedModel:
    """Read a reference checkpoint and return the PSPNet it holds, with the card of ``dataset``.

    Raises:
        CheckpointError: the file cannot be read safely, holds no PSPNet weights of the
            reference's layout, or its class count is not the dataset's.
    """
    path = Path(path)
    described = semseg_dataset(dataset)
    payload = read_semseg_file(path)
    state_dict = payload["state_dict"] if isinstance(payload.get("state_dict"), Mapping) else payload
    layers, classes = semseg_architecture(state_dict, path)
    if classes != len(described.classes):
        fitting = [name for name, d in DATASETS.items() if len(d.classes) == classes]
        hint = f" (--dataset {fitting[0]}?)" if fitting else ""
        raise CheckpointError(
            f"{path}: the weights give {classes} classes, but {dataset} has {len(described.classes)}{hint}"
        )
    network = PSPNet(layers=layers, classes=classes)
    load_reference_state_dict(network, state_dict)
    card = semseg_card(described, epoch=payload.get("epoch"))
    return LoadedModel(network.eval(), card, architecture(network))


def semseg_dataset(name: str) -> SemsegDataset:
    """The reference's dataset called ``name``; :class:`CheckpointError` for an unknown name."""
    if name not in DATASETS:
        raise CheckpointError(f"unknown semseg dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name]


def semseg_card(dataset: SemsegDataset, epoch: Any = None) -> ModelCard:
    """The card of a reference network trained on ``dataset``: its classes, palette and test setup."""
    crop = dataset.crop_size
    extra: dict[str, Any] = {"source": "hszhao/semseg", "dataset": dataset.name, "base_size": dataset.base_size}
    if isinstance(epoch, int):
        extra["epoch"] = epoch
    return ModelCard(
        classes=dataset.names, colors=dataset.colors, in_channels=3, mean=MEAN, std=STD, scale=1.0,
        tile_size=crop, overlap=crop - math.ceil(crop * STRIDE_RATE), alignment=ALIGNMENT, tta=TTA,
        extra=extra,
    )


def read_semseg_file(path: Path) -> dict[str, Any]:
    """The dict a reference checkpoint holds, read with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: the file is missing, not a torch file, or holds objects that a
            weights-only load refuses (the message says how to keep just the weights).
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refuses in many ways
        refused = _REFUSED_GLOBAL.search(str(exc))
        if refused is None:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint") from None
        raise CheckpointError(
            f"{path}: holds a Python object ({refused.group(1)}) that segtile does not load: it reads weights "
            "only. If you trust the file, keep just its weights: torch.save(torch.load(PATH, "
            "weights_only=False)['state_dict'], 'weights.pth'), and convert that"
        ) from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: holds a {type(payload).__name__}, not a checkpoint dict")
    return payload


def semseg_architecture(state_dict: Mapping[str, Any], path: Path | str = "weights") -> tuple[int, int]:
    """``(layers, classes)`` of a reference PSPNet, from its weights' keys and shapes.

    The depth follows from the number of blocks in ``layer3``; the classes from the main head's
    last convolution, ``cls.4.weight`` (classes x 512 x 1 x 1).

    Raises:
        CheckpointError: the weights are not those of the reference's PSPNet.
    """
    keys = {key.removeprefix("module."): value for key, value in state_dict.items()}
    if any(key.startswith("psa.") for key in keys):
        raise CheckpointError(f"{path}: PSANet weights; segtile converts the reference's PSPNet only")
    head = keys.get("cls.4.weight")
    if not isinstance(head, torch.Tensor) or head.ndim != 4:
        raise CheckpointError(f"{path}: no PSPNet weights of hszhao/semseg's layout (no 'cls.4.weight')")
    blocks = len({key.split(".")[1] for key in keys if key.startswith("layer3.")})
    if blocks not in DEPTHS:
        raise CheckpointError(
            f"{path}: layer3 has {blocks} blocks; the reference's ResNets have "
            + ", ".join(f"{count} ({depth} layers)" for count, depth in DEPTHS.items())
        )
    return DEPTHS[blocks], int(head.shape[0])
