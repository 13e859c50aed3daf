"""``segtile convert SOURCE --out OUTPUT``: the reference PSPNet's weights as a segtile
checkpoint, or any segtile model as a TorchScript or ONNX file."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Convert a network into a file segtile runs, or other hosts. With --from semseg, weights trained by the "
    "PSPNet reference implementation (hszhao/semseg) become a segtile checkpoint (.pt) carrying their dataset's "
    "classes, palette, normalisation and tiling. Without, any model --model takes (a file, or the name of an "
    "installed model) becomes a TorchScript file (.pt) with its model card embedded as card.json, which "
    "libtorch hosts (C++, Java through the Deep Java Library, QuPath) load, or an ONNX file (.onnx) with "
    "its card in the file's metadata."
)
TARGETS = ("checkpoint", "torchscript", "onnx")
DATASETS = ("ade20k", "voc2012", "cityscapes")


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand to ``commands``."""
    parser = commands.add_parser("convert", help="convert reference weights or export to ONNX",
                                 description=DESCRIPTION)
    parser.add_argument("source", metavar="SOURCE", help="the network: semseg weights (.pth) with --from semseg, "
                        "else anything --model takes (see `segtile models` for the installed ones)")
    parser.add_argument("-o", "--out", metavar="OUTPUT", required=True,
                        help="the file to write: .pt/.pth (checkpoint or TorchScript) or .onnx")
    parser.add_argument("--to", choices=TARGETS,
                        help="what OUTPUT is (default: onnx for .onnx; for .pt/.pth, checkpoint from --from semseg, "
                        "else torchscript)")
    parser.add_argument("--from", dest="source_format", choices=("segtile", "semseg"), default="segtile",
                        help="what SOURCE is (default: segtile)")
    parser.add_argument("--dataset", choices=DATASETS,
                        help="with --from semseg: the dataset the weights were trained on")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it exists")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and library messages")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Check every option, convert ``args.source`` and write ``args.out``."""
    from segtile.cli.convert_run import convert

    out = convert(args.source, args.out, source_format=args.source_format, dataset=args.dataset,
                  to=args.to, overwrite=args.overwrite)
    if not args.quiet:
        print(f"segtile: wrote {out}")
