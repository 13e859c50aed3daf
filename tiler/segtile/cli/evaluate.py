"""``segtile eval PREDICTION GROUND_TRUTH``: confusion matrix, IoU per class, mIoU, accuracies."""

from __future__ import annotations

import argparse

from segtile.cli.arguments import name_list, positive_int

DESCRIPTION = (
    "Compare a predicted mask with ground truth, chunk by chunk (any size), as the reference PSPNet "
    "evaluation does: per-class IoU = I / U and accuracy = I / T summed over all pixels, mIoU, mean "
    "accuracy, overall accuracy. The ground truth is a label raster (reprojected onto the prediction's "
    "grid when on another) or polygons. Pixels that are nodata or 255 in either are not compared."
)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``commands``."""
    parser = commands.add_parser("eval", help="score a predicted mask against ground truth",
                                 description=DESCRIPTION)
    parser.add_argument("prediction", metavar="PREDICTION", help="mask of class indices (a segtile .tif mask)")
    parser.add_argument("truth", metavar="GROUND_TRUTH",
                        help="label raster (class indices, 255 = unlabelled) or polygons (.gpkg, .geojson...)")
    parser.add_argument("--classes", type=name_list, metavar="a,b,...",
                        help="class names in index order (default: those the prediction carries)")
    parser.add_argument("--class-field", metavar="FIELD",
                        help="polygon field holding class names (default: class_name, classification, class "
                        "or label, the first found)")
    parser.add_argument("--chunk-size", type=positive_int, default=1024, metavar="N",
                        help="side of the windows read at once (default: 1024)")
    parser.add_argument("--json", action="store_true", help="print a JSON object instead of tables")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library messages")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Evaluate and print the report (or JSON) on stdout."""
    import json

    from segtile.training.evaluate import as_json, evaluate, report

    evaluation = evaluate(args.prediction, args.truth, classes=args.classes, class_field=args.class_field,
                          chunk_size=args.chunk_size, progress=not args.quiet)
    print(json.dumps(as_json(evaluation), indent=2) if args.json else report(evaluation))
