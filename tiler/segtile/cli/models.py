"""``segtile models``: the models installed with segtile, each with its card's one-line summary."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "List the models installed with segtile (the names --model and convert accept), each with its "
    "card's summary: classes, bands, pixel size, tiling. The default models are marked."
)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to ``commands``."""
    parser = commands.add_parser("models", help="list the installed models", description=DESCRIPTION)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Print one line per installed model: its name, whether it is a default, its summary."""
    from segtile.models import load_checkpoint
    from segtile.models.builtin import DEFAULT_MODEL, NEAR_INFRARED_MODEL, builtin_models

    marks = {DEFAULT_MODEL: " (default)",
             NEAR_INFRARED_MODEL: " (default for images with red, green, blue and nir bands)"}
    for name, path in builtin_models().items():
        default = marks.get(name, "")
        print(f"{name}{default}: {load_checkpoint(path).card.summary()}")
