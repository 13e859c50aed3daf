"""The Processing algorithms of the segtile provider.

Each algorithm runs one ``segtile`` subcommand through :mod:`.runner`: :class:`SegtileAlgorithm`
turns the command's progress into the Processing feedback, Cancel into stopping it, its one-line
error into a ``QgsProcessingException`` (which QGIS reports once in the algorithm's log), its
messages into the parameters' names rather than the command's options, and gives every output
QGIS loads the style segtile stored with it. A subclass only declares its parameters, which
options they set, and builds its command line (and, for a command that reports figures on stdout,
reads them in :meth:`SegtileAlgorithm.results`).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from . import runner

PLUGIN_FOLDER = Path(__file__).resolve().parent


class SegtileAlgorithm(QgsProcessingAlgorithm):
    """An algorithm that runs one segtile command (see the module docstring).

    Subclasses set :attr:`NAME`, :attr:`TITLE` and :attr:`HELP`, and implement ``initAlgorithm``
    and :meth:`command`.
    """

    NAME = ""  # the algorithm's id in the provider: segtile:NAME
    TITLE = ""  # its name in the Processing toolbox
    HELP = ""  # the help shown beside its dialog
    PARAMETERS: dict[str, str] = {}  # segtile's option -> the parameter that sets it, for messages

    def __init__(self) -> None:
        super().__init__()
        self._outputs: dict = {}  # of the last run, styled by postProcessAlgorithm

    def name(self) -> str:
        return self.NAME

    def displayName(self) -> str:  # noqa: N802 (QGIS's name)
        return self.TITLE

    def shortHelpString(self) -> str:  # noqa: N802 (QGIS's name)
        return self.HELP

    def createInstance(self) -> SegtileAlgorithm:  # noqa: N802 (QGIS's name)
        return type(self)()

    def command(self, parameters: dict, context) -> tuple[list[str], dict]:
        """The segtile arguments for ``parameters`` (after the executable, with ``--progress
        json``), and the algorithm's outputs (output name -> file path, or ``None``)."""
        raise NotImplementedError

    def results(self, outputs: dict, outcome: runner.Outcome, feedback) -> dict:
        """The algorithm's results once the command succeeded (what it reports of them goes to
        ``feedback``): its outputs by default."""
        return outputs

    def processAlgorithm(self, parameters: dict, context, feedback) -> dict:  # noqa: N802 (QGIS's name)
        arguments, outputs = self.command(parameters, context)
        outcome = run_segtile(arguments, feedback, self.PARAMETERS)
        self._outputs = outputs
        return self.results(outputs, outcome, feedback)

    def postProcessAlgorithm(self, context, feedback) -> dict:  # noqa: N802 (QGIS's name)
        """Once the run is over, in QGIS's main thread (where the context is the one that loads the
        outputs): every output QGIS will load gets the style segtile stored with it."""
        for path in self._outputs.values():
            if path and context.willLoadLayerOnCompletion(path):
                context.layerToLoadOnCompletionDetails(path).setPostProcessor(DefaultStyle.for_output(path))
        return {}

    def optional_int(self, parameters: dict, name: str, context) -> int | None:
        """An optional integer parameter's value, ``None`` when it is not set."""
        if parameters.get(name) in (None, ""):
            return None
        return self.parameterAsInt(parameters, name, context)

    def options(self, parameters: dict, context, **flags: str) -> list[str]:
        """``--flag value`` for each optional string or integer parameter that is set, from
        ``flags`` (``flag=PARAMETER``, the flag's dashes as underscores)."""
        arguments = []
        for flag, name in flags.items():
            definition = self.parameterDefinition(name)
            if isinstance(definition, QgsProcessingParameterNumber):
                value = self.optional_int(parameters, name, context)
            else:
                value = self.parameterAsString(parameters, name, context).strip() or None
            if value is not None:
                arguments += [f"--{flag.replace('_', '-')}", str(value)]
        return arguments

    def device(self, parameters: dict, context) -> list[str]:
        """``--device`` from the :func:`device_parameter`."""
        return ["--device", self.parameterAsString(parameters, "DEVICE", context).strip() or "auto"]

    def raster_file(self, parameters: dict, name: str, context) -> str:
        """The file behind a raster layer parameter (segtile reads files, through GDAL)."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        if layer.providerType() != "gdal":
            raise QgsProcessingException(f"{layer.name()}: segtile reads raster files (GDAL layers), "
                                         f"not {layer.providerType()} layers")
        return layer.source()

    def labels_file(self, parameters: dict, name: str, context) -> str:
        """The file behind a labels parameter: a raster layer's, or a vector layer's (its
        GeoPackage or GeoJSON, without QGIS's ``|layername=`` suffix)."""
        layer = self.parameterAsLayer(parameters, name, context)
        if layer is None:
            raise QgsProcessingException(f"{name}: no such layer or file")
        if layer.providerType() not in ("gdal", "ogr"):
            raise QgsProcessingException(f"{layer.name()}: segtile reads label files (GDAL or OGR layers), "
                                         f"not {layer.providerType()} layers")
        return layer.source().split("|")[0]

    def advanced(self, *parameters: QgsProcessingParameterDefinition) -> None:
        """Add ``parameters`` under the dialog's Advanced parameters."""
        for parameter in parameters:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)


