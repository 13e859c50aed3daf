"""Models installed with segtile, and the one ``segtile IMAGE --out mask.tif`` uses by default.

The demo models live in ``models/segtile/models/demo/`` (package data, so they install with segtile); each is
known by its file's stem (``--model landsat_rgb_psp18``). With no ``--model``, segtile uses
``$SEGTILE_MODEL`` when it is set, else the installed default for the image's bands:
:data:`NEAR_INFRARED_MODEL` when the image has bands named red, green, blue and nir (its
descriptions or colours say so: water is found by its near-infrared absorption, which true colour
cannot see), else :data:`DEFAULT_MODEL` (true colour, red, green and blue).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from segtile.errors import ModelNotFoundError
from segtile.models.card import bands_by_name

FOLDER = Path(__file__).resolve().parent / "demo"
DEFAULT_MODEL = "landsat_rgb_psp18"
NEAR_INFRARED_MODEL = "water_rgbn_psp18"
NEAR_INFRARED_BANDS = ("red", "green", "blue", "nir")  # the band names of its card, in its order
DEFAULTS = (f"the installed default for each image: {NEAR_INFRARED_MODEL} where its bands are named red, green, "
            f"blue and nir, else {DEFAULT_MODEL}")
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
    default: ``$SEGTILE_MODEL``, else the installed default for an image whose bands are not
    known, the true-colour one (:func:`installed_default` chooses by an image's bands).
    ``given_by`` names the argument in messages.

    Raises:
        ModelNotFoundError: no such file or installed model.
    """
    if model is None:
        chosen = os.environ.get(ENVIRONMENT_VARIABLE)
        if chosen:
            return ChosenModel(_existing(chosen, f"${ENVIRONMENT_VARIABLE}"), f"from ${ENVIRONMENT_VARIABLE}")
        return installed_default(())
    return ChosenModel(_existing(model, given_by), f"from {given_by}")


def chosen_before_the_image(model: str | os.PathLike | None, given_by: str = "--model") -> ChosenModel | None:
    """:func:`choose_model` of ``model`` when the image does not enter the choice (a model given,
    or ``$SEGTILE_MODEL``); ``None`` when it does: the installed default, chosen by each image's
    bands (:func:`installed_default`)."""
    if model is None and not os.environ.get(ENVIRONMENT_VARIABLE):
        return None
    return choose_model(model, given_by)


def installed_default(band_names: Sequence[str]) -> ChosenModel:
    """The installed default model for an image whose bands are named ``band_names``: the
    near-infrared model when they include red, green, blue and nir (any case), else the
    true-colour one."""
    if bands_by_name(band_names, NEAR_INFRARED_BANDS) is not None:
        return ChosenModel(builtin_models()[NEAR_INFRARED_MODEL],
                           "the installed default for images with red, green, blue and nir bands")
    origin = "the installed default"
    if len(band_names) >= len(NEAR_INFRARED_BANDS):  # it may have a near-infrared band not named so
        origin += (f"; if one of its bands is near-infrared, --model {NEAR_INFRARED_MODEL} --bands R,G,B,NIR (their "
                   "numbers) finds water by it")
    return ChosenModel(builtin_models()[DEFAULT_MODEL], origin)


def _existing(model: str | os.PathLike, given_by: str) -> Path:
    path = Path(model)
    if path.exists():
        return path
    installed = builtin_models()
    if str(model) in installed:
        return installed[str(model)]
    names = ", ".join(installed) or "none"
    raise ModelNotFoundError(f"{given_by}: no such file or installed model: {model} (installed models: {names})")
