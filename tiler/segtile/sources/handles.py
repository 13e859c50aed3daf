"""File handles opened lazily, one per thread: GDAL datasets and TiffFiles must not be shared.

Reads come from many Dask threads at once, and sources are pickled to ``dask.distributed``
workers. A :class:`PerThreadHandles` keeps one handle per (thread, key), opened on first use
by a picklable ``opener``; it pickles to its opener alone, so each process reopens its own.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Generic, Hashable, Protocol, TypeVar


class Closable(Protocol):
    def close(self) -> None: ...


H = TypeVar("H", bound=Closable)


class PerThreadHandles(Generic[H]):
    """One handle per thread and key (a pyramid level, say), opened by ``opener(key)``."""

    def __init__(self, opener: Callable[[Hashable], H]) -> None:
        self._opener = opener
        self._reset()

    def _reset(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._by_thread: dict[threading.Thread, dict[Hashable, H]] = {}

    def get(self, key: Hashable = None) -> H:
        """The calling thread's handle for ``key``, opened now if this thread has none yet."""
        handles: dict[Hashable, H] | None = getattr(self._local, "handles", None)
        if handles is None:
            handles = self._local.handles = {}
            self._register(handles)
        handle = handles.get(key)
        if handle is None:
            handle = handles[key] = self._opener(key)
        return handle

    def _register(self, handles: dict[Hashable, H]) -> None:
        """Record the thread's handles so :meth:`close` reaches them; close those of dead threads."""
        with self._lock:
            for thread in [t for t in self._by_thread if not t.is_alive()]:
                _close_all(self._by_thread.pop(thread))
            self._by_thread[threading.current_thread()] = handles

    def close(self) -> None:
        """Close every thread's handles; later reads open new ones."""
        with self._lock:
            opened, self._by_thread = self._by_thread, {}
            self._local = threading.local()
        for handles in opened.values():
            _close_all(handles)

    def __del__(self) -> None:
        """Close the handles of a source dropped without ``close()`` (TiffFiles warn otherwise)."""
        if hasattr(self, "_by_thread"):
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"opener": self._opener}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._opener = state["opener"]
        self._reset()


def _close_all(handles: dict[Hashable, Closable]) -> None:
    for handle in handles.values():
        handle.close()
