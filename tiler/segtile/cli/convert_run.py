"""``segtile convert``: a network from elsewhere, or in another format, as a file segtile runs.

Where the network comes from (``source_format``) and what it becomes (``to``: by default from the
output's extension):

- ``semseg`` weights (hszhao/semseg's training checkpoints) -> a segtile checkpoint (``.pt``,
  ``.pth``), a TorchScript file or an ONNX file (``.onnx``), with the card of the dataset they
  were trained on;
- any model segtile runs (``segtile``: a checkpoint, a TorchScript file, the name of an installed
  model...) -> a TorchScript file (``.pt``, ``.pth``), its card embedded as ``card.json``, or an
  ONNX file, its card in the metadata.

Every option and the output's place are checked before the weights are read; the output is
written under a temporary name and appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

from segtile.cli.convert import TARGETS
from segtile.errors import ConvertError
from segtile.models import LoadedModel, load_checkpoint, save_checkpoint, save_torchscript
from segtile.models.builtin import choose_model
from segtile.models.checkpoint import CHECKPOINT_SUFFIXES, ONNX_SUFFIX
from segtile.models.onnx_export import check_export_dependencies, export_onnx
from segtile.models.onnx_runtime import OnnxNetwork
from segtile.models.semseg import convert_semseg, semseg_dataset
from segtile.writers.atomic import atomic_output, check_output

SOURCE_FORMATS = ("segtile", "semseg")


def convert(source: str | os.PathLike, out: str | os.PathLike, *, source_format: str = "segtile",
            dataset: str | None = None, to: str | None = None, overwrite: bool = False) -> Path:
    """Convert the network in ``source`` and write it to ``out``; return ``out``.

    Args:
        source: the network: its file, or (``segtile``) the name of an installed model.
        out: the file to write.
        source_format: ``"segtile"`` (anything ``--model`` takes) or ``"semseg"``.
        dataset: for ``semseg``: ``ade20k``, ``voc2012`` or ``cityscapes``.
        to: ``"checkpoint"`` (from ``semseg`` weights only), ``"torchscript"`` or ``"onnx"``;
            ``None``: ``onnx`` for an ``.onnx`` output, else a checkpoint from ``semseg`` weights
            and TorchScript from anything else.
        overwrite: replace ``out`` if it exists.

    Raises:
        ConvertError: options that do not fit together.
        ModelNotFoundError: ``source`` is neither a file nor an installed model.
        OutputError: ``out`` exists (without ``overwrite``), or its folder cannot be written.
        CheckpointError, CardError, OnnxError: the network cannot be read or written.
    """
    target_format = _check_options(source_format, dataset, Path(out), to)
    if target_format == "onnx":
        check_export_dependencies()
    if source_format == "segtile":
        source = choose_model(source, "SOURCE").path
    check_output(out, overwrite, protected=[source])
    loaded = _load(source, source_format, dataset)
    with atomic_output(out, overwrite) as target:
        _WRITERS[target_format](target, loaded.module, loaded.card)
    return Path(out)


_WRITERS = {"checkpoint": save_checkpoint, "torchscript": save_torchscript, "onnx": export_onnx}


def _check_options(source_format: str, dataset: str | None, out: Path, to: str | None) -> str:
    """Raise :class:`ConvertError` unless the options fit together; return the format to write."""
    if source_format not in SOURCE_FORMATS:
        raise ConvertError(f"unknown source format {source_format!r} (known: {', '.join(SOURCE_FORMATS)})")
    if to is not None and to not in TARGETS:
        raise ConvertError(f"unknown output format {to!r} (known: {', '.join(TARGETS)})")
    if (source_format == "semseg") != (dataset is not None):
        raise ConvertError("--dataset names the dataset of semseg weights: give both --from semseg and --dataset")
    if dataset is not None:
        semseg_dataset(dataset)
    suffix = out.suffix.lower()
    if suffix not in (*CHECKPOINT_SUFFIXES, ONNX_SUFFIX):
        raise ConvertError(f"{out}: the output must be a segtile checkpoint or TorchScript file (.pt, .pth) or an "
                           "ONNX file (.onnx)")
    target = to or ("onnx" if suffix == ONNX_SUFFIX else "checkpoint" if source_format == "semseg" else "torchscript")
    if (target == "onnx") != (suffix == ONNX_SUFFIX):
        wanted = ".onnx" if target == "onnx" else ".pt or .pth"
        raise ConvertError(f"{out}: --to {target} writes a {wanted} file")
    if target == "checkpoint" and source_format == "segtile":
        raise ConvertError(f"{out}: segtile checkpoints are made from --from semseg weights; convert a segtile model "
                           "--to torchscript or onnx")
    return target


def _load(source: str | os.PathLike, source_format: str, dataset: str | None) -> LoadedModel:
    """The network in ``source`` and its card, as a :class:`~segtile.models.LoadedModel`."""
    if source_format == "semseg":
        return convert_semseg(source, dataset)
    loaded = load_checkpoint(source)
    if isinstance(loaded.module, OnnxNetwork):
        raise ConvertError(f"{source}: is an ONNX file already")
    return loaded
