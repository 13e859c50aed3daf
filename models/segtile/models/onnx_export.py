"""Export a network to ONNX, its model card in the file's metadata.

The file takes ``input`` float32 ``(batch, bands, height, width)`` and gives ``logits``
``(batch, classes, height, width)``, batch, height and width dynamic; its ``metadata_props``
hold the card as JSON under ``segtile_card``, which :func:`segtile.models.load_checkpoint` reads
back. The export is checked before it is kept: onnxruntime runs it on an input of another size
than the one it was traced with, and its logits must equal the network's.

``nn.AdaptiveAvgPool2d`` (PSPNet's pyramid pooling) has no ONNX form for inputs whose size is
only known at run time, so the exported copy pools through :class:`SlicedAdaptiveAvgPool2d`,
the same average written with slices.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segtile.errors import OnnxError, one_line
from segtile.models.card import ModelCard
from segtile.models.onnx_runtime import CARD_KEY, INSTALL_HINT, onnxruntime

OPSET = 17
INPUT, OUTPUT = "input", "logits"
_TRACE_SIZE = (65, 65)  # traced with one size (8k + 1, PSPNet's exact size)...
_CHECK_SIZE = (57, 73)  # ...and checked with another, so no size was frozen into the graph
_TOLERANCE = 1e-3  # largest |difference| allowed, relative to the largest |logit|


class SlicedAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` written with slices and means, which ONNX exports for any input
    size: output cell ``i`` of ``n`` along an axis of length ``L`` averages
    ``[floor(i * L / n), ceil((i + 1) * L / n))``, as PyTorch does. The height is pooled first,
    then the width: every row of a cell has the same length, so the mean of the row means is
    the cell's mean."""

    def __init__(self, output_size: int | tuple[int, int]) -> None:
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dim, cells in zip((2, 3), self.output_size):
            length = x.shape[dim]
            bounds = [((i * length) // cells, ((i + 1) * length + cells - 1) // cells) for i in range(cells)]
            x = torch.cat([x.narrow(dim, start, end - start).mean(dim, keepdim=True) for start, end in bounds], dim)
        return x


def export_onnx(path: str | os.PathLike, module: nn.Module, card: ModelCard, opset: int = OPSET) -> Path:
    """Write ``module`` (in eval mode) and ``card`` to the ONNX file ``path``.

    Raises:
        OnnxError: onnx or onnxruntime is missing, the network cannot be exported, or the
            exported model does not give the network's logits.
    """
    check_export_dependencies()
    import onnx

    network = _exportable(module)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notices
            buffer = io.BytesIO()
            torch.onnx.export(network, (_probe(card, _TRACE_SIZE),), buffer, input_names=[INPUT],
                              output_names=[OUTPUT], opset_version=opset, dynamic_axes=_dynamic_axes(),
                              **_legacy_exporter())
    except Exception as exc:  # the exporter raises many kinds; report one line
        raise OnnxError(f"{type(module).__name__} cannot be exported to ONNX: {one_line(exc)}") from None
    model = onnx.load_from_string(buffer.getvalue())
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card.to_json()
    path = Path(path)
    onnx.save(model, str(path))
    _check_export(path, network, card)
    return path


def _exportable(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` with every ``nn.AdaptiveAvgPool2d`` sliced (a
    TorchScript module is exported as it is)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module.eval()
    network = copy.deepcopy(module).eval()
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d):
                setattr(parent, name, SlicedAdaptiveAvgPool2d(child.output_size))
    return network


def _check_export(path: Path, network: nn.Module, card: ModelCard) -> None:
    """Raise :class:`OnnxError` unless onnxruntime gives the network's logits on a new size."""
    ort = onnxruntime()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _probe(card, _CHECK_SIZE, batch=2)
    with torch.inference_mode():
        expected = network(x).numpy()
    got = session.run([OUTPUT], {INPUT: x.numpy()})[0]
    scale = max(float(np.abs(expected).max()), 1.0)
    if got.shape != expected.shape or float(np.abs(got - expected).max()) > _TOLERANCE * scale:
        raise OnnxError(
            f"the exported model does not give the network's logits on a {_CHECK_SIZE[0]}x{_CHECK_SIZE[1]} "
            "input: the network does not export for tiles of any size"
        )


def _probe(card: ModelCard, size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, card.in_channels, *size, generator=torch.Generator().manual_seed(0))


def _dynamic_axes() -> dict[str, dict[int, str]]:
    axes = {0: "batch", 2: "height", 3: "width"}
    return {INPUT: axes, OUTPUT: axes}


def _legacy_exporter() -> dict[str, bool]:
    """Ask for the TorchScript-based exporter where ``torch.onnx.export`` has a choice: it takes
    TorchScript modules and dynamic axes without onnxscript (torch >= 2.9 defaults to dynamo)."""
    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def check_export_dependencies() -> None:
    """Raise :class:`OnnxError` unless onnx (to write the file) and onnxruntime (to check it)
    are installed."""
    if importlib.util.find_spec("onnx") is None:
        raise OnnxError(f"ONNX export needs the onnx package: {INSTALL_HINT}")
    onnxruntime()
