"""Writing a user's file safely: into a temporary file in the same folder, renamed over the
target only once complete, with the target's mode (or the umask's default for a new file); on
any failure (Ctrl-C included) the temporary file is removed and the target is untouched."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator


def temporary(path: str | os.PathLike[str], suffix: str = ".tmp") -> str:
    """A new empty temporary file beside ``path`` (same folder, so the rename is atomic)."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".kldiv-", suffix=suffix)
    os.close(fd)
    return tmp


def commit(tmp: str, path: str | os.PathLike[str]) -> None:
    """Give ``tmp`` the mode ``path`` has (or a new file's) and rename it over ``path``."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)
    os.replace(tmp, path)


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], suffix: str = ".tmp") -> Iterator[str]:
    """``with replacing(path) as tmp:`` write ``tmp``; it replaces ``path`` when the block
    ends without an exception, and is removed otherwise."""
    tmp = temporary(path, suffix)
    try:
        yield tmp
        commit(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
