"""Checkpoints: one file holding a network's architecture, its weights and its model card.

A segtile checkpoint is a ``torch.save`` of a plain dict::

    {"format": "segtile-checkpoint", "version": 1,
     "arch": {"name": "pspnet", "layers": 50, "classes": 150, ...},   # PSPNet keyword arguments
     "state_dict": {...}, "card": {...},                              # ModelCard.to_dict()
     "training": {...}}                  # optional: what `segtile train --resume` continues from

read back with ``torch.load(weights_only=True)``, so loading a file never runs code from it.
The ``training`` entry (optimiser state, step, random state, history: see
``segtile.training.loop.TrainingState``) is written by ``segtile train`` and ignored by inference.
A TorchScript file is accepted too; its card is the ``card.json`` among its extra files. So are
an ONNX file (``.onnx``, run by onnxruntime: see :mod:`segtile.models.onnx_runtime`), a
``torch.export`` archive (``.pt2``: see :mod:`segtile.models.exported`), a WSInfer patch
classifier's folder (see :mod:`segtile.models.patches`) and a segmentation_models_pytorch
model's folder (see :mod:`segtile.models.smp_folder`).
"""

from __future__ import annotations

import os
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from segtile.errors import CardError, CheckpointError, one_line, refuse_sequential
from segtile.models.borrowed import eval_mode
from segtile.models.card import ModelCard, default_card
from segtile.models.patches import is_patch_classifier, load_patch_classifier
from segtile.models.pspnet import PSPNet
from segtile.models.smp_folder import is_smp_folder, load_smp_folder

FORMAT = "segtile-checkpoint"
VERSION = 1
CARD_FILE = "card.json"
ONNX_SUFFIX = ".onnx"
EXPORTED_SUFFIX = ".pt2"
CHECKPOINT_SUFFIXES = (".pt", ".pth")  # what segtile names the checkpoints it writes

# Architecture names a checkpoint may name, and the class that builds each.
ARCHITECTURES: dict[str, type[PSPNet]] = {"pspnet": PSPNet}

# Probes for a TorchScript file without a card: input sizes tried (8k + 1 first, which the
# reference PSPNet requires), and the band counts tried after the first convolution's.
_PROBE_SIZES = (65, 64)
_PROBE_BANDS = (3, 1)


@dataclass(frozen=True)
class LoadedModel:
    """A network ready for inference and what it expects.

    Attributes:
        module: the network, on the CPU, in eval mode.
        card: its model card.
        config: the architecture (``{"name": "pspnet", **PSPNet kwargs}``), or ``None`` for a
            TorchScript file or a bare module.
    """

    module: nn.Module
    card: ModelCard
    config: dict[str, Any] | None = None


