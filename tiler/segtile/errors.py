"""The one family of errors a user can cause, and the notes segtile gives.

Every error that bad input, a bad model, bad options or an output in the way can raise derives
from :class:`SegtileError`: the CLI reports these in one line with exit status 2, and anything
else as a failure of segtile itself (exit status 1). Most also derive from ``ValueError``, the
Python convention for a bad argument, so ``except ValueError`` keeps working in user code.

The whole family is defined here, grouped by the room of the package that raises it (the flow:
sources, tiling, models and inference, engine, writers, store, the API, training, the
commands); each module that raises one imports it from here, so the old names
(``segtile.sources.SourceError``, ``segtile.writers.OutputError``, ``segtile.models.CardError``...)
still work. The warnings at the end are the notes: a run that goes otherwise than its
arguments alone say, never a silent change.
"""

from __future__ import annotations

import os
import stat


class SegtileError(Exception):
    """Something the user can fix: the message says what, in one line."""


# Sources: images, labels and masks on the working grid (segtile.sources)


class SourceError(SegtileError, ValueError):
    """A source cannot be opened or read (missing, unreadable, bad band selection...)."""


class LabelError(SegtileError, ValueError):
    """Labels that cannot be read, placed on the image's grid, or mapped to the classes."""


class TissueError(SegtileError, ValueError):
    """Tissue detection asked of an image it cannot work on."""


class GridChoiceError(SegtileError, ValueError):
    """The grid options contradict each other, or the grid they leave would be absurd."""


# Tiling: tiles, blends, test-time augmentation and the memory plan (segtile.tiling)


class GridError(SegtileError, ValueError):
    """Tile size or overlap are unusable."""


class BlendError(SegtileError, ValueError):
    """Unknown blend name."""


class AugmentationError(SegtileError, ValueError):
    """An unknown augmentation or scale."""


class BudgetError(SegtileError, ValueError):
    """A memory limit that cannot be read, or a job that cannot be run within it."""


# Models: networks, cards and checkpoints (segtile.models), and running them (segtile.inference)


class CardError(SegtileError, ValueError):
    """A model card is missing fields or its fields disagree with each other."""


class CheckpointError(SegtileError, ValueError):
    """A file is not a usable checkpoint: missing, unreadable, of another kind, or inconsistent."""


class ArchitectureError(SegtileError, ValueError):
    """A network was asked for with options it does not have (depth, width, bins...)."""


class ModelNotFoundError(SegtileError, ValueError):
    """A ``--model`` that is neither a file nor the name of an installed model."""


class OnnxError(SegtileError, ValueError):
    """An ONNX file cannot be run or written: onnxruntime or onnx missing, or a model segtile
    cannot drive (several inputs, an input that is not float32 NCHW, tiles of the wrong size)."""


class DeviceError(SegtileError, ValueError):
    """The device or precision asked for cannot be used."""


class ModelError(SegtileError):
    """The network failed on a batch, or returned something that is not logits for its card."""


# Engine: where the work runs (segtile.engine)


class ClusterError(SegtileError, ValueError):
    """A cluster that cannot be started or reached as asked."""


# Writers: outputs and the files beside them (segtile.writers)


class OutputError(SegtileError, ValueError):
    """An output cannot be written there (missing or read-only folder, named twice...)."""


class OutputExistsError(OutputError):
    """The output exists and overwriting was not asked for."""


class WriterInputError(SegtileError, ValueError):
    """The arrays handed to a writer do not fit the model card or each other."""


class PlacementError(WriterInputError):
    """An output cannot hold the image's polygons where they are (no pixel has the geographic
    coordinates it needs)."""


class VectorFormatError(WriterInputError):
    """The output's extension names no polygon format segtile writes."""


class UnknownClassError(WriterInputError):
    """A class to leave out is not one of the model card's classes."""


class ZarrStoreError(SegtileError, ValueError):
    """A Zarr store is not one segtile wrote (no labels array or no model card)."""


