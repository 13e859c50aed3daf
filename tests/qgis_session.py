"""A headless PyQGIS session for tests/test_qgis.py, run by QGIS's Python (not by pytest).

    python3 tests/qgis_session.py PLUGINS_DIR IMAGE OUT_DIR ONE_BAND_IMAGE

Starts the installed segtile plugin as ``qgis_process`` does (``initProcessing()``, no
interface), then prints one JSON object on stdout:

- ``loaded``: ``segtile:segment`` run with ``processing.runAndLoadResults``, as the Processing
  dialog runs it; for each layer it added to the project, its renderer and legend entries;
- ``canceled``: the algorithm run with a feedback that cancels at its first progress report:
  whether it succeeded, the errors it reported, and the files left in its output folder;
- ``failed``: the algorithm run on a one-band image (the default model takes three): whether it
  succeeded, and every line its feedback was given (what the Processing dialog's log shows);
- ``batch``: whether the algorithm offers "Run as batch process" (``FlagSupportsBatch``), and
  the rows of a batch run as that dialog runs them (one algorithm instance, a context per row: a
  row that fails, the one-band image, then one that does): each row's success and the files in
  the batch's folder.
"""

import json
import os
import sys
from pathlib import Path

from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback, QgsProject


class CancelAtFirstProgress(QgsProcessingFeedback):
    """Presses Cancel as soon as the algorithm reports progress; keeps the errors reported."""

    def __init__(self):
        super().__init__()
        self.errors = []
        self.progressChanged.connect(lambda _: self.cancel())

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS's names)
        self.errors.append(error)


class Recording(QgsProcessingFeedback):
    """Keeps every line the algorithm reports, as the Processing dialog's log would show them."""

    def __init__(self):
        super().__init__()
        self.lines = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803 (QGIS's names)
        self.lines.append(f"error: {error}")

    def pushInfo(self, info):  # noqa: N802 (QGIS's name)
        self.lines.append(f"info: {info}")

    def pushWarning(self, warning):  # noqa: N802 (QGIS's name)
        self.lines.append(f"warning: {warning}")

    def pushCommandInfo(self, info):  # noqa: N802 (QGIS's name)
        self.lines.append(f"command: {info}")


def legend(layer) -> dict:
    """A layer's renderer type and its entries: (value, label, colour) per class."""
    renderer = layer.renderer()
    if renderer.type() == "paletted":
        entries = [(int(c.value), c.label, c.color.name()) for c in renderer.classes()]
    elif renderer.type() == "categorizedSymbol":
        entries = [(c.value(), c.label(), c.symbol().color().name()) for c in renderer.categories()]
    else:
        entries = []
    return {"source": layer.source().split("|")[0], "renderer": renderer.type(), "entries": entries}


def main(plugins_dir: str, image: str, out_dir: str, one_band_image: str) -> dict:
    out = Path(out_dir)
    sys.path[:0] = [plugins_dir, str(Path(QgsApplication.pkgDataPath(), "python", "plugins"))]  # ours, QGIS's
    from processing.core.Processing import Processing

    Processing.initialize()
    import processing

    import segtile as plugin  # the installed plugin (QGIS's Python has no segtile library)

    started = plugin.classFactory(None)  # kept, as QGIS keeps its plugins: it owns the provider's wrapper
    started.initProcessing()
    (out / "loaded").mkdir()
    processing.runAndLoadResults("segtile:segment", {
        "INPUT": image, "OUTPUT": str(out / "loaded" / "mask.tif"), "POLYGONS": str(out / "loaded" / "polygons.shp"),
    })
    loaded = [legend(layer) for layer in QgsProject.instance().mapLayers().values()]

    folder = out / "canceled"
    folder.mkdir()
    feedback = CancelAtFirstProgress()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segtile:segment")
    _, succeeded = algorithm.run({
        "INPUT": image, "OUTPUT": str(folder / "mask.tif"), "POLYGONS": str(folder / "polygons.gpkg"),
        "TILE_SIZE": 32, "OVERLAP": 16,
    }, QgsProcessingContext(), feedback)
    canceled = {"succeeded": succeeded, "errors": feedback.errors, "files": sorted(os.listdir(folder))}

    recording = Recording()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segtile:segment")
    _, succeeded = algorithm.run({"INPUT": one_band_image, "OUTPUT": str(out / "failed.tif")},
                                 QgsProcessingContext(), recording)
    failed = {"succeeded": succeeded, "lines": recording.lines}
    return {"loaded": loaded, "canceled": canceled, "failed": failed, "batch": batch(image, one_band_image, out)}


def batch(image: str, one_band_image: str, out: Path) -> dict:
    """The rows of a "Run as batch process" table, run as QGIS's batch dialog runs them."""
    from qgis.core import QgsProcessingAlgorithm

    folder = out / "batch"
    folder.mkdir()
    algorithm = QgsApplication.processingRegistry().createAlgorithmById("segtile:segment")
    rows = [{"INPUT": one_band_image, "OUTPUT": str(folder / "failed.tif")},
            {"INPUT": image, "OUTPUT": str(folder / "second.tif"), "POLYGONS": str(folder / "second.gpkg")}]
    succeeded = [algorithm.run(row, QgsProcessingContext(), Recording())[1] for row in rows]
    return {"supports_batch": bool(algorithm.flags() & QgsProcessingAlgorithm.FlagSupportsBatch),
            "succeeded": succeeded, "files": sorted(os.listdir(folder))}


if __name__ == "__main__":
    application = QgsApplication([], False)
    application.initQgis()
    report = main(*sys.argv[1:5])
    print(json.dumps(report))
    application.exitQgis()