def run_segtile(arguments: list[str], feedback, parameters: dict[str, str]) -> runner.Outcome:
    """Run the recorded segtile with ``arguments``, reporting to ``feedback`` with the options
    named as the ``parameters`` (option -> parameter) that set them; raise
    ``QgsProcessingException`` with segtile's message when it fails or is cancelled."""
    try:
        command = [str(runner.recorded_executable(PLUGIN_FOLDER)), *arguments]
        feedback.pushCommandInfo(" ".join(shlex.quote(part) for part in command))
        return runner.run(command, _listener(feedback, parameters))
    except (runner.SegtileFailed, runner.Canceled) as exc:
        raise QgsProcessingException(runner.in_terms_of(str(exc), parameters)) from None


def _listener(feedback, parameters: dict[str, str]) -> runner.Listener:
    """A :class:`runner.Listener` reporting to a ``QgsProcessingFeedback``, in terms of ``parameters``."""
    stages = {"current": None}

    def progress(fraction: float, stage: str) -> None:
        if stage != stages["current"]:
            stages["current"] = stage
            feedback.setProgressText(stage)
        feedback.setProgress(100.0 * fraction)

    return runner.Listener(progress=progress,
                           message=lambda text: feedback.pushInfo(runner.in_terms_of(text, parameters)),
                           warning=lambda text: feedback.pushWarning(runner.in_terms_of(text, parameters)),
                           canceled=feedback.isCanceled)


