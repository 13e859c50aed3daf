"""Segmentation metrics as the reference PSPNet evaluation computes them.

The reference (hszhao/semseg, ``util/util.py`` ``intersectionAndUnion`` and ``tool/test.py``)
sums, per class and over every pixel evaluated, the intersection ``I`` (predicted c where the
truth is c), the prediction's area and the truth's area ``T``; the union is
``U = prediction + T - I``. Then IoU = ``I / (U + eps)``, accuracy = ``I / (T + eps)``, mIoU and
mAcc are their means over the classes, and allAcc = ``sum(I) / sum(T)``.

One difference, on purpose: a class absent from both truth and prediction (``U = 0``) has no
IoU, and a class absent from the truth (``T = 0``) has no accuracy. The reference counts them as
0, so a class that simply does not occur in an image drags its mIoU down; here they are left out
of mIoU and mAcc (and reported as undefined). The reference's own figures, averaged over all
classes, are kept in :attr:`Scores.reference_miou` and :attr:`Scores.reference_macc`; they are
equal to ours whenever every class occurs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS = 1e-10
"""The reference's epsilon in every division."""


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, classes: int,
                     counted: np.ndarray | None = None) -> np.ndarray:
    """Pixel counts ``(classes, classes)`` int64: row = true class, column = predicted class.

    Args:
        truth, predicted: class indices of the same shape; every counted pixel must hold a value
            in ``0 ... classes - 1`` in both.
        counted: bool mask of the pixels to count (``None``: all).
    """
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    if counted is not None:
        keep = np.asarray(counted).ravel()
        truth, predicted = truth[keep], predicted[keep]
    pairs = truth.astype(np.int64) * classes + predicted.astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class Scores:
    """The metrics of one confusion matrix (see the module's docstring for the definitions).

    Attributes:
        confusion: ``(classes, classes)`` pixel counts, rows = truth, columns = prediction.
        intersection, union, target: per class, in pixels.
        iou, accuracy: per class; NaN where undefined (union or target 0).
        miou, macc: means of the defined values (NaN when none is).
        allacc: correctly predicted pixels / pixels compared.
        reference_miou, reference_macc: the reference's means over every class (undefined = 0).
    """

    confusion: np.ndarray
    intersection: np.ndarray
    union: np.ndarray
    target: np.ndarray
    iou: np.ndarray
    accuracy: np.ndarray
    miou: float
    macc: float
    allacc: float
    reference_miou: float
    reference_macc: float

    @property
    def pixels(self) -> int:
        """How many pixels were compared."""
        return int(self.target.sum())


def scores(confusion: np.ndarray) -> Scores:
    """IoU, accuracy and their means from a confusion matrix (rows = truth)."""
    confusion = np.asarray(confusion, dtype=np.int64)
    intersection = np.diag(confusion)
    target = confusion.sum(axis=1)
    union = confusion.sum(axis=0) + target - intersection
    reference_iou = intersection / (union + EPS)
    reference_accuracy = intersection / (target + EPS)
    iou = np.where(union > 0, reference_iou, np.nan)
    accuracy = np.where(target > 0, reference_accuracy, np.nan)
    return Scores(
        confusion=confusion, intersection=intersection, union=union, target=target,
        iou=iou, accuracy=accuracy,
        miou=_mean_defined(iou), macc=_mean_defined(accuracy),
        allacc=float(intersection.sum() / (target.sum() + EPS)),
        reference_miou=float(reference_iou.mean()), reference_macc=float(reference_accuracy.mean()),
    )


def _mean_defined(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")
