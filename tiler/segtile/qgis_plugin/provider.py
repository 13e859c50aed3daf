"""The ``segtile`` Processing provider: its algorithms and the output formats segtile writes."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS

ICON = Path(__file__).resolve().parent / "icon.svg"


class SegtileProvider(QgsProcessingProvider):
    """Provider ``segtile``: ``segtile:segment`` and the other algorithms in :data:`ALGORITHMS`."""

    def id(self) -> str:
        return "segtile"

    def name(self) -> str:
        return "segtile"

    def longName(self) -> str:  # noqa: N802 (QGIS's name)
        return "segtile: segment images too large for memory"

    def icon(self) -> QIcon:
        return QIcon(str(ICON))

    def loadAlgorithms(self) -> None:  # noqa: N802 (QGIS's name)
        for algorithm in ALGORITHMS:
            self.addAlgorithm(algorithm())

    # Outputs are files segtile writes, in the formats it knows (chosen by extension).
    def supportsNonFileBasedOutput(self) -> bool:  # noqa: N802 (QGIS's name)
        return False

    def supportedOutputRasterLayerExtensions(self) -> list[str]:  # noqa: N802 (QGIS's name)
        return ["tif", "tiff"]

    def defaultRasterFileExtension(self) -> str:  # noqa: N802 (QGIS's name)
        return "tif"

    def supportedOutputVectorLayerExtensions(self) -> list[str]:  # noqa: N802 (QGIS's name)
        return ["gpkg", "shp", "geojson", "fgb"]

    def defaultVectorFileExtension(self, hasGeometry: bool = True) -> str:  # noqa: N802, N803 (QGIS's names)
        return "gpkg"
