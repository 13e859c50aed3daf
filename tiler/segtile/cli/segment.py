"""``segtile segment IMAGE --out OUTPUT ...``: segment an image and write masks, stores, polygons."""

from __future__ import annotations

import argparse

from segtile.cli.arguments import (
    band_list,
    creation_option,
    finite_float,
    grid_size,
    memory_size,
    name_list,
    non_negative_int,
    positive_int,
    scale_list,
)
from segtile.inference.devices import PRECISIONS
from segtile.tiling.augmentation import FROM_CARD
from segtile.tiling.blend import BLENDS

DESCRIPTION = (
    "Segment an image too large for memory with a PSPNet, tile by tile. The format of each output "
    "follows its extension: .tif/.tiff (Cloud-Optimised GeoTIFF mask), .zarr (labels and metadata), "
    ".ome.zarr (OME-Zarr labels), .gpkg/.geojson/.fgb/.shp (polygons). For slides, .zarr is OME-Zarr "
    "and .geojson is QuPath's (objects in level-0 pixels). Several inputs run one after another in one "
    "process (several at once on a cluster): an input whose outputs all exist is skipped, one that fails "
    "does not stop the others; the exit status is 0 when every input is done or skipped, 2 when any failed."
)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``segment`` subcommand to ``commands``."""
    parser = commands.add_parser("segment", help="segment an image (the default command)",
                                 description=DESCRIPTION)
    parser.add_argument("input", metavar="INPUT", nargs="+",
                        help="image: any GDAL raster, or a whole-slide TIFF (.svs, .ndpi, OME-TIFF); several "
                        "images, a folder (its images, by extension), a quoted glob ('slides/*.svs') or @LIST "
                        "(a file naming one input per line) segment each in turn")
    parser.add_argument("-o", "--out", metavar="OUTPUT", action="append", required=True,
                        help="output file; repeat for several outputs from one inference pass; with several "
                        "inputs a template: {stem}, {name}, {parent}, {index} are the input's (e.g. "
                        "masks/{stem}.tif)")
    parser.add_argument("--model", metavar="MODEL",
                        help="segtile checkpoint, TorchScript, ONNX or torch.export (.pt2) file, a model folder "
                        "(WSInfer, segmentation_models_pytorch), or the name of an installed model "
                        "(default: $SEGTILE_MODEL when set, else the installed default model)")
    parser.add_argument("--tile-size", type=positive_int, metavar="N",
                        help="tile side in pixels (default: the model card's; at most the image's size)")
    parser.add_argument("--overlap", type=non_negative_int, metavar="N",
                        help="pixels shared by neighbouring tiles, at most 7/8 of the tile (default: the model card's)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help="tiles per model call (default: 4, fewer for many-class models, see --memory-limit)")
    parser.add_argument("--blend", choices=BLENDS, default="gaussian",
                        help="weighting of overlapping tiles (default: gaussian)")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:i]",
                        help="where the model runs (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32",
                        help="autocast precision (fp16 needs CUDA; default: fp32)")
    parser.add_argument("--bands", type=band_list, metavar="3,2,1",
                        help="1-based input bands to feed the model, in order (default: the model card's)")
    grid = parser.add_mutually_exclusive_group()
    grid.add_argument("--resolution", type=grid_size("metres"), metavar="M|native|model",
                      help="process a raster at M metres per pixel; native: on its own pixels; model: at the "
                      "model card's pixel size (default: the model card's when both are known, refused when "
                      "more than 8x finer or coarser than the image's)")
    grid.add_argument("--mpp", type=grid_size("µm"), metavar="UM|native|model",
                      help="process a slide at UM µm per pixel; native, model: as for --resolution")
    grid.add_argument("--level", type=non_negative_int, metavar="L",
                      help="process pyramid level L of the image (0: full resolution)")
    tissue = parser.add_mutually_exclusive_group()
    tissue.add_argument("--tissue-mask", dest="tissue", action="store_const", const=True,
                        help="process only the tissue of a slide (the default for colour slides)")
    tissue.add_argument("--no-tissue-mask", dest="tissue", action="store_const", const=False,
                        help="process the whole slide, glass included")
    parser.add_argument("--tissue-threshold", type=finite_float(0.0, strict=True, below=1.0), metavar="S",
                        help="colour saturation (0-1) above which a pixel is tissue (default: Otsu's, "
                        "held within 0.04-0.15)")
    parser.add_argument("--mask", metavar="PATH",
                        help="process only this area of interest: polygons (GeoPackage, GeoJSON, QuPath "
                        "GeoJSON...) or a raster mask (non-zero inside); pixels outside are nodata")
    parser.add_argument("--probabilities", action="store_true",
                        help="also write per-class probabilities (.zarr: an array; .tif: a second GeoTIFF)")
    parser.add_argument("--co", dest="creation_options", type=creation_option, action="append", default=[],
                        metavar="KEY=VALUE",
                        help="a GDAL creation option for GeoTIFF outputs (the COG driver's; repeatable), "
                        "e.g. --co COMPRESS=ZSTD; segtile's defaults: COMPRESS=DEFLATE, PREDICTOR=YES, "
                        "BLOCKSIZE=512")
    parser.add_argument("--zarr-format", type=int, choices=(2, 3), default=3,
                        help="Zarr version of .zarr stores: 3, or 2 for GDAL and QGIS before GDAL 3.8 "
                        "(default: 3)")
    parser.add_argument("--simplify", type=finite_float(0.0), metavar="TOL",
                        help="simplify polygons (topology preserving), tolerance in CRS units")
    parser.add_argument("--min-area", type=finite_float(0.0), metavar="A",
                        help="drop polygons smaller than A (CRS units squared)")
    parser.add_argument("--skip-classes", type=name_list, default=[], metavar="NAME,...",
                        help="classes that make no polygon or QuPath object, e.g. background "
                        "(names from the model card)")
    # segtile.writers.qupath.OBJECT_TYPES, not imported here: --help must not load the writers
    parser.add_argument("--qupath-objects", choices=("annotation", "detection"), default="annotation",
                        help="QuPath object type of a slide's .geojson features (default: annotation)")
    parser.add_argument("--tta", choices=("none", "flip", "d4"), default=FROM_CARD,
                        help="test-time augmentation: horizontal flip, or all 8 flips and rotations; "
                        "predictions averaged as probabilities (default: the model card's suggestion, else none)")
    parser.add_argument("--scales", type=scale_list, default=(1.0,), metavar="0.75,1,1.25",
                        help="also run each tile at these scales and average (the paper's multi-scale test: "
                        "0.5,0.75,1,1.25,1.5,1.75; default: 1)")
    parser.add_argument("--memory-limit", type=memory_size, metavar="SIZE",
                        help="memory the engine may hold, e.g. 1.5G or 800M; sizes the batches, chunks and "
                        "stripes you leave open; a job that cannot fit is refused before any work (default: 1.25G)")
    parser.add_argument("--chunk-size", type=positive_int, metavar="N",
                        help="side of the output chunks stitched at once (default: 1024, smaller for many classes)")
    parser.add_argument("--stripe-width", type=non_negative_int, metavar="N",
                        help="width of the vertical stripes processed one after another: bounds memory on "
                        "wide images, runs the tiles on each stripe boundary twice; 0 = whole width "
                        "(default: 8192, narrower for many classes)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run of the same command from the work it kept "
                        "(.FIRST_OUTPUT.segtile-work beside the first output)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that already exist (with several inputs: run the items whose "
                        "outputs all exist, which are otherwise skipped)")
    parser.add_argument("--mosaic", action="store_true",
                        help="read every input as one image, a mosaic on the first input's grid (others warped "
                        "onto it; the last input on top where they overlap): one set of outputs, no placeholder")
    parser.add_argument("--summary", metavar="FILE.csv|FILE.json",
                        help="write one row per input: input, status (done, skipped, failed), error, tiles, "
                        "seconds, outputs")
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--progress", choices=("bar", "json"), default="bar",
                      help="progress on stderr: bars, or one JSON object per line for programs (default: bar)")
    talk.add_argument("--quiet", action="store_true", help="print nothing but errors: no progress, no summary")
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run on a dask.distributed scheduler (e.g. tcp://host:8786)")
    cluster.add_argument("--gpus", metavar="all|0,1",
                         help="run on a local cluster with one worker per GPU, each seeing its own "
                         "(dask-cuda's when installed: pip install 'segtile[cuda]')")
    cluster.add_argument("--workers", type=positive_int, metavar="N",
                         help="run on a local cluster of N worker processes sharing the CPU cores")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library messages")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Check every option, then segment each input and write every ``--out``."""
    from segtile.cli.segment_run import run_segment

    run_segment(args)
