"""Resuming an interrupted run: which work store belongs to which run.

Every run of the ``segtile`` command keeps its finished chunks in a work store beside its first
output (``.NAME.segtile-work``), and removes it once every output is in place. A run that dies
leaves it behind. Its ``run.json`` records the run's identity: the input files (path, size,
modification time), the model file's SHA-256, the model card, the grid the model ran on, and the
options that change the pixels (tiling, blending, precision, augmentation, what is kept). With
``--resume``, a store whose identity is the run's own is continued; any other is replaced, so a
changed input or model is never mixed with old work. Without ``--resume`` an old store is
replaced too, and the run says it could have resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segtile.result import Segmentation
from segtile.workstore import WorkStore

SUFFIX = ".segtile-work"


def work_folder(first_output: Path) -> Path:
    """Where the work store of a run whose first output is ``first_output`` lives."""
    return first_output.parent / f".{first_output.name}{SUFFIX}"


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_identity(result: Segmentation, model: str | os.PathLike, precision: str | None) -> dict[str, Any]:
    """What makes two runs' chunks interchangeable (see the module docstring)."""
    options = result.options
    georef = result.georef
    inputs = []
    for path in result.inputs:
        stat = os.stat(path)
        inputs.append({"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})
    return {
        "inputs": inputs,
        "bands": list(result.source.band_names),
        "model": file_digest(model),
        "card": result.card.to_dict(),
        "grid": {"shape": list(result.shape), "crs": georef.crs.to_wkt() if georef.crs else None,
                 "transform": list(georef.transform)[:6] if georef.transform else None, "mpp": georef.mpp},
        "tiling": {"tile_size": options.tile_size, "overlap": options.overlap, "blend": options.blend,
                   "chunk_size": options.chunk_size, "alignment": options.alignment,
                   "precision": options.precision, "augmentation": [options.augmentation.mode,
                                                                    list(options.augmentation.scales)]},
        "probabilities": precision,
    }


@dataclass(frozen=True)
class Work:
    """The work store a run uses, what it already holds, and what to tell the user about it."""

    store: WorkStore
    done: frozenset[tuple[int, int]]
    note: str | None


def prepare_work(folder: Path, result: Segmentation, identity: dict[str, Any], precision: str | None,
                 resume: bool) -> Work:
    """The run's work store in ``folder``: the old one continued when ``resume`` and it is this
    run's, else a new one (replacing any old one, with a note)."""
    identity = json.loads(json.dumps(identity))  # as run.json gives it back
    old = WorkStore(folder)
    note = None
    if folder.exists():
        same = old.identity() == identity
        if resume and same:
            done = old.done()
            total = len(result.labels.chunks[0]) * len(result.labels.chunks[1])
            return Work(old, done, f"resuming: {len(done)} of {total} chunks were done")
        if resume:
            note = f"the work kept in {folder} is from another run (input, model or options differ): starting afresh"
        else:
            note = f"replaced the work an interrupted run left in {folder} (--resume would have continued it)"
        old.remove()
    elif resume:
        note = "nothing to resume: no work store beside the first output, starting afresh"
    store = WorkStore.create(folder, result.labels, result.nodata, result.card.num_classes, precision, identity)
    return Work(store, frozenset(), note)