class CreationOptionError(SegtileError, ValueError):
    """A GDAL creation option the COG driver does not take, or a value it refuses."""


# The work store: finished chunks, the run they belong to, persisted results (segtile.store)


class WorkStoreBusyError(OutputError):
    """Another live run is using the work store of these outputs."""


class NotAWorkStoreError(OutputError):
    """A folder stands where the work store goes, and segtile cannot prove it is one of its own."""


class PersistError(SegtileError, ValueError):
    """A persisted result is asked for what it does not keep, or cannot be stored there."""


# The Python API: segment() and its result (segtile.api, segtile.result, segtile.preview)


class SegmentError(SegtileError, ValueError):
    """The arguments of :func:`segment` do not fit together."""


class PreviewError(SegtileError, ValueError):
    """The preview's arguments are out of range."""


# Training and evaluation (segtile.training)


class SamplingError(SegtileError, ValueError):
    """The images and labels leave nothing to train or validate on."""


class TrainError(SegtileError, ValueError):
    """The training data or options do not fit together."""


class EvalError(SegtileError, ValueError):
    """The prediction and the ground truth cannot be compared."""


# The commands (segtile.cli)


class RunError(SegtileError, ValueError):
    """The command line asks for something that cannot be done."""


class BatchError(SegtileError, ValueError):
    """Many inputs cannot make one run (no image found, an output without placeholder, two
    inputs writing one file), or some of its items failed."""


class ConvertError(SegtileError, ValueError):
    """The conversion asked for cannot be done (options that do not fit together)."""


class QgisInstallError(SegtileError, ValueError):
    """The plugin cannot be installed or removed there."""


# Notes: warnings that say how a run differs from what its arguments alone say


class ResolutionWarning(UserWarning):
    """The job runs otherwise than its arguments alone say, as the model card or the image
    suggests: at another pixel size than the image's own, on some of its bands, on a slide's
    tissue only, or with test-time augmentation (each in a note, also in ``result.notes``)."""


class ClippedWarning(UserWarning):
    """A polygon output leaves out the part of the image that has no geographic coordinates."""


class LeftoverWarning(UserWarning):
    """What a run that died left beside an output was cleaned up, or its commit finished or undone
    (the message says which; the ``segtile`` command prints it as a note)."""


_TORCHSCRIPT_PREAMBLE = "The following operation failed in the TorchScript interpreter"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line: its first line, except for TorchScript errors, whose
    first line only says that something failed (the cause is their last line); the type's name
    when the message is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if lines[0].startswith(_TORCHSCRIPT_PREAMBLE):
        return lines[-1]
    return lines[0]


def root_cause_line(exc: BaseException) -> str:
    """:func:`one_line` of the innermost cause of ``exc``: libraries wrap the useful message
    (rasterio wraps GDAL's in "Read failed. See previous exception")."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return one_line(exc)


# Paths no reader can use: files that give their bytes once, front to back. GDAL, tifffile, OGR
# and torch read files at random offsets; a FIFO (named pipe), a socket or a character device (a
# terminal, /dev/stdin) cannot give that: GDAL and OGR wait on a FIFO for a writer, deaf to
# Ctrl-C. Every path a user names (an image, a mask, labels, a model) is checked before a reader
# opens it, in every room, so the check lives with the errors it raises.

_SEQUENTIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                     (stat.S_ISCHR, "a character device"))


def refuse_sequential(path: str | os.PathLike, what: str, error: type[Exception]) -> None:
    """Raise ``error`` naming ``what`` (``"input"``, ``"model"``...) when ``path`` is a FIFO, a
    socket or a character device; regular files, folders, block devices and missing paths pass
    (the callers report missing ones in their own words)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    kind = next((name for is_kind, name in _SEQUENTIAL_KINDS if is_kind(mode)), None)
    if kind is not None:
        raise error(f"{what} {os.fspath(path)} is {kind}, not a regular file: segtile reads files at random "
                    "offsets; save the data to a file first")
