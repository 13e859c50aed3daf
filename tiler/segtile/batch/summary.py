"""The summary of a run over many inputs: one row per input, in a CSV or JSON file."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path

from segtile.batch.run import ItemResult
from segtile.errors import BatchError

SUMMARY_FIELDS = ("input", "status", "error", "tiles", "seconds", "outputs")


def check_summary_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise :class:`BatchError` before any work when the summary cannot be written at ``path``:
    not ``.csv`` or ``.json``, a missing folder, or a file that exists (without ``overwrite``)."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise BatchError(f"--summary writes .csv or .json, not {path.name}")
    if not path.absolute().parent.is_dir():
        raise BatchError(f"--summary: the folder {path.absolute().parent} does not exist")
    if path.exists() and not overwrite:
        raise BatchError(f"--summary: {path} exists (use --overwrite)")


def write_summary(path: str | os.PathLike, results: Sequence[ItemResult]) -> None:
    """One row per item (:data:`SUMMARY_FIELDS`) in a CSV file (outputs joined by ``;``) or a
    JSON list of objects, by ``path``'s extension."""
    path = Path(path)
    rows = [result.row() for result in results]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "outputs": ";".join(row["outputs"])})
