"""segmentation_models_pytorch models saved with ``save_pretrained``, loaded from their folder.

``model.save_pretrained(folder)`` writes ``config.json`` (the architecture, ``_model_class``,
and its keyword arguments: ``encoder_name``, ``encoder_weights``, ``in_channels``, ``classes``...)
and ``model.safetensors`` (or ``pytorch_model.bin``). segtile builds the architecture with
``encoder_weights=None`` (no weights are downloaded: the folder's replace the encoder's anyway) and
loads the folder's weights, strictly.

The card is made from the config: the band and class counts; the normalisation of the encoder's
pretrained weights (smp's ``get_preprocessing_params``, which smp >= 0.5 reads from the
weights' config on the Hugging Face Hub, cached after the first time: pixels divided by 255, the
weights' mean and std, BGR encoders fed the bands in reverse); tiles on the network's lattice of
``2 ** encoder_depth`` px. What the config cannot say comes from ``card.json`` beside it (any
card fields: see :class:`~segtile.models.card.ModelCard`), and the loader asks for it in one
line when it is needed: the class names always, the normalisation when the encoder was trained
from scratch (``encoder_weights`` null). A one-class model (a sigmoid output) becomes two
classes, its logit ``z`` given as ``(-z/2, z/2)``, whose softmax is ``(1 - sigmoid(z),
sigmoid(z))``: its card names two classes, background first.

segmentation_models_pytorch is an optional dependency: ``pip install 'segtile[smp]'``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segtile.errors import CheckpointError, one_line
from segtile.models.card import ModelCard

CONFIG_FILE = "config.json"
CARD_FILE = "card.json"  # what the user adds: the card fields the config lacks
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INSTALL_HINT = "pip install 'segtile[smp]'"
_DEFAULT_DEPTH = 5  # smp's encoder_depth when the config names none


class SigmoidAsTwoClasses(nn.Module):
    """A one-channel logit ``z`` as two, ``(-z/2, z/2)``: softmax gives ``(1 - sigmoid(z), sigmoid(z))``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.network(x) / 2
        return torch.cat([-half, half], dim=1)


def is_smp_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a segmentation_models_pytorch ``save_pretrained`` model."""
    return "_model_class" in _read_json(folder / CONFIG_FILE, missing_ok=True)


def load_smp_folder(folder: str | os.PathLike) -> tuple[nn.Module, ModelCard]:
    """The network saved in ``folder`` and its card (see the module's docstring).

    Raises:
        CheckpointError: segmentation_models_pytorch missing, no weights, weights that do not fit,
            or something the card needs that neither the config nor ``card.json`` says.
        CardError: ``card.json`` is malformed or disagrees with the network.
    """
    folder = Path(folder)
    config = _read_json(folder / CONFIG_FILE)
    given = _read_json(folder / CARD_FILE, missing_ok=True)
    arguments = {key: value for key, value in config.items() if not key.startswith("_")}
    card = _card(folder, arguments, given)
    from segtile.models.checkpoint import check_card_fits  # imports this module

    classes = arguments.get("classes", 1)
    check_card_fits(card, max(classes, 2), arguments.get("in_channels", 3))
    network = _network(folder, config["_model_class"], arguments)
    if classes == 1:
        network = SigmoidAsTwoClasses(network)
    return network.eval(), card


def _card(folder: Path, arguments: dict[str, Any], given: dict[str, Any]) -> ModelCard:
    """The card from the config's arguments, ``card.json``'s fields over them."""
    if "classes" not in given:
        classes = arguments.get("classes", 1)
        count = f"{classes} class names" if classes > 1 else "2 class names (background first: a one-class model)"
        raise CheckpointError(f"{folder}: a segmentation_models_pytorch folder names no classes: write {count} into "
                              f"{folder / CARD_FILE}, e.g. {{\"classes\": [\"background\", \"building\"]}}")
    depth = arguments.get("encoder_depth", _DEFAULT_DEPTH)
    fields: dict[str, Any] = {"in_channels": arguments.get("in_channels", 3), "alignment": 2 ** depth,
                              "tile_extra": 0, "tile_size": 512, "overlap": 64}
    if not {"mean", "std"} <= set(given):
        fields |= _encoder_normalisation(folder, arguments)
    return ModelCard.from_dict(fields | given)


def _encoder_normalisation(folder: Path, arguments: dict[str, Any]) -> dict[str, Any]:
    """The card fields of the normalisation the encoder's pretrained weights were made with."""
    weights = arguments.get("encoder_weights")
    if weights is None:
        raise CheckpointError(f"{folder}: the encoder was trained from scratch (encoder_weights null), so the "
                              f"normalisation is the trainer's own: write it into {folder / CARD_FILE}, e.g. "
                              '{"scale": 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}')
    smp = _smp(folder)
    try:  # smp >= 0.5 reads it from the weights' config on the Hugging Face Hub (cached after the first time)
        params = smp.encoders.get_preprocessing_params(arguments.get("encoder_name", "resnet34"), pretrained=weights)
    except Exception as exc:  # unknown weights (ValueError), no network (huggingface_hub's errors)...
        raise CheckpointError(f"{folder}: smp gives no normalisation for encoder weights {weights!r} "
                              f"({type(exc).__name__}): write it into {folder / CARD_FILE}, e.g. "
                              '{"scale": 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}') from None
    fields = {"mean": params["mean"], "std": params["std"],
              "scale": 255.0 if list(params.get("input_range", [0, 1])) == [0, 1] else 1.0}
    if params.get("input_space") == "BGR":
        fields["bands"] = [3, 2, 1]
    return fields


def _network(folder: Path, architecture: str, arguments: dict[str, Any]) -> nn.Module:
    """The architecture built without downloading anything, the folder's weights loaded into it."""
    smp = _smp(folder)
    kind = getattr(smp, architecture, None)
    if not isinstance(kind, type):
        raise CheckpointError(f"{folder}: segmentation_models_pytorch has no architecture {architecture!r}")
    try:
        network = kind(**(arguments | {"encoder_weights": None}))
    except Exception as exc:  # smp raises many kinds for arguments it does not take
        raise CheckpointError(f"{folder}: cannot build {architecture}: {one_line(exc)}") from None
    from segtile.models.checkpoint import load_weights

    load_weights(network, _weights(folder), f"{folder}:")
    return network


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """The folder's state dict, from safetensors or a ``torch.save`` file (never unpickled objects)."""
    path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise CheckpointError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # damaged files fail in many ways; report one line
        raise CheckpointError(f"{path}: unreadable weights ({one_line(exc)})") from None


def _smp(folder: Path) -> Any:
    """The ``segmentation_models_pytorch`` module, or :class:`CheckpointError` saying how to install it."""
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # ImportError, or a torchvision that does not fit this torch (RuntimeError)
        raise CheckpointError(f"{folder}: segmentation_models_pytorch models need that package, importable: "
                              f"{INSTALL_HINT} ({one_line(exc)})") from None
    return smp


def _read_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    """A JSON object from ``path`` (``{}`` for a missing file when ``missing_ok``)."""
    if missing_ok and not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON file ({one_line(exc)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data
