"""``segtile convert``: a network from elsewhere, or in another format, as a file segtile runs.

Two conversions, chosen by where the network comes from (``source_format``) and by the output's
extension:

- ``semseg`` weights (hszhao/semseg's training checkpoints) -> a segtile checkpoint (``.pt``,
  ``.pth``) or an ONNX file (``.onnx``), with the card of the dataset they were trained on;
- a segtile checkpoint or TorchScript file (``segtile``) -> an ONNX file.

Every option and the output's place are checked before the weights are read; the output is
written under a temporary name and appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from segtile.errors import ConvertError
from segtile.models import LoadedModel, load_checkpoint, save_checkpoint
from segtile.models.checkpoint import CHECKPOINT_SUFFIXES, ONNX_SUFFIX
from segtile.models.onnx_export import check_export_dependencies, export_onnx
from segtile.models.onnx_runtime import OnnxNetwork
from segtile.models.semseg import convert_semseg, semseg_dataset
from segtile.writers.atomic import atomic_output, check_output

SOURCE_FORMATS = ("segtile", "semseg")


def convert(source: str | os.PathLike, out: str | os.PathLike, *, source_format: str = "segtile",
            dataset: str | None = None, overwrite: bool = False) -> Path:
    """Convert the network in ``source`` and write it to ``out``; return ``out``.

    Args:
        source: the network's file.
        out: a ``.pt``/``.pth`` segtile checkpoint (from ``semseg`` weights only) or an ``.onnx`` file.
        source_format: ``"segtile"`` (a segtile checkpoint or TorchScript file) or ``"semseg"``.
        dataset: for ``semseg``: ``ade20k``, ``voc2012`` or ``cityscapes``.
        overwrite: replace ``out`` if it exists.

    Raises:
        ConvertError: options that do not fit together.
        OutputError: ``out`` exists (without ``overwrite``), or its folder cannot be written.
        CheckpointError, CardError, OnnxError: the network cannot be read or written.
    """
    to_onnx = _check_options(source_format, dataset, Path(out))
    if to_onnx:
        check_export_dependencies()
    check_output(out, overwrite, protected=[source])
    loaded = _load(source, source_format, dataset)
    with atomic_output(out, overwrite) as target:
        if to_onnx:
            export_onnx(target, loaded.module, loaded.card)
        else:
            save_checkpoint(target, loaded.module, loaded.card)
    return Path(out)


def _check_options(source_format: str, dataset: str | None, out: Path) -> bool:
    """Raise :class:`ConvertError` unless the options fit together; return whether ``out`` is ONNX."""
    if source_format not in SOURCE_FORMATS:
        raise ConvertError(f"unknown source format {source_format!r} (known: {', '.join(SOURCE_FORMATS)})")
    if (source_format == "semseg") != (dataset is not None):
        raise ConvertError("--dataset names the dataset of semseg weights: give both --from semseg and --dataset")
    if dataset is not None:
        semseg_dataset(dataset)
    suffix = out.suffix.lower()
    if suffix not in (*CHECKPOINT_SUFFIXES, ONNX_SUFFIX):
        raise ConvertError(f"{out}: the output must be a segtile checkpoint (.pt, .pth) or an ONNX file (.onnx)")
    if suffix in CHECKPOINT_SUFFIXES and source_format == "segtile":
        raise ConvertError(f"{out}: a segtile model converts to .onnx; .pt outputs are made from --from semseg weights")
    return suffix == ONNX_SUFFIX


def _load(source: str | os.PathLike, source_format: str, dataset: str | None) -> LoadedModel:
    """The network in ``source`` and its card, as a :class:`~segtile.models.LoadedModel`."""
    if source_format == "semseg":
        return convert_semseg(source, dataset)
    loaded = load_checkpoint(source)
    if isinstance(loaded.module, OnnxNetwork):
        raise ConvertError(f"{source}: is an ONNX file already")
    return loaded
