"""segtile's version, as installed: light to import (the command's ``--version``, a work store's identity)."""

from __future__ import annotations


def version() -> str:
    """The installed distribution's version."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("segtile")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
