"""Patch classifiers (one class per patch, as WSInfer's model zoo holds them) run as coarse maps.

A WSInfer model is a folder of two files: ``torchscript_model.pt``, a TorchScript network that
maps a batch of patches ``(N, 3, S, S)`` to class logits ``(N, classes)``, and ``config.json``
(WSInfer's model-config schema, spec version 1.0)::

    {"spec_version": "1.0", "architecture": "resnet34", "num_classes": 2,
     "class_names": ["notumor", "tumor"], "patch_size_pixels": 350, "spacing_um_px": 0.25,
     "transform": [{"name": "Resize", "arguments": {"size": 224}}, {"name": "ToTensor"},
                   {"name": "Normalize", "arguments": {"mean": [...], "std": [...]}}]}

WSInfer cuts a slide into patches of ``patch_size_pixels`` at ``spacing_um_px`` µm per pixel,
resizes each to ``Resize``'s size, divides by 255 (``ToTensor``), normalises (``Normalize``), and
gives each patch its class probabilities. segtile does the same on its engine: the card says the
slide is processed at ``spacing_um_px``, normalised as ``ToTensor`` and ``Normalize`` say, in
tiles of whole patches on a lattice of ``patch_size_pixels`` from the image's corner
(``alignment``, ``tile_extra=0``); :class:`PatchClassifier` cuts each tile into its patches,
resizes them, classifies them, and paints each patch's logits over its pixels. The stitched map
is the patches' own logits (every tile gives a patch the same), so labels, probabilities,
polygons and QuPath objects come out as for any segmentation, at the patches' resolution.
Patches at the image's right and bottom edges run past it, padded by reflection as any tile is.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segtile.errors import CheckpointError, one_line
from segtile.models.card import ModelCard

CONFIG_FILE = "config.json"
NETWORK_FILE = "torchscript_model.pt"
_REQUIRED = ("num_classes", "class_names", "patch_size_pixels", "spacing_um_px", "transform")
_TRANSFORMS = ("Resize", "ToTensor", "Normalize")
_TILE_PIXELS = 1024  # the card's tiles hold whole patches up to about this side


@dataclass(frozen=True)
class PatchConfig:
    """What a WSInfer ``config.json`` says: the classes, the patch, and how a patch is prepared."""

    class_names: tuple[str, ...]
    patch_size: int
    spacing_um: float
    input_size: int  # the side the network takes (Resize's), the patch size without Resize
    scale: float  # 255 with ToTensor, else 1
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def card(self) -> ModelCard:
        """The model card of the classifier run as a map: its classes, normalisation, µm/px,
        and tiles of whole patches with no overlap (a patch gets the same logits in any tile)."""
        per_side = max(1, _TILE_PIXELS // self.patch_size)
        return ModelCard(classes=self.class_names, in_channels=3, scale=self.scale, mean=self.mean, std=self.std,
                         resolution=self.spacing_um, resolution_unit="um", tile_size=per_side * self.patch_size,
                         overlap=0, alignment=self.patch_size, tile_extra=0,
                         extra={"patch_classifier": {"patch_size_pixels": self.patch_size,
                                                     "input_size": self.input_size}})


def is_patch_classifier(folder: Path) -> bool:
    """Whether ``folder`` holds a WSInfer model: ``config.json`` naming a patch size, and the network."""
    config = folder / CONFIG_FILE
    if not (config.is_file() and (folder / NETWORK_FILE).is_file()):
        return False
    try:
        return "patch_size_pixels" in json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError):
        return False


def read_config(path: Path) -> PatchConfig:
    """Read and check a WSInfer ``config.json``.

    Raises:
        CheckpointError: not JSON, a required field missing or of the wrong kind, class names
            that do not match ``num_classes``, or a transform segtile does not know.
    """
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(exc)})") from None
    missing = [name for name in _REQUIRED if name not in config]
    if missing:
        raise CheckpointError(f"{path}: a WSInfer model config needs {', '.join(missing)}")
    names, count, patch = config["class_names"], config["num_classes"], config["patch_size_pixels"]
    if not isinstance(names, list) or len(names) != count:
        raise CheckpointError(f"{path}: 'class_names' must list num_classes ({count}) names")
    if not isinstance(patch, int) or patch < 1:
        raise CheckpointError(f"{path}: 'patch_size_pixels' must be a positive integer, not {patch!r}")
    spacing = config["spacing_um_px"]
    if isinstance(spacing, bool) or not isinstance(spacing, (int, float)) or not spacing > 0:
        raise CheckpointError(f"{path}: 'spacing_um_px' must be a positive number, not {spacing!r}")
    steps = _transforms(config["transform"], path)
    normalize = steps.get("Normalize", {})
    return PatchConfig(class_names=tuple(map(str, names)), patch_size=patch, spacing_um=float(spacing),
                       input_size=_resize_side(steps.get("Resize"), patch, path),
                       scale=255.0 if "ToTensor" in steps else 1.0,
                       mean=tuple(normalize.get("mean", (0.0,) * 3)), std=tuple(normalize.get("std", (1.0,) * 3)))


def _transforms(items: Any, path: Path) -> dict[str, dict[str, Any]]:
    """The transform list as ``{name: arguments}``, every name one segtile applies."""
    if not isinstance(items, list) or not all(isinstance(item, dict) and "name" in item for item in items):
        raise CheckpointError(f"{path}: 'transform' must be a list of {{\"name\": ..., \"arguments\": ...}}")
    unknown = [item["name"] for item in items if item["name"] not in _TRANSFORMS]
    if unknown:
        raise CheckpointError(f"{path}: transform {unknown[0]!r} is not one segtile applies ({', '.join(_TRANSFORMS)})")
    return {item["name"]: item.get("arguments") or {} for item in items}


def _resize_side(arguments: dict[str, Any] | None, patch: int, path: Path) -> int:
    """The side ``Resize`` makes a patch (a square), or the patch's own without it."""
    if arguments is None:
        return patch
    size = arguments.get("size")
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    if not isinstance(size, int) or size < 1:
        raise CheckpointError(f"{path}: Resize's 'size' must be one positive integer (a square), not {size!r}")
    return size


