"""Models installed with segtile, and the one ``segtile IMAGE --out mask.tif`` uses by default.

The demo models live in ``models/segtile/models/demo/`` (package data, so they install with segtile); each is
known by its file's stem (``--model landsat_rgb_psp18``). With no ``--model``, segtile uses
``$SEGTILE_MODEL`` when it is set, else :data:`DEFAULT_MODEL`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from segtile.errors import ModelNotFoundError

FOLDER = Path(__file__).resolve().parent / "demo"
DEFAULT_MODEL = "landsat_rgb_psp18"
ENVIRONMENT_VARIABLE = "SEGTILE_MODEL"


@dataclass(frozen=True)
class ChosenModel:
    """The model a run uses: its file, and how it was chosen (for the run's first line)."""

    path: Path
    origin: str


def builtin_models() -> dict[str, Path]:
    """The installed demo models by name (their file's stem)."""
    return {path.stem: path for path in sorted(FOLDER.glob("*.pt"))}


def choose_model(model: str | os.PathLike | None, given_by: str = "--model") -> ChosenModel:
    """The file of ``model``: a path, the name of an installed model, or (``None``) the
    default: ``$SEGTILE_MODEL``, else the installed default model. ``given_by`` names the
    argument in messages.

    Raises:
        ModelNotFoundError: no such file or installed model.
    """
    if model is None:
        chosen = os.environ.get(ENVIRONMENT_VARIABLE)
        if chosen:
            return ChosenModel(_existing(chosen, f"${ENVIRONMENT_VARIABLE}"), f"from ${ENVIRONMENT_VARIABLE}")
        return ChosenModel(builtin_models()[DEFAULT_MODEL], "the installed default")
    return ChosenModel(_existing(model, given_by), f"from {given_by}")


def _existing(model: str | os.PathLike, given_by: str) -> Path:
    path = Path(model)
    if path.exists():
        return path
    installed = builtin_models()
    if str(model) in installed:
        return installed[str(model)]
    names = ", ".join(installed) or "none"
    raise ModelNotFoundError(f"{given_by}: no such file or installed model: {model} (installed models: {names})")
