"""The ``segtile`` command: segment an image and write masks, Zarr stores and polygons.

Every failure the user can cause (bad input, bad model, bad arguments, an output in the way)
ends in a one-line message on stderr and exit status 2, with no traceback (``--debug`` shows
one) and no partial output left behind.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from segtile.blend import BLENDS
from segtile.predictor import PRECISIONS

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def parse_bands(text: str) -> list[int]:
    """``"3,2,1"`` -> ``[3, 2, 1]`` (1-based band indices)."""
    try:
        bands = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bands must be comma-separated integers, got {text!r}") from None
    if not bands:
        raise argparse.ArgumentTypeError("bands must name at least one band")
    return bands


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr, exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segtile",
        description="Segment an image too large for memory with a PSPNet, tile by tile. "
        "The format of each output follows its extension: .tif/.tiff (Cloud-Optimised GeoTIFF "
        "mask), .zarr (labels and metadata), .gpkg/.geojson/.fgb/.shp (polygons).",
    )
    parser.add_argument("input", metavar="INPUT", help="image: any GDAL raster, or a whole-slide TIFF (.svs, .ndpi, OME-TIFF)")
    parser.add_argument("--out", metavar="OUTPUT", action="append", required=True,
                        help="output file; repeat for several outputs from one inference pass")
    parser.add_argument("--model", metavar="MODEL", required=True,
                        help="segtile checkpoint or TorchScript file")
    parser.add_argument("--tile-size", type=int, metavar="N", help="tile side in pixels (default: the model card's)")
    parser.add_argument("--overlap", type=int, metavar="N", help="pixels shared by neighbouring tiles (default: the model card's)")
    parser.add_argument("--batch-size", type=int, default=4, metavar="N", help="tiles per model call (default: 4)")
    parser.add_argument("--blend", choices=BLENDS, default="gaussian", help="weighting of overlapping tiles (default: gaussian)")
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda[:i]", help="where the model runs (default: auto)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="autocast precision (fp16 needs CUDA; default: fp32)")
    parser.add_argument("--bands", type=parse_bands, metavar="3,2,1", help="1-based input bands to feed the model, in order (default: the model card's)")
    parser.add_argument("--level", type=int, default=0, metavar="L", help="pyramid level to process, 0 = full resolution (default: 0)")
    parser.add_argument("--probabilities", action="store_true", help="also write per-class probabilities (.zarr: an array; .tif: a second GeoTIFF)")
    parser.add_argument("--simplify", type=float, metavar="TOL", help="simplify polygons (topology preserving), tolerance in CRS units")
    parser.add_argument("--min-area", type=float, metavar="A", help="drop polygons smaller than A (CRS units squared)")
    parser.add_argument("--chunk-size", type=int, default=1024, metavar="N", help="side of the output chunks stitched at once (default: 1024)")
    parser.add_argument("--stripe-width", type=int, default=8192, metavar="N",
                        help="width of the vertical stripes processed one after another: bounds memory on "
                        "wide images, runs the tiles on each stripe boundary twice; 0 = whole width (default: 8192)")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that already exist")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on a dask.distributed scheduler (e.g. tcp://host:8786)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def help_text(width: int = 100) -> str:
    """The ``--help`` text at a fixed width (docs/cli.md embeds it; a test keeps them equal)."""
    parser = build_parser()
    parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=width)
    return parser.format_help()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``segtile`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from segtile.run import RunError, run

    try:
        run(args)
    except KeyboardInterrupt:
        print("segtile: interrupted; no output was written", file=sys.stderr)
        return 130
    except (RunError, ValueError, OSError) as exc:
        if args.debug:
            raise
        print(f"segtile: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:  # anything else is our failure, still reported in one line
        if args.debug:
            raise
        print(f"segtile: failed: {one_line(exc)} (run with --debug for details)", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