class DefaultStyle(QgsProcessingLayerPostProcessorInterface):
    """Applies the style segtile stored with an output when QGIS loads it into the project:
    ``NAME.qml`` beside a mask, the polygons' default style (in the GeoPackage, or ``NAME.qml``).
    Processing loads outputs without their default style, hence this.

    QGIS takes each instance over and deletes it with its context, so every layer needs its own;
    but its Python side must outlive this call, or QGIS finds only the base class's no-op: the
    latest instance per output is kept in :attr:`_alive`.
    """

    _alive: dict[str, DefaultStyle] = {}

    @classmethod
    def for_output(cls, path: str) -> DefaultStyle:
        cls._alive[path] = cls()
        return cls._alive[path]

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 (QGIS's name)
        message, loaded = layer.loadDefaultStyle()
        if loaded:
            layer.triggerRepaint()
        else:
            feedback.pushWarning(f"{layer.name()}: segtile's style was not applied: {message}")


def device_parameter() -> QgsProcessingParameterString:
    return QgsProcessingParameterString("DEVICE", "Device: auto, cpu, cuda or cuda:N", defaultValue="auto")


def labels_parameter(name: str, description: str) -> QgsProcessingParameterMapLayer:
    """Labels as segtile reads them: a raster layer, or a polygon layer with a class field."""
    return QgsProcessingParameterMapLayer(name, description,
                                          types=[QgsProcessing.TypeRaster, QgsProcessing.TypeVectorPolygon])


def class_field_parameter() -> QgsProcessingParameterString:
    return QgsProcessingParameterString("CLASS_FIELD", "Polygon field holding class names (empty: found)",
                                        optional=True)


class SegmentAlgorithm(SegtileAlgorithm):
    """``segtile:segment``: ``segtile segment INPUT --out OUTPUT [--out POLYGONS] ...``."""

    NAME = "segment"
    TITLE = "Segment raster"
    HELP = (
        "Segments a raster tile by tile with a PSPNet, in bounded memory, by running the segtile "
        "command of your segtile installation.\n\n"
        "Model: a segtile checkpoint or TorchScript file; empty uses $SEGTILE_MODEL, else the "
        "default model installed with segtile.\n"
        "Mask: a Cloud-Optimised GeoTIFF on the input's grid, styled with the model's classes "
        "and colours (mask.qml beside it).\n"
        "Polygons (optional): one polygon per region of a class, with class_id, class_name and "
        "area, styled by class (GeoPackage, Shapefile, GeoJSON or FlatGeobuf).\n"
        "Resolution: the grid the model runs on. Empty: the model card's pixel size when both it and the "
        "image's are known, unless that grid would be more than 8 times finer or coarser than the image's "
        "(then the run stops and says so); 'native': the image's own pixels; 'model': the model card's "
        "pixel size however far; or a number of metres per pixel. The mask is written on that grid.\n"
        "Bands, tile size and overlap default to the model card's. Outputs that exist are replaced."
    )
    PARAMETERS = {"--model": "MODEL", "--bands": "BANDS", "--resolution": "RESOLUTION", "--mpp": "RESOLUTION",
                  "--tile-size": "TILE_SIZE", "--overlap": "OVERLAP", "--batch-size": "BATCH_SIZE",
                  "--memory-limit": "MEMORY_LIMIT", "--device": "DEVICE"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 (QGIS's name)
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Input raster"))
        self.addParameter(QgsProcessingParameterFile(
            "MODEL", "Model (empty: the default model)", behavior=QgsProcessingParameterFile.File,
            fileFilter="PyTorch models (*.pt *.pth *.ts);;All files (*.*)", optional=True))
        self.addParameter(QgsProcessingParameterString(
            "BANDS", "Bands to feed the model, e.g. 4,3,2", optional=True))
        self.addParameter(QgsProcessingParameterString(
            "RESOLUTION", "Resolution: empty (the model's, when close to the image's), native, model, or metres "
            "per pixel", optional=True))
        self.advanced(
            QgsProcessingParameterNumber("TILE_SIZE", "Tile size in pixels (empty: the card's)",
                                         type=QgsProcessingParameterNumber.Integer, minValue=1, optional=True),
            QgsProcessingParameterNumber("OVERLAP", "Overlap of tiles in pixels (empty: the card's)",
                                         type=QgsProcessingParameterNumber.Integer, minValue=0, optional=True),
            QgsProcessingParameterNumber("BATCH_SIZE", "Tiles per model call",
                                         type=QgsProcessingParameterNumber.Integer, minValue=1, defaultValue=4),
            QgsProcessingParameterString("MEMORY_LIMIT", "Memory the engine may hold, e.g. 1.5G (empty: 1.25G)",
                                         optional=True),
            device_parameter(),
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Mask"))
        self.addParameter(QgsProcessingParameterVectorDestination(
            "POLYGONS", "Polygons", type=QgsProcessing.TypeVectorPolygon, optional=True, createByDefault=False))

    def command(self, parameters: dict, context) -> tuple[list[str], dict]:
        image = self.raster_file(parameters, "INPUT", context)
        mask = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        polygons = self.parameterAsOutputLayer(parameters, "POLYGONS", context) or None
        arguments = ["segment", image, "--out", mask, *(["--out", polygons] if polygons else []),
                     "--progress", "json", "--overwrite",
                     "--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context)),
                     *self.device(parameters, context),
                     *self.options(parameters, context, model="MODEL", bands="BANDS", resolution="RESOLUTION",
                                   tile_size="TILE_SIZE", overlap="OVERLAP", memory_limit="MEMORY_LIMIT")]
        return arguments, {"OUTPUT": mask, "POLYGONS": polygons}


LAYERS = ("18", "34", "50", "101")  # ResNet depths segtile train builds


class TrainAlgorithm(SegtileAlgorithm):
    """``segtile:train``: ``segtile train --image IMAGE --labels LABELS --classes ... --out MODEL``."""

    NAME = "train"
    TITLE = "Train a model"
    HELP = (
        "Trains a PSPNet on a raster and its labels by running `segtile train` of your segtile "
        "installation; the model it writes is what Segment raster takes as Model.\n\n"
        "Labels: a raster of class indices on (or reprojected onto) the image's grid, 255 = "
        "unlabelled; or polygons (GeoPackage, GeoJSON, QuPath GeoJSON) whose class field names "
        "their class.\n"
        "Classes: the class names in index order, comma-separated (e.g. water,land,cloud).\n"
        "A share of the labelled area is held out and its mIoU reported after each epoch. The "
        "model is saved after every epoch: Cancel keeps the last one saved, which `segtile train "
        "--resume` continues."
    )
    PARAMETERS = {"--image": "IMAGE", "--labels": "LABELS", "--classes": "CLASSES", "--epochs": "EPOCHS",
                  "--class-field": "CLASS_FIELD", "--steps-per-epoch": "STEPS_PER_EPOCH", "--tile-size": "TILE_SIZE",
                  "--batch-size": "BATCH_SIZE", "--layers": "LAYERS", "--width": "WIDTH", "--device": "DEVICE",
                  "--out": "OUTPUT"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 (QGIS's name)
        self.addParameter(QgsProcessingParameterRasterLayer("IMAGE", "Training image"))
        self.addParameter(labels_parameter("LABELS", "Labels (raster or polygons)"))
        self.addParameter(QgsProcessingParameterString("CLASSES", "Class names in index order, e.g. water,land"))
        self.addParameter(QgsProcessingParameterNumber("EPOCHS", "Epochs", type=QgsProcessingParameterNumber.Integer,
                                                       minValue=1, defaultValue=20))
        self.advanced(
            class_field_parameter(),
            QgsProcessingParameterNumber("STEPS_PER_EPOCH", "Steps per epoch (empty: about one per labelled block)",
                                         type=QgsProcessingParameterNumber.Integer, minValue=1, optional=True),
            QgsProcessingParameterNumber("TILE_SIZE", "Training window size in pixels",
                                         type=QgsProcessingParameterNumber.Integer, minValue=16, defaultValue=256),
            QgsProcessingParameterNumber("BATCH_SIZE", "Windows per step", type=QgsProcessingParameterNumber.Integer,
                                         minValue=2, defaultValue=8),
            QgsProcessingParameterEnum("LAYERS", "ResNet depth", options=list(LAYERS), defaultValue=0),
            QgsProcessingParameterNumber("WIDTH", "Channel width (1 = the reference network)",
                                         type=QgsProcessingParameterNumber.Double, minValue=0.01, defaultValue=1.0),
            device_parameter(),
        )
        self.addParameter(QgsProcessingParameterFileDestination("OUTPUT", "Model", "segtile models (*.pt)"))

    def command(self, parameters: dict, context) -> tuple[list[str], dict]:
        model = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        arguments = ["train", "--image", self.raster_file(parameters, "IMAGE", context),
                     "--labels", self.labels_file(parameters, "LABELS", context),
                     "--classes", self.parameterAsString(parameters, "CLASSES", context).strip(),
                     "--out", model, "--overwrite", "--progress", "json",
                     "--epochs", str(self.parameterAsInt(parameters, "EPOCHS", context)),
                     "--tile-size", str(self.parameterAsInt(parameters, "TILE_SIZE", context)),
                     "--batch-size", str(self.parameterAsInt(parameters, "BATCH_SIZE", context)),
                     "--layers", LAYERS[self.parameterAsEnum(parameters, "LAYERS", context)],
                     "--width", repr(self.parameterAsDouble(parameters, "WIDTH", context)),
                     *self.device(parameters, context),
                     *self.options(parameters, context, class_field="CLASS_FIELD",
                                   steps_per_epoch="STEPS_PER_EPOCH")]
        return arguments, {"OUTPUT": model}


class EvaluateAlgorithm(SegtileAlgorithm):
    """``segtile:eval``: ``segtile eval PREDICTION GROUND_TRUTH --json``; the figures as outputs."""

    NAME = "eval"
    TITLE = "Evaluate a mask"
    HELP = (
        "Compares a predicted mask with ground truth by running `segtile eval` of your segtile "
        "installation, as the reference PSPNet evaluation does: per-class IoU and accuracy summed "
        "over all pixels, their means (mIoU, mean accuracy) and the overall accuracy.\n\n"
        "Ground truth: a label raster (reprojected onto the mask's grid when on another) or "
        "polygons with a class field. Pixels that are nodata or 255 in either are not compared. "
        "The figures are the algorithm's outputs; the log shows them per class."
    )
    PARAMETERS = {"--class-field": "CLASS_FIELD"}

    def initAlgorithm(self, config=None) -> None:  # noqa: N802 (QGIS's name)
        self.addParameter(QgsProcessingParameterRasterLayer("PREDICTION", "Predicted mask (a segtile mask)"))
        self.addParameter(labels_parameter("GROUND_TRUTH", "Ground truth (raster or polygons)"))
        self.advanced(class_field_parameter())
        self.addOutput(QgsProcessingOutputNumber("MIOU", "mIoU"))
        self.addOutput(QgsProcessingOutputNumber("MEAN_ACCURACY", "Mean accuracy"))
        self.addOutput(QgsProcessingOutputNumber("OVERALL_ACCURACY", "Overall accuracy"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Every figure, as segtile eval --json prints them"))

    def command(self, parameters: dict, context) -> tuple[list[str], dict]:
        arguments = ["eval", self.raster_file(parameters, "PREDICTION", context),
                     self.labels_file(parameters, "GROUND_TRUTH", context), "--json", "--quiet",
                     *self.options(parameters, context, class_field="CLASS_FIELD")]
        return arguments, {}

    def results(self, outputs: dict, outcome: runner.Outcome, feedback) -> dict:
        """The figures ``segtile eval --json`` printed, as outputs; per class in the log."""
        figures = json.loads(outcome.stdout)
        for name in figures["classes"]:
            feedback.pushInfo(f"{name}: IoU {figures['iou'][name]:.4f}, accuracy {figures['accuracy'][name]:.4f}")
        feedback.pushInfo(f"mIoU {figures['mIoU']:.4f}, mean accuracy {figures['mAcc']:.4f}, "
                          f"overall accuracy {figures['allAcc']:.4f} over {figures['pixels_compared']} pixels")
        return {"MIOU": figures["mIoU"], "MEAN_ACCURACY": figures["mAcc"], "OVERALL_ACCURACY": figures["allAcc"],
                "REPORT": json.dumps(figures)}  # one line


ALGORITHMS = (SegmentAlgorithm, TrainAlgorithm, EvaluateAlgorithm)
