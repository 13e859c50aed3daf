"""The public names of a package, each imported from its module on first use (PEP 562).

A room's ``__init__`` lists what it offers, module by module, without importing any of it: so
importing one light module of a room (``segtile.engine.interrupt`` when the command starts,
``segtile.tiling.grid`` without torch) does not import the rest of the room.

>>> __getattr__, __all__ = lazy_exports(__name__, {"segtile.tiling.grid": ("Tile", "tile_grid")})
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import import_module
from typing import Any


def lazy_exports(package: str, modules: Mapping[str, Sequence[str]]) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` for ``package`` that imports each name from its module in
    ``modules`` (module name -> the names it exports) when first asked for, and the sorted
    names, for ``__all__``."""
    where = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, sorted(where)