class PatchClassifier(nn.Module):
    """A patch classifier as a segmentation network: a tile of whole patches ``(N, 3, h, w)``
    in, each patch's logits painted over its pixels ``(N, classes, h, w)`` out."""

    def __init__(self, classifier: nn.Module, patch_size: int, input_size: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.patch_size = patch_size
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, bands, height, width = x.shape
        side = self.patch_size
        if height % side or width % side:
            raise CheckpointError(f"a patch classifier takes tiles of whole {side} px patches, not {height}x{width}: "
                                  f"use a --tile-size that is a multiple of {side}")
        rows, columns = height // side, width // side
        patches = (x.contiguous().view(batch, bands, rows, side, columns, side)
                   .permute(0, 2, 4, 1, 3, 5).reshape(-1, bands, side, side))
        if self.input_size != side:
            patches = F.interpolate(patches, size=(self.input_size, self.input_size), mode="bilinear",
                                    align_corners=False, antialias=True)
        logits = self.classifier(patches)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != len(patches):
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise CheckpointError(f"the patch classifier returned {shape} for {len(patches)} patches; "
                                  "it must return (patches, classes) logits")
        grid = logits.view(batch, rows, columns, -1).permute(0, 3, 1, 2)
        return grid.repeat_interleave(side, dim=2).repeat_interleave(side, dim=3)

    def extra_repr(self) -> str:
        return f"patch_size={self.patch_size}, input_size={self.input_size}"


def load_patch_classifier(folder: str | os.PathLike) -> tuple[PatchClassifier, ModelCard]:
    """The WSInfer model in ``folder`` as a :class:`PatchClassifier`, and its card.

    Raises:
        CheckpointError: the config is malformed, or the network is no TorchScript file.
    """
    folder = Path(folder)
    config = read_config(folder / CONFIG_FILE)
    try:
        classifier = torch.jit.load(str(folder / NETWORK_FILE), map_location="cpu")
    except Exception as exc:  # a damaged archive fails in many ways; report one line
        raise CheckpointError(f"{folder / NETWORK_FILE}: unreadable TorchScript file ({one_line(exc)})") from None
    return PatchClassifier(classifier.eval(), config.patch_size, config.input_size).eval(), config.card()
