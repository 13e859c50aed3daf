"""The plugin object: registers the segtile Processing provider with QGIS, and removes it."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import SegtileProvider


class SegtilePlugin:
    """Registers the provider from :meth:`initProcessing` (all that ``qgis_process`` calls, with
    no interface) and from :meth:`initGui` (the desktop), once."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.provider: SegtileProvider | None = None

    def initProcessing(self) -> None:  # noqa: N802 (QGIS's name)
        if self.provider is None:
            self.provider = SegtileProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 (QGIS's name)
        self.initProcessing()

    def unload(self) -> None:
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