def save_checkpoint(path: str | os.PathLike, model: PSPNet, card: ModelCard,
                    training: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` (architecture and weights) and ``card`` to one segtile checkpoint file,
    with the ``training`` state to resume from when given (plain values and tensors only).

    Raises:
        CheckpointError: ``model`` is not a :class:`PSPNet` (use :func:`save_torchscript`).
        CardError: the card's classes or bands do not match the network.
    """
    if not isinstance(model, PSPNet):
        raise CheckpointError(
            f"save_checkpoint stores PSPNet models, not {type(model).__name__}: "
            "save other networks with save_torchscript"
        )
    arch = architecture(model)
    check_card_fits(card, arch["classes"], arch["in_channels"])
    card = with_network_alignment(card, model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "arch": arch,
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "card": card.to_dict(),
    }
    if training is not None:
        payload["training"] = dict(training)
    path = Path(path)
    torch.save(payload, path)
    return path


def save_torchscript(path: str | os.PathLike, module: nn.Module, card: ModelCard) -> Path:
    """Script ``module`` (unless it already is a ScriptModule) and save it with ``card.json``.

    Raises:
        CheckpointError: the module cannot be scripted (trace or script it yourself and pass
            the ScriptModule).
        CardError: ``module`` is a PSPNet whose classes or bands disagree with the card.
    """
    if isinstance(module, PSPNet):
        arch = architecture(module)
        check_card_fits(card, arch["classes"], arch["in_channels"])
    if not isinstance(module, torch.jit.ScriptModule):
        try:
            module = torch.jit.script(module)
        except Exception as exc:  # TorchScript's compiler raises many kinds; report one line
            raise CheckpointError(
                f"{type(module).__name__} cannot be scripted ({one_line(exc)}): "
                "pass a module from torch.jit.script or torch.jit.trace"
            ) from None
    path = Path(path)
    torch.jit.save(module.eval(), str(path), _extra_files={CARD_FILE: card.to_json()})
    return path


def load_checkpoint(path: str | os.PathLike) -> LoadedModel:
    """Load a segtile checkpoint, a TorchScript file, an ONNX file (``.onnx``) or a
    ``torch.export`` archive (``.pt2``), on the CPU, in eval mode.

    Raises:
        CheckpointError: the file is missing, a directory, empty, not a checkpoint, names an
            unknown architecture, or its weights do not fit its architecture.
        CardError: the card is missing fields or disagrees with the network.
        OnnxError: an ONNX file that onnxruntime (or segtile) cannot run, or no onnxruntime.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path)
    _check_is_file(path)
    if path.suffix.lower() == ONNX_SUFFIX:
        from segtile.models.onnx_runtime import load_onnx  # onnxruntime is an optional extra

        with _naming(path):
            module, card = load_onnx(path)
        return LoadedModel(module, card, None)
    if path.suffix.lower() == EXPORTED_SUFFIX:
        from segtile.models.exported import load_exported  # imports this module

        with _naming(path):
            module, card = load_exported(path)
        return LoadedModel(module, card, None)
    if is_torchscript(path):
        return _load_torchscript(path)
    payload = _read_payload(path)
    module = build_network(_field(payload, "arch", dict, path), path)
    state_dict = _field(payload, "state_dict", dict, path)
    card_dict = _field(payload, "card", dict, path)
    arch = architecture(module)
    with _naming(path):
        card = ModelCard.from_dict(card_dict)
        check_card_fits(card, arch["classes"], arch["in_channels"])
    load_weights(module, state_dict, f"{path}:")
    return LoadedModel(module.eval(), with_network_alignment(card, module), arch)


def with_network_alignment(card: ModelCard, module: nn.Module) -> ModelCard:
    """``card`` with the tile alignment its network needs (PSPNet: 8), when the card names none."""
    alignment = getattr(module, "alignment", 1) if isinstance(module, PSPNet) else 1
    return replace(card, alignment=alignment) if card.alignment == 1 and alignment != 1 else card


def read_training_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``training`` entry of a segtile checkpoint, or ``None`` when it has none.

    Raises:
        CheckpointError: the file is not a segtile checkpoint.
    """
    path = Path(path)
    _check_is_file(path)
    if is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript file holds no training state to resume from")
    training = _read_payload(path).get("training")
    if training is not None and not isinstance(training, dict):
        raise CheckpointError(f"{path}: checkpoint 'training' is a {type(training).__name__}, not a dict")
    return training


def load_model(model: str | os.PathLike | LoadedModel | nn.Module) -> LoadedModel:
    """Whatever names a network -> a :class:`LoadedModel`.

    A path is loaded with :func:`load_checkpoint`; a LoadedModel is returned as is; a bare
    module is put in eval mode and given a default card, its bands and classes probed as for a
    TorchScript file without ``card.json``.
    """
    if isinstance(model, LoadedModel):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(model)
    if isinstance(model, PSPNet):
        arch = architecture(model)
        card = with_network_alignment(default_card(arch["classes"], arch["in_channels"]), model)
        return LoadedModel(model.eval(), card, arch)
    if isinstance(model, nn.Module):
        return LoadedModel(model.eval(), probe_card(model), None)
    raise CheckpointError(
        f"a model is a checkpoint path, a LoadedModel or a torch.nn.Module, not {type(model).__name__}"
    )


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, Any]) -> None:
    """Load weights saved by hszhao/semseg (or any same-layout PSPNet) into ``model``, strictly.

    Accepts the training script's ``{"state_dict": ...}`` wrapper, and drops the ``module.``
    prefix that ``nn.DataParallel`` puts in front of every key.

    Raises:
        CheckpointError: keys or shapes differ (the message names the first of each).
    """
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], Mapping):
        state_dict = state_dict["state_dict"]
    stripped = {key.removeprefix("module."): value for key, value in state_dict.items()}
    load_weights(model, stripped, "reference weights:")


def architecture(model: PSPNet) -> dict[str, Any]:
    """The ``arch`` entry of a checkpoint: the architecture's name and its keyword arguments."""
    return {"name": "pspnet", **model.config()}


def check_card_fits(card: ModelCard, classes: int, in_channels: int) -> None:
    """Raise :class:`CardError` when the card's class or band count differs from the network's."""
    if card.num_classes != classes:
        raise CardError(f"model card: {card.num_classes} classes, but the network outputs {classes}")
    if card.in_channels != in_channels:
        raise CardError(
            f"model card: {card.in_channels} input bands, but the network takes {in_channels}"
        )


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive: a zip with ``constants.pkl`` (``torch.save`` writes none)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def probe_card(module: nn.Module, bands: int | None = None) -> ModelCard:
    """A default card for a network that brings none, its classes (and bands) found by probing.

    With ``bands`` (the image's band count) only that count is tried. Without, band counts are
    tried in order: the input channels of the first 4-D weight (the first convolution, for a
    network that starts with one), then 3, then 1. Input sizes 65 then 64; the first probe giving
    ``(1, classes, h, w)`` logits of the input's size decides. The module's training modes (each
    submodule's) are left as they were.
    """
    candidates = [bands] if bands is not None else _candidate_bands(module)
    first = next(module.parameters(), None)  # probe where the network is (a GPU after one run)
    device = first.device if first is not None else torch.device("cpu")
    failure = "it returns no (1, classes, h, w) logits of the input's size"
    with torch.inference_mode(), eval_mode(module):
        for count in candidates:
            for size in _PROBE_SIZES:
                try:
                    out = module(torch.zeros(1, count, size, size, device=device))
                except Exception as exc:  # a probe that does not fit the network; try the next one
                    failure = f"it fails on a (1, {count}, {size}, {size}) input: {one_line(exc)}"
                    continue
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[2:] == (size, size):
                    return default_card(out.shape[1], count)
    if bands is not None:
        raise CheckpointError(f"the model cannot segment {bands} band(s): {failure}")
    raise CheckpointError(
        "the network has no card and maps no probe input (1, bands, h, w) to logits "
        "(1, classes, h, w): save it with a card (save_torchscript)"
    )


def build_network(config: Mapping[str, Any], path: Path | str = "checkpoint") -> PSPNet:
    """The untrained network an ``arch`` entry describes."""
    config = dict(config)
    name = config.pop("name", None)
    if name not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: unknown architecture {name!r} (known: {', '.join(sorted(ARCHITECTURES))})"
        )
    try:
        return ARCHITECTURES[name](**config)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: invalid {name} architecture: {one_line(exc)}") from None


def _candidate_bands(module: nn.Module) -> list[int]:
    first_conv = next((p for p in module.parameters() if p.ndim == 4), None)
    candidates = [first_conv.shape[1]] if first_conv is not None else []
    return candidates + [b for b in _PROBE_BANDS if b not in candidates]


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    refuse_sequential(path, "model", CheckpointError)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: is empty, not a checkpoint")


def _load_folder(path: Path) -> LoadedModel:
    """A model kept as a folder: a WSInfer patch classifier (``config.json`` and
    ``torchscript_model.pt``), or a segmentation_models_pytorch model (``save_pretrained``)."""
    if is_patch_classifier(path):
        with _naming(path):
            module, card = load_patch_classifier(path)
        return LoadedModel(module, card, None)
    if is_smp_folder(path):
        with _naming(path):
            module, card = load_smp_folder(path)
        return LoadedModel(module, card, None)
    raise CheckpointError(f"{path}: is a directory, not a checkpoint file nor a model folder segtile reads "
                          "(a WSInfer model: config.json and torchscript_model.pt; a segmentation_models_pytorch "
                          "model saved with save_pretrained)")


def _load_torchscript(path: Path) -> LoadedModel:
    extra = {CARD_FILE: ""}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:  # a damaged archive fails in many ways; report one line
        raise CheckpointError(f"{path}: unreadable TorchScript file ({one_line(exc)})") from None
    module.eval()
    card_json = extra[CARD_FILE]
    if not card_json:
        return LoadedModel(module, probe_card(module), None)
    with _naming(path):
        card = ModelCard.from_json(card_json)
    return LoadedModel(module, card, None)


def _read_payload(path: Path) -> dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # text, random bytes, pickles of arbitrary objects (never unpickled)...
        raise CheckpointError(f"{path}: not a segtile checkpoint or TorchScript file") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        weights = payload.get("state_dict", payload) if isinstance(payload, dict) else None
        hint = ""
        if isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values()):
            hint = (f": it holds bare weights; a PSPNet trained by the reference code (hszhao/semseg) converts with "
                    f"`segtile convert {path} --from semseg --dataset NAME --out model.pt`; other networks: build "
                    "it, load them and save_checkpoint it with a card")
        raise CheckpointError(f"{path}: a torch file, but not a segtile checkpoint{hint}")
    version = payload.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version!r} is not supported (this segtile reads {VERSION})"
        )
    return payload


def _field(payload: Mapping[str, Any], name: str, kind: type, path: Path) -> Any:
    value = payload.get(name)
    if value is None:
        raise CheckpointError(f"{path}: checkpoint has no '{name}'")
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: checkpoint '{name}' is a {type(value).__name__}, not a {kind.__name__}")
    return value


def load_weights(module: nn.Module, state_dict: Mapping[str, Any], where: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line message naming the first mismatch."""
    expected = module.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    reshaped = [key for key in expected
                if key in state_dict and _shape(state_dict[key]) != tuple(expected[key].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (first {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
    if reshaped:
        key = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (first {key!r}: "
                        f"{_shape(state_dict[key])} instead of {tuple(expected[key].shape)})")
    if problems:
        raise CheckpointError(f"{where} weights do not fit the network: {'; '.join(problems)}")
    module.load_state_dict(state_dict, strict=True)


def _shape(value: Any) -> tuple[int, ...] | str:
    """A tensor's shape, or the type name of something that is not a tensor."""
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


@contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Put the file's name in front of the message of a :class:`CardError` raised inside."""
    try:
        yield
    except CardError as exc:
        raise CardError(f"{path}: {exc}") from None

