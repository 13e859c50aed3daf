"""ONNX models run by onnxruntime behind ``torch.nn.Module``'s interface, with their model card.

:func:`load_onnx` (what :func:`segtile.models.load_checkpoint` does for ``.onnx`` files) returns
an :class:`OnnxNetwork`: a module whose ``forward`` hands the batch to an
``onnxruntime.InferenceSession`` and returns its output as a tensor, so the engine (predictor,
tiling, writers) runs it like any network. It has no parameters: ``.to(device)``,
channels-last and ``eval()`` leave it as it is, and it picks the execution provider from the
device of each input (CUDA when the input is on a GPU and onnxruntime has the CUDA provider,
else the CPU). Sessions are made on first use and never pickled: a copy sent to a Dask worker
carries the file's path only.

The card comes from the file's metadata: a segtile card (``segtile_card``, written by
:func:`segtile.models.onnx_export.export_onnx`), else Deepness's keys
(:mod:`segtile.models.deepness`), else a default card (no normalisation, classes numbered).

onnxruntime is an optional dependency: ``pip install 'segtile[onnx]'``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from segtile.errors import OnnxError, one_line
from segtile.models.card import ModelCard, default_card
from segtile.models.checkpoint import check_card_fits
from segtile.models.deepness import deepness_model, is_deepness

CARD_KEY = "segtile_card"  # metadata_props key of a segtile card (ModelCard JSON)
INSTALL_HINT = "pip install 'segtile[onnx]'"
_FLOAT = "tensor(float)"


@dataclass(frozen=True)
class OnnxSignature:
    """What an ONNX file says about itself: metadata, its input and its first output.

    Dimensions are ints when fixed in the file, ``None`` when dynamic.
    """

    metadata: dict[str, str]
    input_name: str
    input_shape: tuple[int | None, ...]
    output_name: str
    output_shape: tuple[int | None, ...]

    @property
    def fixed_batch(self) -> int | None:
        return self.input_shape[0]

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """``(height, width)`` of the input when both are fixed in the file."""
        height, width = self.input_shape[2:]
        return (height, width) if height is not None and width is not None else None


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or :class:`OnnxError` saying how to install it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxError(f"ONNX models need onnxruntime: {INSTALL_HINT}") from None
    return ort


def read_signature(path: str | os.PathLike) -> OnnxSignature:
    """Read an ONNX file's metadata and its input and output shapes (through onnxruntime).

    Raises:
        OnnxError: not an ONNX file onnxruntime can load, or not one image input of float32
            ``(N, bands, H, W)``.
    """
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        raise OnnxError(f"{path}: not an ONNX model onnxruntime can load ({one_line(exc)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise OnnxError(f"{path}: the model takes {len(inputs)} inputs; segtile feeds one image batch")
    shape_in, shape_out = _dims(inputs[0].shape), _dims(outputs[0].shape)
    if len(shape_in) != 4 or inputs[0].type != _FLOAT:
        raise OnnxError(
            f"{path}: the input is {inputs[0].type} of shape {inputs[0].shape}; segtile feeds float32 "
            "(N, bands, H, W)"
        )
    if shape_in[1] is None:
        raise OnnxError(f"{path}: the input's band count (its 2nd dimension) is not fixed in the file")
    if len(shape_out) not in (3, 4):
        raise OnnxError(f"{path}: the output has shape {outputs[0].shape}; segtile needs (N, classes, H, W)")
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return OnnxSignature(metadata, inputs[0].name, shape_in, outputs[0].name, shape_out)


def read_card(signature: OnnxSignature, path: str | os.PathLike = "model") -> tuple[ModelCard, bool]:
    """The card of an ONNX model, and whether its output is one sigmoid channel (Deepness's
    binary segmentation) that :class:`OnnxNetwork` turns into two: background and class.

    Raises:
        CardError: the card is malformed or disagrees with the model's input or output.
        OnnxError: there is no card and the output's class count is not fixed in the file.
    """
    in_channels = signature.input_shape[1]
    out_channels = signature.output_shape[1] if len(signature.output_shape) == 4 else None
    side = min(signature.fixed_size) if signature.fixed_size else None
    if CARD_KEY in signature.metadata:
        card, sigmoid = ModelCard.from_json(signature.metadata[CARD_KEY]), False
    elif is_deepness(signature.metadata):
        model = deepness_model(signature.metadata, in_channels, out_channels, len(signature.output_shape), side)
        card, sigmoid = model.card, model.sigmoid
    elif out_channels is None:
        raise OnnxError(f"{path}: no model card, and the output's class count (its 2nd dimension) is "
                        "not fixed in the file")
    else:
        card, sigmoid = default_card(out_channels, in_channels), False
        if side:
            card = replace(card, tile_size=side, overlap=min(card.overlap, side // 4))
    check_card_fits(card, 2 if sigmoid else (out_channels or card.num_classes), in_channels)
    return card, sigmoid


def execution_providers(device: torch.device, available: Sequence[str]) -> list[Any]:
    """onnxruntime's providers for a batch on ``device``: CUDA (on that GPU) when the batch is
    on a GPU and onnxruntime has the CUDA provider, the CPU otherwise (and as CUDA's fallback)."""
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxNetwork(nn.Module):
    """An ONNX model as a ``torch.nn.Module``: float32 ``(N, bands, h, w)`` in, the model's
    ``(N, classes, h, w)`` output back as a tensor on the input's device.

    Inputs the file fixes are met here: a fixed batch size by running the batch in slices (the
    last one padded with zeros), a fixed height and width by padding smaller tiles with zeros
    at the bottom and right and cropping the output. ``sigmoid``: the model outputs one
    probability per pixel, returned as two channels ``(1 - p, p)``.
    """

    def __init__(self, path: str | os.PathLike, signature: OnnxSignature, sigmoid: bool = False) -> None:
        super().__init__()
        self.path = os.path.abspath(path)
        self.signature = signature
        self.sigmoid = sigmoid
        self._sessions: dict[str, Any] = {}  # device -> InferenceSession, made on first use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        pixels = self._padded(x.detach().to("cpu", torch.float32).contiguous().numpy())
        session = self._session(x.device)
        step = self.signature.fixed_batch or batch
        names = [self.signature.output_name]
        outputs = [session.run(names, {self.signature.input_name: pixels[start:start + step]})[0]
                   for start in range(0, len(pixels), step)]
        out = np.concatenate(outputs)[:batch, ..., :height, :width]
        if out.ndim == 3:
            out = out[:, None]
        if self.sigmoid:
            out = np.concatenate([1.0 - out, out], axis=1)
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)

    def _padded(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` padded with zeros to the fixed batch multiple and the fixed tile size."""
        batch, bands, height, width = pixels.shape
        step = self.signature.fixed_batch or batch
        rows, columns = self.signature.fixed_size or (height, width)
        if height > rows or width > columns:
            raise OnnxError(
                f"the ONNX model takes tiles of {rows}x{columns} px at most, not {height}x{width}: "
                f"use --tile-size {min(rows, columns)} or less"
            )
        size = (-(-batch // step) * step, bands, rows, columns)
        if size == pixels.shape:
            return pixels
        padded = np.zeros(size, dtype=np.float32)
        padded[:batch, :, :height, :width] = pixels
        return padded

    def _session(self, device: torch.device) -> Any:
        key = str(device)
        if key not in self._sessions:
            ort = onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # the thread budget torch was given
            options.log_severity_level = 3
            providers = execution_providers(device, ort.get_available_providers())
            self._sessions[key] = ort.InferenceSession(self.path, options, providers=providers)
        return self._sessions[key]

    def providers(self, device: str | torch.device = "cpu") -> list[str]:
        """The execution providers the session for ``device`` runs with."""
        return self._session(torch.device(device)).get_providers()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sessions"] = {}  # sessions stay in their process; a copy makes its own
        return state

    def extra_repr(self) -> str:
        return f"path={self.path!r}"


def load_onnx(path: str | os.PathLike) -> tuple[OnnxNetwork, ModelCard]:
    """The network of an ONNX file and its card (see the module's docstring)."""
    signature = read_signature(path)
    card, sigmoid = read_card(signature, path)
    return OnnxNetwork(path, signature, sigmoid).eval(), card


def _dims(shape: Sequence[Any]) -> tuple[int | None, ...]:
    """onnxruntime's shape (ints, names of dynamic axes, or None) with every dynamic axis None."""
    return tuple(d if isinstance(d, int) and d > 0 else None for d in shape)
