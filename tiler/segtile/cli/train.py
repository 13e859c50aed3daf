"""``segtile train --image IMG --labels LABELS --classes a,b --out MODEL.pt``: train a PSPNet."""

from __future__ import annotations

import argparse

from segtile.cli.arguments import band_list, finite_float, name_list, non_negative_int, positive_int

DESCRIPTION = (
    "Train a PSPNet on images of any size with their labels: a label raster (class indices, 255 = "
    "unlabelled; reprojected onto the image's grid when on another) or polygons (GeoPackage, GeoJSON, "
    "QuPath GeoJSON) with a class name per feature. Tiles are read window by window; a share of the "
    "labelled area, in blocks of the tile size, is held out to report a validation mIoU after each epoch. "
    "The checkpoint, with its model card filled from the data, is written after every epoch."
)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``train`` subcommand to ``commands``."""
    parser = commands.add_parser("train", help="train a PSPNet on images and labels", description=DESCRIPTION)
    parser.add_argument("--image", metavar="IMAGE", action="append", required=True,
                        help="training image (any GDAL raster or whole-slide TIFF); repeat for several")
    parser.add_argument("--labels", metavar="LABELS", action="append", required=True,
                        help="labels of the matching --image: a raster or polygons; repeat once per image")
    parser.add_argument("--classes", type=name_list, metavar="a,b,...",
                        help="class names; label i (or the polygons named so) is the i-th (taken from the "
                        "checkpoint with --resume)")
    parser.add_argument("-o", "--out", metavar="MODEL.pt", required=True, help="checkpoint to write")
    parser.add_argument("--layers", type=int, choices=(18, 34, 50, 101),
                        help="ResNet depth of the backbone (default: 18)")
    parser.add_argument("--width", type=finite_float(0.0, strict=True), metavar="F",
                        help="channel width multiplier, 1 = the reference network (default: 1)")
    parser.add_argument("--output-stride", type=int, choices=(8, 4, 2),
                        help="the network's features sit every N pixels: 8 is PSPNet's; 4 or 2 give finer "
                        "masks of small objects (ponds of a few pixels) at more computation (default: 8)")
    parser.add_argument("--epochs", type=positive_int, metavar="N", help="epochs to train (default: 20)")
    parser.add_argument("--steps-per-epoch", type=positive_int, metavar="N",
                        help="optimiser steps per epoch (default: about one window per labelled block of the "
                        "training area)")
    parser.add_argument("--tile-size", type=positive_int, metavar="N",
                        help="side of the training windows, and of the validation blocks (default: 256)")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help="windows per step, at least 2 (default: 8)")
    parser.add_argument("--lr", type=finite_float(0.0, strict=True), metavar="X",
                        help="base learning rate of the poly schedule; the heads get 10x (default: 0.01)")
    parser.add_argument("--val-fraction", type=finite_float(0.0), metavar="F",
                        help="share of the labelled blocks held out for validation, 0 = none (default: 0.1)")
    parser.add_argument("--seed", type=non_negative_int, metavar="N",
                        help="seeds the split, the windows and the network's initialisation (default: 0)")
    parser.add_argument("--scale-augment", type=finite_float(1.0), metavar="Z",
                        help="rescale each training window by a random zoom in [1/Z, Z], so the network "
                        "learns pixels of other sizes; the card then serves the images' pixel sizes up to "
                        "Z times the largest (default: 1, none)")
    parser.add_argument("--bands", type=band_list, metavar="3,2,1",
                        help="1-based image bands to train on (default: all)")
    parser.add_argument("--class-field", metavar="FIELD",
                        help="polygon field holding class names (default: class_name, classification, class or "
                        "label, the first found)")
    parser.add_argument("--sensor", metavar="TEXT",
                        help="what made the training images (e.g. 'Landsat 7 ETM+, NAIP', 'H&E, 20x'), recorded "
                        "in the card and named by the domain check")
    parser.add_argument("--colors", type=name_list, metavar="#rrggbb,...", help="one colour per class for the card")
    parser.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    parser.add_argument("--init", metavar="BACKBONE.pth",
                        help="ImageNet ResNet weights in torchvision layout to start the backbone from")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:i]", help="where to train (default: auto)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--progress", choices=("bar", "json"), default="bar",
                        help="progress on stderr: a bar, or one JSON object per line for programs; a line "
                        "per epoch either way (default: bar)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no epoch lines")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library messages")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Check every option, then train and write ``args.out``."""
    from segtile.training.runner import run_train

    run_train(args)
