"""``python -m segtile.cli``: the ``segtile`` command."""

import sys

from segtile.cli.command import main

sys.exit(main())
