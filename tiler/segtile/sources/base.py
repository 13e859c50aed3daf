"""The Source contract: a lazy, windowed, georeferenced image of shape (bands, height, width)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np
from rasterio.windows import Window

from segtile.errors import SourceError
from segtile.georef import Georef


class Source(ABC):
    """An image that is read window by window, never whole.

    Subclasses set these attributes in ``__init__``:

    * ``shape``: ``(bands, height, width)`` at level 0, after band selection;
    * ``dtype``: numpy dtype of the pixels (kept as stored, never converted);
    * ``band_names``: one name per selected band;
    * ``georef``: :class:`~segtile.georef.Georef` of level 0;
    * ``level_shapes``: ``(height, width)`` of each pyramid level, level 0 first;
    * ``has_mask``: whether some pixels may be invalid (nodata, alpha, internal mask);
    * ``files``: the local files read (outputs must never replace them), empty for arrays;
    * ``notes``: what the user should know of how the file was read (metadata set aside), if anything.
    """

    shape: tuple[int, int, int]
    dtype: np.dtype
    band_names: tuple[str, ...]
    georef: Georef
    level_shapes: tuple[tuple[int, int], ...]
    has_mask: bool = False
    files: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @abstractmethod
    def read(self, window: Window, level: int = 0) -> np.ndarray:
        """Pixels of ``window`` (in ``level``'s pixel grid) as an array ``(bands, h, w)``.

        The window must lie inside the image; callers pad themselves. The array may be a view
        in another memory order than C's: a slide's windows keep their samples interleaved, as
        stored (``(h, w, bands)`` memory), which is the order a channels-last network takes.
        """

    def read_valid(self, window: Window, level: int = 0) -> np.ndarray | None:
        """Boolean ``(h, w)`` array, True where pixels are valid; ``None`` when all are."""
        return None

    def read_with_valid(self, window: Window, level: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
        """:meth:`read` and :meth:`read_valid` of one window; sources whose validity comes from
        the pixels themselves override it to read them once."""
        return self.read(window, level), self.read_valid(window, level)

    def select_bands(self, bands: Sequence[int]) -> Source:
        """A source reading only ``bands`` (1-based, among this source's bands, order kept).

        Backends that can read a subset of bands override this; others cannot re-band.
        """
        raise SourceError(f"{type(self).__name__} cannot select bands: open it with the bands wanted")

    def close(self) -> None:  # noqa: B027 (a source with nothing to release keeps this)
        """Release file handles (safe to call twice)."""

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]

    @property
    def count(self) -> int:
        return self.shape[0]
