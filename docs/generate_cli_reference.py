"""Rewrite the generated ``--help`` blocks of docs/cli.md from the parsers themselves.

Run after changing an option: ``python docs/generate_cli_reference.py``. Each block is marked
``<!-- BEGIN segtile COMMAND --help -->`` … ``<!-- END segtile COMMAND --help -->``;
tests/test_cli_doc.py fails when one is out of date.
"""

from __future__ import annotations

import re
from pathlib import Path

from segtile.cli import help_text

DOC = Path(__file__).resolve().parent / "cli.md"
BLOCK = re.compile(r"(<!-- BEGIN segtile (\w+) --help -->\n```\n)(.*?)(```\n<!-- END segtile \2 --help -->)", re.S)


def updated(text: str) -> str:
    """``text`` with every marked block replaced by its command's current ``--help``."""
    return BLOCK.sub(lambda m: m.group(1) + help_text(m.group(2)) + m.group(4), text)


if __name__ == "__main__":
    DOC.write_text(updated(DOC.read_text()))
