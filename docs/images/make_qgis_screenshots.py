"""Remake the QGIS screenshots of docs/qgis.md from real QGIS, rendered without a display.

Run it with QGIS's Python (the one that imports ``qgis.core``), after ``segtile qgis install``,
from a shell where this repository's virtual environment is *not* active (QGIS's Python crashes
when a venv's ``bin`` comes first on PATH)::

    .venv/bin/segtile qgis install --plugins-dir build/qgis-plugins
    QT_QPA_PLATFORM=offscreen python3 docs/images/make_qgis_screenshots.py build/qgis-plugins

Any plugins folder works, the default profile's too (where a plain ``segtile qgis install`` puts
it). Pillow must be importable by QGIS's Python, as Debian's python3-pil is. It writes, beside
this script, PNGs reduced to 256 colours:

- ``qgis_dialog.png``: the ``segtile:segment`` algorithm dialog, as the Processing Toolbox opens it;
- ``qgis_map.png``: the sample image, the mask and the polygons over the image, rendered by QGIS
  with the styles segtile stored with them;
- ``qgis_layers.png``: the Layers panel with the legends of both outputs.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from pathlib import Path

from PIL import Image
from qgis.core import (
    QgsApplication,
    QgsLayerTreeModel,
    QgsMapRendererParallelJob,
    QgsMapSettings,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsCollapsibleGroupBox, QgsLayerTreeView
from qgis.PyQt import sip
from qgis.PyQt.QtCore import QBuffer, QIODevice, QSize, Qt
from qgis.PyQt.QtGui import QColor, QFont, QImage, QPainter
from qgis.PyQt.QtWidgets import QApplication, QGroupBox, QSplitter

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[1] / "examples" / "data" / "bahamas_rgb.tif"
PANEL = 300  # width of each map panel, pixels
POLYGON_OPACITY = 0.6  # polygons over the image: the image shows through


def start_plugin(plugins_dir: Path):
    """Processing, and the installed segtile plugin started as QGIS starts it."""
    sys.path[:0] = [str(plugins_dir), str(Path(QgsApplication.pkgDataPath(), "python", "plugins"))]
    from processing.core.Processing import Processing

    Processing.initialize()
    import segtile as plugin  # the installed plugin

    started = plugin.classFactory(None)
    started.initProcessing()
    return started


def segment(image: Path, folder: Path) -> tuple[Path, Path]:
    """Run ``segtile:segment`` on ``image``: the mask and the polygons it wrote."""
    import processing

    results = processing.run("segtile:segment", {
        "INPUT": str(image), "OUTPUT": str(folder / "mask.tif"), "POLYGONS": str(folder / "polygons.gpkg"),
    })
    return Path(results["OUTPUT"]), Path(results["POLYGONS"])


def dialog_screenshot(image: QgsRasterLayer, path: Path) -> None:
    """The algorithm dialog with the image chosen as input and every parameter shown (the
    Processing Toolbox's dialog, made without a main window)."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog

    dialog = AlgorithmDialog(QgsApplication.processingRegistry().createAlgorithmById("segtile:segment"))
    dialog.setParameters({"INPUT": image})
    dialog.show()
    dialog.resize(860, 900)
    advanced = dialog.findChild(QGroupBox, "grpAdvanced")  # made in C++: PyQt sees a QGroupBox
    sip.cast(advanced, QgsCollapsibleGroupBox).setCollapsed(False)
    for splitter in dialog.findChildren(QSplitter):
        splitter.setSizes([560, 280])  # the parameters, then the help
    QApplication.processEvents()
    save_small(dialog.grab().toImage(), path)
    dialog.close()


def render(layers: list, extent, size: QSize) -> QImage:
    """``layers`` (top first) rendered by QGIS's parallel map renderer."""
    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(extent)
    settings.setOutputSize(size)
    settings.setBackgroundColor(QColor("white"))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    return job.renderedImage()


def map_screenshot(image: QgsRasterLayer, mask: QgsRasterLayer, polygons: QgsVectorLayer, path: Path) -> None:
    """Three panels: the image, the mask, the polygons over the image; each titled."""
    extent = image.extent()
    size = QSize(PANEL, round(PANEL * extent.height() / extent.width()))
    polygons.setOpacity(POLYGON_OPACITY)
    panels = [("image", [image]), ("mask", [mask]), ("polygons over the image", [polygons, image])]
    title = 24
    canvas = QImage(PANEL * len(panels), size.height() + title, QImage.Format_ARGB32)
    canvas.fill(QColor("white"))
    painter = QPainter(canvas)
    painter.setFont(QFont("Sans", 10))
    for index, (name, layers) in enumerate(panels):
        painter.drawImage(index * PANEL, title, render(layers, extent, size))
        painter.drawText(index * PANEL, 0, PANEL, title, Qt.AlignCenter, name)
    painter.end()
    save_small(canvas, path)


def layers_screenshot(image: QgsRasterLayer, path: Path) -> None:
    """The Layers panel: the outputs' legends expanded, the image's folded."""
    root = QgsProject.instance().layerTreeRoot()
    root.findLayer(image.id()).setExpanded(False)
    view = QgsLayerTreeView()
    view.setModel(QgsLayerTreeModel(root, view))  # the view owns the model
    view.resize(240, 250)
    view.show()
    QApplication.processEvents()
    save_small(view.grab().toImage(), path)


def save_small(image: QImage, path: Path) -> None:
    """Save ``image`` as a PNG of at most 256 colours (median cut): a fraction of the bytes."""
    buffer = QBuffer()
    buffer.open(QIODevice.WriteOnly)
    image.save(buffer, "PNG")
    Image.open(io.BytesIO(bytes(buffer.data()))).convert("RGB").quantize(256).save(path, optimize=True)


def main(plugins_dir: Path) -> None:
    started = start_plugin(plugins_dir)  # noqa: F841 (kept alive: it holds the provider)
    with tempfile.TemporaryDirectory() as work:
        image_path = Path(work) / SAMPLE.name  # a copy: QGIS writes statistics beside what it opens
        shutil.copy(SAMPLE, image_path)
        mask_path, polygons_path = segment(image_path, Path(work))
        image = QgsRasterLayer(str(image_path), "bahamas_rgb")
        mask = QgsRasterLayer(str(mask_path), "mask")  # its default style: mask.qml
        polygons = QgsVectorLayer(str(polygons_path), "polygons")  # its default style, in the GeoPackage
        QgsProject.instance().addMapLayers([polygons, mask, image])
        dialog_screenshot(image, HERE / "qgis_dialog.png")
        map_screenshot(image, mask, polygons, HERE / "qgis_map.png")
        polygons.setOpacity(1.0)
        layers_screenshot(image, HERE / "qgis_layers.png")
        QgsProject.instance().removeAllMapLayers()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} PLUGINS_DIR (where `segtile qgis install --plugins-dir` put the plugin)")
    application = QgsApplication([], True)
    application.initQgis()
    main(Path(sys.argv[1]))
    application.exitQgis()
