"""The model card of an ONNX file made for QGIS's Deepness plugin, from its metadata.

Deepness (github.com/PUTvision/qgis-plugin-deepness) reads these ``metadata_props`` keys, each
value JSON (``src/deepness/processing/models/model_base.py``):

=========================  ================================================================
``model_type``             ``"Segmentor"``, ``"Detector"``, ``"Regressor"``, ``"Recognition"``,
                           ``"Superresolution"`` (compared after ``str.capitalize()``)
``class_names``            ``{"0": "name", ...}`` (or a Python literal with int keys; older
                           files say ``names``); a list of such dicts for several outputs
``resolution``             centimetres per pixel
``tile_size``              tile side in pixels (the docs' table says ``tiles_size``; the code
                           reads ``tile_size``)
``tiles_overlap``          overlap in percent of the tile: ``int(tile * p / 100 * 2) // 2`` px
``standardization_mean``,  per band, applied after Deepness divides 0-255 pixels by 255, only
``standardization_std``    when both are present
=========================  ================================================================

Deepness feeds the model the raster's first bands (as many as the input takes), divided by 255
and standardised, NCHW float32. A segmentation output of one channel (or of shape N x H x W) is a
sigmoid probability of the named class against a background. Tile size 512 and overlap 15 % are
Deepness's defaults (its dock widget) when the metadata says nothing.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, Mapping

from segtile.errors import CardError
from segtile.models.card import ModelCard

SEGMENTATION = "Segmentor"
KEYS = ("model_type", "class_names", "names", "resolution", "tile_size", "tiles_overlap",
        "standardization_mean", "standardization_std")
DEFAULT_TILE_SIZE = 512
DEFAULT_OVERLAP_PERCENT = 15
PIXEL_SCALE = 255.0  # Deepness: tiles * 1/255 before standardising
BACKGROUND = "background"


@dataclass(frozen=True)
class DeepnessModel:
    """What Deepness metadata says: the card, and whether the output is one sigmoid channel."""

    card: ModelCard
    sigmoid: bool


def is_deepness(metadata: Mapping[str, str]) -> bool:
    """True when ``metadata`` holds any key Deepness reads."""
    return any(key in metadata for key in KEYS)


def deepness_model(metadata: Mapping[str, str], in_channels: int, out_channels: int | None,
                   out_rank: int, fixed_size: int | None = None) -> DeepnessModel:
    """The card of a Deepness segmentation model.

    Args:
        metadata: the ONNX file's ``metadata_props`` (key -> JSON text).
        in_channels: bands the input takes (its second dimension).
        out_channels: channels of the first output (``None`` when not fixed in the file).
        out_rank: 4 for ``(N, C, H, W)`` outputs, 3 for ``(N, H, W)`` (one sigmoid channel).
        fixed_size: the input's side when its height and width are fixed in the file: the tile
            must be that size, whatever ``tile_size`` says.

    Raises:
        CardError: the model is not a segmentation model, or a value is malformed or disagrees
            with the network.
    """
    model_type = _value(metadata, "model_type")
    if model_type is not None and str(model_type).capitalize() != SEGMENTATION:
        raise CardError(
            f"Deepness model_type {model_type!r}: segtile runs segmentation models ({SEGMENTATION}) only"
        )
    sigmoid = out_rank == 3 or out_channels == 1
    classes = _classes(metadata, sigmoid, out_channels)
    tile_size = fixed_size or _integer(metadata, "tile_size", DEFAULT_TILE_SIZE)
    percent = _number(metadata, "tiles_overlap", DEFAULT_OVERLAP_PERCENT)
    resolution = _number(metadata, "resolution", None)
    mean, std = _value(metadata, "standardization_mean"), _value(metadata, "standardization_std")
    if mean is None or std is None:  # Deepness standardises only with both
        mean, std = [0.0] * in_channels, [1.0] * in_channels
    card = ModelCard.from_dict({
        "classes": classes, "in_channels": in_channels, "scale": PIXEL_SCALE,
        "mean": mean, "std": std,
        "resolution": None if resolution is None else resolution / 100.0,
        "resolution_unit": None if resolution is None else "m",
        "tile_size": tile_size, "overlap": min(int(tile_size * percent / 100 * 2) // 2, tile_size - 1),
        "extra": {"source": "deepness", "deepness": dict(metadata)},
    })
    return DeepnessModel(card, sigmoid)


def _classes(metadata: Mapping[str, str], sigmoid: bool, out_channels: int | None) -> list[str]:
    """Class names in output order; for a sigmoid output, the background first."""
    names = _class_names(metadata)
    channels = 2 if sigmoid else out_channels
    if names is None:
        if channels is None:
            raise CardError("Deepness metadata names no classes and the output's channel count is not fixed")
        return [f"class_{i}" for i in range(channels)]
    if sigmoid and len(names) == 1:
        names = [BACKGROUND, *names]
    if channels is not None and len(names) != channels:
        raise CardError(f"Deepness class_names: {len(names)} names for {channels} output channels")
    return names


def _class_names(metadata: Mapping[str, str]) -> list[str] | None:
    """``class_names`` (or ``names``) as a list; of several outputs, the first's."""
    key = "class_names" if "class_names" in metadata else "names"
    if key not in metadata:
        return None
    text = metadata[key]
    try:
        names = json.loads(text)
    except json.JSONDecodeError:
        try:
            names = ast.literal_eval(text)  # what Deepness accepts too: {0: 'a'}, a Python literal
        except (ValueError, SyntaxError):
            raise CardError(f"Deepness {key} is neither JSON nor a Python literal: {text[:60]!r}") from None
    if isinstance(names, list) and names and isinstance(names[0], dict):
        names = names[0]
    if not isinstance(names, dict) or not names:
        raise CardError(f"Deepness {key} must map class indices to names, not {text[:60]!r}")
    try:
        ordered = sorted((int(index), str(name)) for index, name in names.items())
    except ValueError:
        raise CardError(f"Deepness {key}: class indices must be integers, got {sorted(names)[:3]}") from None
    if [index for index, _ in ordered] != list(range(len(ordered))):
        raise CardError(f"Deepness {key}: class indices must be 0, 1, 2... without gaps")
    return [name for _, name in ordered]


def _value(metadata: Mapping[str, str], key: str) -> Any:
    if key not in metadata:
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError:
        raise CardError(f"Deepness metadata {key!r} is not JSON: {metadata[key][:60]!r}") from None


def _number(metadata: Mapping[str, str], key: str, default: float | None) -> float | None:
    value = _value(metadata, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CardError(f"Deepness metadata {key!r} must be a non-negative number, not {value!r}")
    return float(value)


def _integer(metadata: Mapping[str, str], key: str, default: int) -> int:
    value = _number(metadata, key, default)
    if value != int(value) or value < 1:
        raise CardError(f"Deepness metadata {key!r} must be a positive integer, not {value!r}")
    return int(value)
