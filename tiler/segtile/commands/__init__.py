"""The subcommands of the ``segtile`` command, one module each (see :mod:`segtile.cli`)."""
