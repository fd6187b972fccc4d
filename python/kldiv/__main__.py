"""``python -m kldiv``: the command line (see :mod:`kldiv.cli`)."""

import sys

from .cli import main

sys.exit(main())
