"""``python -m kldiv``: the command line (see :mod:`kldiv.cli`)."""

from .cli import _entry

_entry()
