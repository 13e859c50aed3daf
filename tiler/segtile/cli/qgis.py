"""``segtile qgis install|uninstall``: put segtile's QGIS plugin into a QGIS profile, or take it out."""

from __future__ import annotations

import argparse
from pathlib import Path

DESCRIPTION = (
    "Install segtile's QGIS Processing plugin (algorithm segtile:segment) into QGIS's default profile, "
    "or --plugins-dir. The plugin runs this installation's segtile executable, whose absolute path "
    "install records; run install again after moving or recreating this environment."
)


def register(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``qgis`` subcommand to ``commands``."""
    parser = commands.add_parser("qgis", help="install the QGIS plugin", description=DESCRIPTION)
    parser.add_argument("action", choices=("install", "uninstall"),
                        help="install (or update) the plugin, or remove it")
    parser.add_argument("--plugins-dir", metavar="DIR", type=Path,
                        help="QGIS plugins folder (default: the default profile's, e.g. on Linux "
                        "~/.local/share/QGIS/QGIS3/profiles/default/python/plugins)")
    parser.add_argument("--overwrite", action="store_true",
                        help="install: replace a different segtile plugin found there")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> None:
    """Install or remove the plugin, and say what was done."""
    from segtile.cli.qgis_install import PLUGIN, default_plugins_dir, install, uninstall
    from segtile.errors import QgisInstallError

    plugins_dir = args.plugins_dir or default_plugins_dir()
    if args.action == "uninstall":
        if args.overwrite:
            raise QgisInstallError("--overwrite goes with install, not uninstall")
        print(f"segtile: removed the QGIS plugin from {uninstall(plugins_dir)}; restart QGIS")
        return
    done = install(plugins_dir, overwrite=args.overwrite)
    what = "installed the QGIS plugin in" if done.changed else "the QGIS plugin is already installed in"
    print(f"segtile: {what} {done.folder}; it runs {done.executable}\n"
          f"Enable it in QGIS (restart QGIS first if it is open): Plugins > Manage and Install Plugins > "
          f"Installed > tick '{PLUGIN}', or `qgis_process plugins enable {PLUGIN}`. Its algorithms are in "
          f"the Processing Toolbox under '{PLUGIN}'.")
