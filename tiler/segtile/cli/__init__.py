"""The ``segtile`` command (the console script ``segtile = segtile.cli:main``).

- ``command``: the parser, :func:`main`, one-line errors and exit statuses, signals;
- ``arguments``: the argument types the subcommands share;
- one module per subcommand, its options: ``segment``, ``train``, ``evaluate`` (``eval``),
  ``convert``, ``models``, ``qgis``; and the runners that are the command's alone: ``segment_run`` (outputs,
  the work store, ``--resume``), ``convert_run``, ``qgis_install`` (``train`` and ``eval`` run
  in :mod:`segtile.training`).

Importing this package is light (no torch, no GDAL): ``segtile --help`` answers at once.
"""

from segtile.cli.command import COMMANDS, build_parser, command_parser, help_text, main, with_command

__all__ = ["COMMANDS", "build_parser", "command_parser", "help_text", "main", "with_command"]
