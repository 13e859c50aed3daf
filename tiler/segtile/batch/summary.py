"""The summary of a run over many inputs: one row per input, in a CSV or JSON file."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from segtile.batch.run import ItemResult
from segtile.errors import BatchError
from segtile.writers.durable import write_durably

SUMMARY_FIELDS = ("input", "status", "error", "tiles", "seconds", "outputs")


def check_summary_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise :class:`BatchError` before any work when the summary cannot be written at ``path``:
    not ``.csv`` or ``.json``, a missing folder, or a file in the way that is no summary of
    segtile's (without ``overwrite``). An earlier run's summary is replaced: running the same
    command again reports on this run."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".json"):
        raise BatchError(f"--summary writes .csv or .json, not {path.name}")
    if not path.absolute().parent.is_dir():
        raise BatchError(f"--summary: the folder {path.absolute().parent} does not exist")
    if os.path.lexists(path) and not overwrite and not _is_summary(path):
        raise BatchError(f"--summary: {path} exists and is no summary of segtile's (use --overwrite to replace it)")


def _is_summary(path: Path) -> bool:
    """Whether ``path`` is a file an earlier run wrote with :func:`write_summary`."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix.lower() == ".csv":
        return text.splitlines()[:1] == [",".join(SUMMARY_FIELDS)]
    try:
        rows = json.loads(text)
    except ValueError:
        return False
    return isinstance(rows, list) and all(isinstance(row, dict) and tuple(row) == SUMMARY_FIELDS for row in rows)


def write_summary(path: str | os.PathLike, results: Sequence[ItemResult]) -> None:
    """One row per item (:data:`SUMMARY_FIELDS`) in a CSV file (outputs joined by ``;``) or a
    JSON list of objects, by ``path``'s extension; written whole, then renamed into place."""
    path = Path(path)
    rows = [result.row() for result in results]
    if path.suffix.lower() == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    else:
        stream = io.StringIO(newline="")
        writer = csv.DictWriter(stream, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows({**row, "outputs": ";".join(row["outputs"])} for row in rows)
        text = stream.getvalue()
    write_durably(path, text.encode("utf-8"))
