"""docs/cli.md embeds the parser's own --help, so the reference cannot drift from the code."""

import re
from pathlib import Path

from segtile.cli import help_text

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_cli_reference_matches_the_parser():
    text = DOC.read_text()
    match = re.search(r"<!-- BEGIN segtile --help -->\n```\n(.*?)```\n<!-- END segtile --help -->", text, re.S)
    assert match, "docs/cli.md lost its generated --help block"
    assert match.group(1) == help_text(), (
        "docs/cli.md is out of date: paste the output of "
        "`python -c 'from segtile.cli import help_text; print(help_text(), end=\"\")'`"
    )
