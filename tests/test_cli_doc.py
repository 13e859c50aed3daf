"""docs/cli.md embeds each command's own --help, so the reference cannot drift from the code."""

import importlib.util
from pathlib import Path

from segtile.cli import COMMANDS

DOCS = Path(__file__).resolve().parents[1] / "docs"
spec = importlib.util.spec_from_file_location("generate_cli_reference", DOCS / "generate_cli_reference.py")
generator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generator)


def test_cli_reference_matches_the_parsers():
    text = (DOCS / "cli.md").read_text()
    documented = {match.group(2) for match in generator.BLOCK.finditer(text)}
    assert documented == set(COMMANDS), "docs/cli.md needs one generated --help block per command"
    assert generator.updated(text) == text, (
        "docs/cli.md is out of date: run `python docs/generate_cli_reference.py`"
    )
