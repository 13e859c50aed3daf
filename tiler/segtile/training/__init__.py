"""Training and evaluation: ``segtile train`` and ``segtile eval``.

- ``runner``: the ``train`` command's run: data, network, card, checkpoints, resuming;
- ``loop``: the training loop (main + 0.4 x auxiliary cross-entropy, SGD, the poly schedule,
  validation mIoU, the state to resume from);
- ``sampling``: training and validation windows read lazily, split by spatial blocks;
- ``augment``: flips, 90° rotations, colour jitter;
- ``datacard``: the model card filled from the training data;
- ``metrics``, ``evaluate``: confusion matrices, IoU and mIoU; a mask scored against ground truth.
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.training.runner": ("run_train",),
    "segtile.training.loop": ("TrainOptions", "TrainingState", "EpochResult", "train", "validate"),
    "segtile.training.sampling": ("TrainingData", "Sample"),
    "segtile.training.datacard": ("card_from_data",),
    "segtile.training.metrics": ("Scores", "confusion_matrix", "scores"),
    "segtile.training.evaluate": ("Evaluation", "report", "as_json"),
})
