"""Inference: what runs inside a task, on a batch of tiles.

- ``predictor``: the picklable :class:`ModelSpec`, and the :class:`Predictor` each process builds
  from it once (normalise, run the network channels-last under autocast, check its output, weight
  the logits);
- ``normalise``: the one normalisation, shared with training;
- ``tta``: the network run on the flipped, rotated and rescaled copies of a batch;
- ``devices``: device names and precisions, checked where the job is set up, resolved where the
  network runs (``segtile.models.borrowed`` runs a caller's own module without changing it).
"""

from segtile.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "segtile.inference.predictor": ("ModelSpec", "Predictor", "BatchResult", "get_predictor", "autocast"),
    "segtile.inference.normalise": ("Normalisation", "normalise_"),
    "segtile.inference.tta": ("augmented",),
    "segtile.inference.devices": ("PRECISIONS", "check_device", "resolve_device", "check_precision"),
})
