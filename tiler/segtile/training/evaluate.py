"""``segtile eval``: compare a predicted mask with ground truth, chunk by chunk, at any size.

The prediction is any single-band raster of class indices (a segtile mask GeoTIFF, say) read in
windows of ``chunk_size``; the ground truth is read on the prediction's grid through
:func:`segtile.sources.labels.open_labels`, so it may be a label raster (reprojected when on another grid)
or polygons, rasterised as for training. A pixel is compared when the prediction is valid there
(not its nodata, not 255) and the truth labels it (not its nodata, not 255). Only a confusion
matrix is kept from chunk to chunk; the metrics (:mod:`segtile.training.metrics`) come from it at the end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window
from tqdm import tqdm

from segtile.errors import EvalError, root_cause_line
from segtile.sources import Source, open_source
from segtile.sources.labels import IGNORE, cell_window, cells, open_labels
from segtile.training.metrics import Scores, confusion_matrix, scores


@dataclass(frozen=True)
class Evaluation:
    """The classes compared and their scores."""

    classes: tuple[str, ...]
    scores: Scores


def evaluate(prediction: str | os.PathLike, truth: str | os.PathLike, *, classes: Sequence[str] | None = None,
             class_field: str | None = None, chunk_size: int = 1024, progress: bool = False) -> Evaluation:
    """Score the mask ``prediction`` against ``truth``.

    Args:
        prediction: a single-band raster of class indices.
        truth: a label raster or a polygon file (see :mod:`segtile.sources.labels`).
        classes: the class names in index order; default: those the prediction carries
            (segtile masks: ``CLASS_NAMES`` of band 1, or the ``SEGTILE_CARD`` tag).
        class_field: for polygon ground truth, the field holding class names.
        chunk_size: side of the windows read at once (memory grows with its square).
        progress: show a progress bar over the chunks on stderr.

    Raises:
        EvalError: no class names, a prediction of several bands or with values that are not
            class indices, or no pixel to compare.
        LabelError, SourceError: the files cannot be read or placed on one grid.
    """
    source = open_source(prediction)
    with source:
        if source.count != 1:
            raise EvalError(f"{prediction}: a prediction has one band of class indices, this has {source.count}")
        names = _class_names(prediction, classes)
        with open_labels(truth, like=source, classes=names, class_field=class_field) as labels:
            confusion = np.zeros((len(names), len(names)), dtype=np.int64)
            labelled = 0
            grid = cells(labels.shape, chunk_size)
            for cell in tqdm(list(np.ndindex(grid)), desc="segtile eval", unit="chunk", disable=not progress):
                window = cell_window(cell, chunk_size, labels.shape)
                truth_labels = labels.read(window)
                labelled += int((truth_labels != IGNORE).sum())
                confusion += _chunk_confusion(source, truth_labels, window, len(names), prediction)
    result = scores(confusion)
    if result.pixels == 0:
        raise EvalError(_nothing_compared(prediction, truth, labelled))
    return Evaluation(names, result)


def _nothing_compared(prediction: str | os.PathLike, truth: str | os.PathLike, labelled: int) -> str:
    """Why no pixel was compared: the ground truth labels none on the prediction's grid, or only
    pixels the prediction leaves out."""
    if labelled == 0:
        return (f"no pixel to compare: {truth} labels no pixel on the grid of {prediction} (an empty or damaged "
                "file, or labels of another place or image)")
    return f"no pixel to compare: the {labelled} pixels {truth} labels are all nodata in {prediction}"


def _chunk_confusion(source: Source, truth: np.ndarray, window: Window, classes: int,
                     path: str | os.PathLike) -> np.ndarray:
    predicted, valid = source.read_with_valid(window)
    predicted = predicted[0]
    counted = truth != IGNORE
    counted &= predicted != IGNORE
    if valid is not None:
        counted &= valid
    if predicted.dtype.kind == "f":
        fractional = counted & (predicted != np.round(predicted))
        if fractional.any():
            raise EvalError(f"{path}: predicted value {predicted[fractional][0]:g} is not a class index: a "
                            f"prediction is a mask of class indices, and this one holds {predicted.dtype} values "
                            "(probabilities or scores?)")
    bad = counted & ((predicted < 0) | (predicted >= classes))
    if bad.any():
        raise EvalError(f"{path}: predicted value {predicted[bad][0]:g} is not a class index 0-{classes - 1}: "
                        "is it the mask of a model with other classes?")
    return confusion_matrix(truth, predicted, classes, counted)


def prediction_classes(path: str | os.PathLike) -> tuple[str, ...] | None:
    """The class names a mask carries: band 1's ``CLASS_NAMES`` tag, else the classes of the
    model card in the ``SEGTILE_CARD`` tag (both JSON, as segtile writes them); ``None`` when
    it has neither."""
    try:
        with rasterio.open(path) as dataset:
            band_tags, tags = dataset.tags(1), dataset.tags()
    except RasterioError as exc:
        raise EvalError(f"cannot read {path}: {root_cause_line(exc)}") from None
    for text, key in ((band_tags.get("CLASS_NAMES"), None), (tags.get("SEGTILE_CARD"), "classes")):
        if not text:
            continue
        try:
            value = json.loads(text)
            names = value[key] if key else value
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return tuple(names)
    return None


def _class_names(prediction: str | os.PathLike, classes: Sequence[str] | None) -> tuple[str, ...]:
    carried = prediction_classes(prediction)
    if classes is None:
        if carried is None:
            raise EvalError(f"{prediction} carries no class names: name them with --classes")
        return carried
    classes = tuple(classes)
    if carried is not None and len(carried) != len(classes):
        raise EvalError(f"{prediction} has {len(carried)} classes ({', '.join(carried)}), "
                        f"but {len(classes)} were named ({', '.join(classes)})")
    return classes


def report(evaluation: Evaluation) -> str:
    """The confusion matrix, per-class IoU and accuracy, and the means, as a text table."""
    names, s = evaluation.classes, evaluation.scores
    width = max(8, *(len(n) for n in names))
    cell = max(10, len(str(int(s.confusion.max()))) + 2, *(len(n) + 2 for n in names))
    lines = ["confusion matrix (pixels; rows: ground truth, columns: prediction)",
             " " * width + "".join(f"{n:>{cell}}" for n in names)]
    for name, row in zip(names, s.confusion):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}d}" for v in row))
    lines += ["", f"{'class':<{width}}{'IoU':>10}{'accuracy':>10}{'pixels':>{cell}}"]
    for name, iou, accuracy, target in zip(names, s.iou, s.accuracy, s.target):
        lines.append(f"{name:<{width}}{_number(iou):>10}{_number(accuracy):>10}{target:>{cell}d}")
    lines += ["", f"mIoU {_number(s.miou)}   mAcc {_number(s.macc)}   allAcc {_number(s.allacc)}   "
              f"({s.pixels} pixels compared)"]
    absent = [n for n, u in zip(names, s.union) if u == 0]
    if absent:
        lines.append(f"absent from both, left out of the means: {', '.join(absent)} "
                     f"(averaged over all classes as the reference does: mIoU {s.reference_miou:.4f}, "
                     f"mAcc {s.reference_macc:.4f})")
    return "\n".join(lines)


def as_json(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as a JSON-ready dict (undefined values as ``null``)."""
    names, s = evaluation.classes, evaluation.scores
    return {
        "classes": list(names),
        "confusion_matrix": s.confusion.tolist(),
        "confusion_matrix_axes": ["ground truth", "prediction"],
        "iou": dict(zip(names, map(_value, s.iou))),
        "accuracy": dict(zip(names, map(_value, s.accuracy))),
        "pixels": dict(zip(names, s.target.tolist())),
        "mIoU": _value(s.miou),
        "mAcc": _value(s.macc),
        "allAcc": _value(s.allacc),
        "pixels_compared": s.pixels,
        "reference": {"mIoU": s.reference_miou, "mAcc": s.reference_macc},
    }


def _number(value: float) -> str:
    return "-" if np.isnan(value) else f"{value:.4f}"


def _value(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
