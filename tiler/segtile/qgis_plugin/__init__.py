"""The segtile QGIS plugin: a Processing provider (``segtile``) whose algorithms run the segtile
command of the user's installation in a subprocess (see :mod:`.runner`).

QGIS calls :func:`classFactory`. Nothing here imports QGIS when the package is imported, so
``segtile qgis install`` can read the plugin's files from a Python without QGIS.
"""

__all__ = ["classFactory"]


def classFactory(iface):  # noqa: N802 (the name QGIS looks for)
    """The plugin object QGIS starts; ``iface`` is ``None`` under ``qgis_process``."""
    from .plugin import SegtilePlugin

    return SegtilePlugin(iface)
